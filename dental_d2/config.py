"""Config keys that dental_d2 adds to detectron2's defaults."""

import difflib
import logging
import os
import re
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# `modeling` registers what dental configs name (DentalRCNN, the timm backbones,
# `efficientnet-lite://` weights) with detectron2: a config built here can always build its model.
from . import modeling  # noqa: F401
from .errors import DentalError

logger = logging.getLogger(__name__)

# Defaults shared by the config keys below and the functions that take the same values as
# arguments (evaluation, findings, active learning, serving), so that both agree.
# Least score of a prediction that is drawn, reported or counted by P/R/F1.
DEFAULT_SCORE_THRESHOLD = 0.5
# Least IoU of a prediction matching a ground truth.
DEFAULT_IOU_THRESHOLD = 0.5
# Class names that are teeth (see `dental_d2.data.categories.is_tooth_class`).
DEFAULT_TOOTH_CLASSES = ("Tooth",)
# The config that trains with no internet: it downloads no pretrained weights.
OFFLINE_CONFIG = "configs/dental_lite0.yaml"
# The project's configs/ folder, whose files a "config file not found" message lists.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def add_dental_config(cfg):
    """Adds the dental_d2 keys (dataset, timm backbone, early stopping, plateau LR, evaluation)."""
    _add_model_config(cfg)
    _add_data_config(cfg)
    _add_evaluation_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)


def _add_model_config(cfg):
    """cfg.MODEL.TIMM (a timm backbone under FPN) and cfg.INPUT.COLOR_JITTER."""
    cfg.MODEL.TIMM = CN()
    # A timm model name; its ImageNet weights without internet: MODEL.WEIGHTS
    # efficientnet-lite://lite0 (lite1, lite2) for tf_efficientnet_lite0 (1, 2).
    cfg.MODEL.TIMM.NAME = "tf_efficientnet_lite0"
    # timm feature levels the backbone returns; MODEL.FPN.IN_FEATURES names them by stride
    # ("stride4", "stride8", ...). EfficientNets' levels 1-4 are strides 4-32.
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]
    # "FrozenBN" keeps pretrained BatchNorm fixed (a detection batch is too small to estimate
    # its statistics); "BN" trains it.
    cfg.MODEL.TIMM.NORM = "FrozenBN"
    # The stem and this many of the returned levels get no gradient; 0 trains every layer.
    cfg.MODEL.TIMM.FREEZE_AT = 0
    # timm downloads its own ImageNet weights (needs internet); False leaves MODEL.WEIGHTS to
    # load them.
    cfg.MODEL.TIMM.PRETRAINED = False
    # Convolutions run on NHWC ("channels last") tensors, which oneDNN's CPU convolutions run
    # faster (a training step 1.1x to 2x, docs/speed.md); the weights are the same numbers.
    cfg.MODEL.CHANNELS_LAST = False

    # Training-time colour jitter: brightness, contrast and saturation are each scaled by a
    # factor drawn from [1 - COLOR_JITTER, 1 + COLOR_JITTER]; 0 turns it off. (Photos from
    # different cameras and lights differ most in these.) INPUT.CROP crops after resizing.
    cfg.INPUT.COLOR_JITTER = 0.0
    # With INPUT.CROP.ENABLED, the probability that a training crop is placed around one of the
    # photo's lesions (any class not in DENTAL.FINDINGS.TOOTH_CLASSES) rather than anywhere:
    # small lesions are rare in a uniformly placed crop. 0: detectron2's RandomCrop.
    cfg.INPUT.CROP.LESION_PROBABILITY = 0.0


def _add_data_config(cfg):
    """cfg.DENTAL: the dataset, its classes, weight loading and logging."""
    cfg.DENTAL = CN()
    # Root of a Roboflow "COCO Segmentation" export (train/, valid/ and test/ folders, each with
    # _annotations.coco.json) or of a YOLO-seg export (data.yaml, images/, labels/), told apart
    # by their files.
    cfg.DENTAL.DATA_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "dental")
    # Registered dataset names are <DATASET_NAME>_train, <DATASET_NAME>_valid, <DATASET_NAME>_test.
    cfg.DENTAL.DATASET_NAME = "dental"
    # Class names the model predicts, in contiguous-id order. Filled from the data during set-up
    # (and saved with the config) so a trained model carries its classes with it.
    cfg.DENTAL.CLASS_NAMES = []

    # Load pickled weight files (.pkl, or a .pth holding Python objects besides tensors) from
    # anywhere. A pickle runs code when loaded: only detectron2's model zoo (detectron2:// URLs)
    # is trusted without this.
    cfg.DENTAL.ALLOW_PICKLE = False

    # Iterations between two lines of training log (losses, LR, ETA) and TensorBoard points.
    cfg.DENTAL.LOG_PERIOD = 20


def _add_evaluation_config(cfg):
    """cfg.DENTAL.EVAL and cfg.DENTAL.FINDINGS: P/R/F1 counting and per-tooth findings."""
    cfg.DENTAL.EVAL = CN()
    # Predictions scoring below this are ignored by precision/recall/F1 and the confusion matrix.
    cfg.DENTAL.EVAL.SCORE_THRESHOLD = DEFAULT_SCORE_THRESHOLD
    # A prediction matches a ground truth of its class when their IoU reaches this.
    cfg.DENTAL.EVAL.IOU_THRESHOLD = DEFAULT_IOU_THRESHOLD
    # Validation images with drawn predictions written to TensorBoard at each evaluation.
    cfg.DENTAL.EVAL.NUM_VIS_IMAGES = 4

    cfg.DENTAL.FINDINGS = CN()
    # A lesion is assigned to the tooth covering the largest share of its mask, if that share
    # is at least this; otherwise it is listed as "not on a detected tooth".
    cfg.DENTAL.FINDINGS.MIN_OVERLAP = 0.1
    # Class names that are teeth (compared case-insensitively); every other class is a lesion
    # placed on a tooth.
    cfg.DENTAL.FINDINGS.TOOTH_CLASSES = list(DEFAULT_TOOTH_CLASSES)


def _add_solver_config(cfg):
    """cfg.SOLVER: epochs, gradient accumulation, early stopping and the plateau schedule."""
    # When > 0, SOLVER.MAX_ITER is set to MAX_EPOCHS passes over the train split at
    # SOLVER.IMS_PER_BATCH; 0 keeps SOLVER.MAX_ITER as given.
    cfg.SOLVER.MAX_EPOCHS = 0
    # Gradients of this many batches are summed before each optimizer step.
    cfg.SOLVER.ACCUMULATION_STEPS = 1
    # SOLVER.AMP.ENABLED (detectron2's key) autocasts the forward pass: float16 with a gradient
    # scaler on a CUDA GPU, bfloat16 (no scaler needed) on a CPU. Only a CPU with AVX-512 BF16
    # or AMX has bfloat16 kernels; elsewhere it is emulated and many times slower.

    cfg.SOLVER.EARLY_STOPPING = CN()
    # Stop training when METRIC has not improved for PATIENCE evaluations.
    cfg.SOLVER.EARLY_STOPPING.ENABLED = True
    # A key of the trainer's storage, e.g. "validation_loss" or "segm/AP". model_best.pth is
    # chosen by this metric and MODE too, also when early stopping is disabled.
    cfg.SOLVER.EARLY_STOPPING.METRIC = "validation_loss"
    # "min" when lower is better, "max" when higher is better.
    cfg.SOLVER.EARLY_STOPPING.MODE = "min"
    # Evaluations without improvement before training stops.
    cfg.SOLVER.EARLY_STOPPING.PATIENCE = 5
    # An improvement smaller than this does not count.
    cfg.SOLVER.EARLY_STOPPING.MIN_DELTA = 0.0

    cfg.SOLVER.PLATEAU = CN()
    # Used when SOLVER.LR_SCHEDULER_NAME is "ReduceLROnPlateau": the LR is multiplied by FACTOR
    # when METRIC has not improved for PATIENCE evaluations.
    cfg.SOLVER.PLATEAU.METRIC = "validation_loss"
    # "min" when lower is better, "max" when higher is better.
    cfg.SOLVER.PLATEAU.MODE = "min"
    # Multiplier applied to the LR at each cut.
    cfg.SOLVER.PLATEAU.FACTOR = 0.1
    # Evaluations without improvement before the LR is cut.
    cfg.SOLVER.PLATEAU.PATIENCE = 3
    # Relative improvement (as in torch's ReduceLROnPlateau, threshold_mode "rel") that counts.
    cfg.SOLVER.PLATEAU.THRESHOLD = 1e-4
    # The LR is never cut below this.
    cfg.SOLVER.PLATEAU.MIN_LR = 0.0


def _add_test_config(cfg):
    """cfg.TEST and cfg.DATASETS: batched evaluation and the validation loss."""
    # Images per batch in evaluation and prediction (detectron2 itself always uses 1).
    cfg.TEST.IMS_PER_BATCH = 1
    # Compute the loss on DATASETS.VALIDATION at every evaluation (logged as validation_loss).
    cfg.TEST.VALIDATION_LOSS = True
    # Datasets the validation loss and the monitored metrics are computed on; empty means
    # DATASETS.TEST.
    cfg.DATASETS.VALIDATION = ()

    cfg.TEST.SLICED = CN()
    # Predict a photo larger than TILE_SIZE also in overlapping tiles (dental_d2/runtime/
    # sliced.py): each tile is resized like a photo, so small lesions are seen nearer their own
    # resolution. Lesions come from the tiles and the whole photo, teeth from the whole photo
    # only (a tile cuts them). Costs one model pass per tile besides the whole photo's.
    cfg.TEST.SLICED.ENABLED = False
    # Side of a square tile, in photo pixels. A tile of side INPUT.MIN_SIZE_TEST is seen at the
    # photo's own resolution; a photo no larger than a tile runs whole only, as without tiles.
    cfg.TEST.SLICED.TILE_SIZE = 1024
    # Least share of a tile's side that neighbouring tiles share, in [0, 1): a lesion up to
    # about this share of a tile lies whole in one tile.
    cfg.TEST.SLICED.OVERLAP = 0.25
    # Two lesions of one class (from tiles or the whole photo) whose boxes overlap by more than
    # this IoU are one, and the higher-scoring is kept: the box head's own per-class rule.
    cfg.TEST.SLICED.NMS_THRESH = 0.5


# yacs: "Type mismatch (<class 'float'> vs. <class 'str'>) with values (0.001 vs. fast) for
# config key: SOLVER.BASE_LR"; a whole sub-config can stand for a value.
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(?:[\w.]*\.)?(\w+)'> vs\. <class '(?:[\w.]*\.)?(\w+)'>\) "
    r"with values \((.*) vs\. (.*)\) for config key: (\S+)$",
    re.DOTALL,
)


def _one_line(error: Exception) -> str:
    message = " ".join(str(error).split()).strip("'\"")
    mismatch = _TYPE_MISMATCH.match(message)
    if mismatch:
        expected, given, _, value, key = mismatch.groups()
        value = value if len(value) <= 60 else value[:57] + "..."
        return f"{key} must be of type {expected}, not {given} ({value})"
    return message


# fvcore (file) and yacs (command line) name a key that is not in the config so.
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _config_keys(node, prefix: str = "") -> list[str]:
    """Every full key of a config, e.g. "SOLVER.EARLY_STOPPING.METRIC"."""
    keys = []
    for name, value in node.items():
        if isinstance(value, CN):
            keys += _config_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def unknown_key_hint(cfg, message: str) -> str | None:
    """For a yacs/fvcore "Non-existent key" message, the unknown key and the nearest known one.

    Args:
        cfg (CfgNode): the config the key was merged into.
        message (str): the exception's text.

    Returns:
        str | None: e.g. "unknown config key SOLVER.MAX_EPOCH; did you mean SOLVER.MAX_EPOCHS?",
        or None when `message` is about something else.
    """
    found = _UNKNOWN_KEY.search(message)
    if not found:
        return None
    key = found.group(1).strip("'\"")
    known = {name.upper(): name for name in _config_keys(cfg)}
    # difflib's ratio, as Python's own "did you mean" for names; 0.6 is its usual cut-off. Keys
    # are compared in upper case, so that "dental.data_root" finds DENTAL.DATA_ROOT.
    close = difflib.get_close_matches(key.upper(), list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown config key {key}; did you mean {known[close[0]]}?"
    return (
        f"unknown config key {key}; see dental_d2/config.py and detectron2's config/defaults.py "
        "for the keys"
    )


def existing_configs(folder: str = CONFIGS_DIR) -> list[str]:
    """The project's config files a run can start from (not the `Base-*` ones), as paths
    relative to the working directory when they lie below it.

    Args:
        folder (str): the configs folder.
    """
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".yaml") and not name.startswith("Base-"):
                path = os.path.join(root, name)
                relative = os.path.relpath(path)
                found.append(path if relative.startswith("..") else relative)
    return sorted(found)


def _merge_file(cfg, config_file: str) -> None:
    if not os.path.isfile(config_file):
        configs = existing_configs()
        listing = f"one of {', '.join(configs)}" if configs else "PATH.yaml"
        raise DentalError(f"{config_file}: config file not found; pass --config-file {listing}")
    try:
        # Plain YAML only: a config file never gets to build Python objects (run code).
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except KeyError as e:
        hint = unknown_key_hint(cfg, str(e)) or f"unknown config key {e}"
        raise DentalError(f"{config_file}: {hint}") from e
    except yaml.YAMLError as e:
        raise DentalError(f"{config_file}: not valid YAML ({_one_line(e)}); fix the file") from e
    except OSError as e:  # a missing or unreadable _BASE_
        raise DentalError(
            f"{config_file}: cannot read {e.filename or 'a config it needs'} ({e.strerror or e}); "
            "fix the path in _BASE_"
        ) from e
    except (TypeError, AttributeError) as e:
        # fvcore looks for _BASE_ in, and merges, what the YAML holds: nothing, or a list.
        raise DentalError(
            f"{config_file}: holds no mapping of config keys (KEY: value lines); fix the file"
        ) from e
    except (ValueError, AssertionError) as e:
        # yacs: a value of the wrong type ("Type mismatch ...").
        raise DentalError(f"{config_file}: {_one_line(e)}; fix the value in the file") from e


def check_config(cfg) -> None:
    """Refuses values that would only fail later, mid-run.

    Args:
        cfg (CfgNode): a config with the dental keys.

    Raises:
        DentalError: the key at fault, its value and what it may be.
    """
    if cfg.SOLVER.CHECKPOINT_PERIOD <= 0:
        raise DentalError(
            f"SOLVER.CHECKPOINT_PERIOD is {cfg.SOLVER.CHECKPOINT_PERIOD}; it must be a positive "
            "number of iterations (set it above SOLVER.MAX_ITER for no periodic checkpoints)"
        )
    for key, node in (
        ("SOLVER.EARLY_STOPPING.MODE", cfg.SOLVER.EARLY_STOPPING),
        ("SOLVER.PLATEAU.MODE", cfg.SOLVER.PLATEAU),
    ):
        if node.MODE not in ("min", "max"):
            raise DentalError(
                f"{key} is {node.MODE!r}; use 'min' (lower is better, as a loss) or 'max' "
                "(higher is better, as an AP)"
            )


def check_output_dir(output_dir: str) -> None:
    """Creates `output_dir` if needed and checks that a file can be written in it.

    Args:
        output_dir (str): the run's OUTPUT_DIR.

    Raises:
        DentalError: it cannot be created or written to.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DentalError(
            f"OUTPUT_DIR {output_dir}: cannot write there ({reason}); set OUTPUT_DIR to a "
            "writable folder"
        ) from e


def build_config(config_file: str | None, opts: Sequence[str] = ()):
    """Returns an unfrozen config built in detectron2's order: defaults, dental keys, file, opts.

    Args:
        config_file (str | None): a YAML config; None keeps the defaults.
        opts (Sequence[str]): trailing KEY VALUE overrides, as on detectron2's command lines.

    Raises:
        DentalError: when the config file does not exist, is not valid YAML, has a key that is
            unknown or a value of the wrong type, or `check_config` refuses a value.
    """
    cfg = get_cfg()
    add_dental_config(cfg)
    if config_file:
        _merge_file(cfg, config_file)
    opts = list(opts)
    if len(opts) % 2:
        raise DentalError(
            f"config overrides must come in KEY VALUE pairs, got an odd list: {' '.join(opts)}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        # yacs raises these for unknown keys and for values of the wrong type.
        hint = unknown_key_hint(cfg, str(e)) or _one_line(e)
        raise DentalError(f"bad config override: {hint}") from e
    # Training's length comes from the command line when it sets one of the two (see
    # dental_d2.engine.launch); both there is ambiguous.
    if cfg.SOLVER.MAX_EPOCHS > 0 and {"SOLVER.MAX_EPOCHS", "SOLVER.MAX_ITER"} <= set(opts[0::2]):
        raise DentalError(
            f"SOLVER.MAX_EPOCHS {cfg.SOLVER.MAX_EPOCHS} and SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} "
            "are both on the command line; give one of them (SOLVER.MAX_EPOCHS 0 lets "
            "SOLVER.MAX_ITER decide)"
        )
    check_config(cfg)
    return cfg


def fall_back_to_cpu(cfg, doing: str) -> None:
    """Sets `MODEL.DEVICE cpu`, with a warning, when the config asks for CUDA and there is none.

    Args:
        cfg (CfgNode): a mutable config.
        doing (str): what runs on the CPU instead, for the warning, e.g. "predicting".
    """
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: %s on the CPU", doing)
        cfg.MODEL.DEVICE = "cpu"


def keeping_scores_from(threshold: float) -> float:
    """The `MODEL.ROI_HEADS.SCORE_THRESH_TEST` that keeps detections scoring `threshold` or more.

    Every dental tool keeps a score equal to its threshold, as COCO's evaluation does.
    detectron2's box head keeps `score > SCORE_THRESH_TEST`, compared in float32, so the
    value given to it is the float32 just below `threshold`.

    Args:
        threshold (float): the least score kept.
    """
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
