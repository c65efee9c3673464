"""The one loader of a trained model: the config its weights were trained with (stored in them,
or given and checked against them), and the model built from it with the weights loaded, refused
when they leave a parameter unloaded. `Predictor`, `--eval-only` and the exporter load so."""

import contextlib
import logging
import os

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from .checkpoint import DentalCheckpointer
from .config import OFFLINE_CONFIG, build_config
from .errors import DentalError
from .weights import WeightsFile, check_weights_exist, check_weights_given, read_weights
from .weights_kind import CHECKPOINT, MODEL_ZOO, weights_kind

logger = logging.getLogger(__name__)

# Keys outside MODEL that shape what the model is given: the images' channel order and size.
_INPUT_KEYS = ("INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")
# MODEL keys that do not shape the model: where its weights are and where it runs. Keys ending
# in _TEST (thresholds and proposal counts at inference) do not either.
_FREE_MODEL_KEYS = ("MODEL.WEIGHTS", "MODEL.DEVICE")
# Differing keys, or parameters that do not load, named in a message.
_NAMED = 3
# Keys that say most plainly which model a config builds: named first when they differ.
_FIRST_NAMED = (
    "MODEL.META_ARCHITECTURE",
    "MODEL.BACKBONE.NAME",
    "MODEL.TIMM.NAME",
    "MODEL.RESNETS.DEPTH",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "INPUT.FORMAT",
)
# The config file tools/train_net.py writes beside its checkpoints (detectron2's default_setup).
_SAVED_CONFIG = "config.yaml"


@contextlib.contextmanager
def loading_weights(weights: str):
    """Turns a failed download of `weights` (MODEL.WEIGHTS) into one line that says what to do.

    The line gives every step of the fix at once: a downloaded model-zoo `.pkl` is a pickle,
    which loads from a local path only with DENTAL.ALLOW_PICKLE True.

    Args:
        weights (str): the URL or path being loaded.
    """
    try:
        yield
    except OSError as e:  # urllib's URLError and HTTPError are OSErrors
        local = "pass its local path"
        if weights_kind(weights) == MODEL_ZOO:
            local += " with DENTAL.ALLOW_PICKLE True (a .pkl is a pickle)"
        raise DentalError(
            f"MODEL.WEIGHTS {weights}: cannot be loaded ({getattr(e, 'reason', e)}); download "
            f"it once where there is internet and {local}, or train with no internet from "
            f"{OFFLINE_CONFIG}"
        ) from e


def _plain(value):
    # A YAML round trip turns tuples into lists (yacs turns back only the outer one).
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value


def _values(node, prefix: str = "") -> dict:
    """Every full key of a config with its value, e.g. {"MODEL.MASK_ON": True, ...}; tuples
    as lists."""
    values = {}
    for name, value in node.items():
        if isinstance(value, CfgNode):
            values.update(_values(value, f"{prefix}{name}."))
        else:
            values[prefix + name] = _plain(value)
    return values


def _shapes_the_model(key: str) -> bool:
    if key in _INPUT_KEYS:
        return True
    return key.startswith("MODEL.") and key not in _FREE_MODEL_KEYS and not key.endswith("_TEST")


def _naming_order(key: str) -> tuple[int, str]:
    rank = _FIRST_NAMED.index(key) if key in _FIRST_NAMED else len(_FIRST_NAMED)
    return rank, key


def keys_that_differ(cfg, other) -> list[str]:
    """The keys shaping the model or its inputs on which two configs differ, those that name the
    model first (`_FIRST_NAMED`), then in alphabetical order.

    Args:
        cfg (CfgNode): a config with the dental keys.
        other (CfgNode): another.
    """
    mine, theirs = _values(cfg), _values(other)
    keys = [key for key in mine.keys() | theirs.keys() if _shapes_the_model(key)]
    keys.sort(key=_naming_order)
    return [key for key in keys if mine.get(key) != theirs.get(key)]


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _saved_config_hint(weights: str) -> str:
    saved = os.path.join(os.path.dirname(weights), _SAVED_CONFIG)
    return f" (its training saved {saved})" if os.path.isfile(saved) else ""


def _check_agrees(config_file: str, given, trained, weights: str) -> None:
    differ = keys_that_differ(given, trained)
    if not differ:
        return
    there, stored = _values(given), _values(trained)
    shown = "; ".join(
        f"{key} {_short(there.get(key))} there, {_short(stored.get(key))} in the weights"
        for key in differ[:_NAMED]
    )
    more = f" and {len(differ) - _NAMED} more" if len(differ) > _NAMED else ""
    raise DentalError(
        f"--config-file {config_file} does not fit MODEL.WEIGHTS {weights}, which stores the "
        f"config it was trained with: {shown}{more}; drop --config-file (the weights suffice) "
        "or pass the config they were trained with"
    )


def _trained_config(stored: str, opts, weights: str):
    """The config stored in `weights`, under the command line's overrides."""
    cfg = build_config(None)
    try:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(stored))
    except (KeyError, ValueError, AssertionError) as e:
        raise DentalError(
            f"MODEL.WEIGHTS {weights}: the config stored in it does not fit this version of "
            f"dental_d2 ({' '.join(str(e).split())}); pass --config-file with a config that does"
        ) from e
    # build_config checked the overrides already, against the same keys.
    cfg.merge_from_list(list(opts))
    return cfg


def config_for_weights(
    config_file: str | None,
    opts=(),
    weights: str | None = None,
    *,
    doing: str = "predicting",
    allow_empty: bool = False,
) -> tuple[CfgNode, WeightsFile]:
    """The config of a trained model and its weights, read once.

    A checkpoint of the dental trainer stores the config it was trained with: that config, with
    `opts` on top, is the model's. A config file given too must agree with it on the keys that
    shape the model or its inputs. A checkpoint without a stored config (from another trainer)
    needs the config file; an exported model needs none (its `model.json` describes it).

    Args:
        config_file (str | None): a dental YAML config, or None to take the weights' own.
        opts (Sequence[str]): KEY VALUE overrides (data root, device, thresholds, ...).
        weights (str | None): `MODEL.WEIGHTS`; None takes it from `opts` or the config file.
        doing (str): what needs the trained model, for messages, e.g. "evaluating".
        allow_empty (bool): let an empty `MODEL.WEIGHTS` (random weights, for tests) pass.

    Returns:
        tuple[CfgNode, WeightsFile]: the unfrozen config, and `MODEL.WEIGHTS` read.

    Raises:
        DentalError: no trained weights, weights that hold no config and no config file, or a
            config file that does not fit the weights (naming the first keys that differ).
    """
    given = build_config(config_file, opts)
    if weights is not None:
        given.MODEL.WEIGHTS = weights
    check_weights_given(given, doing, allow_empty=allow_empty)
    check_weights_exist(given)
    read = read_weights(given)
    stored = read.config_yaml
    if stored is None:
        if not config_file and read.kind in (CHECKPOINT, MODEL_ZOO):
            raise DentalError(
                f"MODEL.WEIGHTS {read.path}: holds no config of its own (another trainer's "
                f"checkpoint, or an older one); pass --config-file with the config it was "
                f"trained with{_saved_config_hint(read.path)}"
            )
        return given, read
    trained = _trained_config(stored, opts, read.path)
    trained.MODEL.WEIGHTS = read.path
    if config_file:
        _check_agrees(config_file, given, trained, read.path)
    return trained, read


def _refuse_incomplete(weights: WeightsFile, incompatible) -> None:
    """Refuses, for inference, weights that leave a parameter of the model unloaded."""
    missing = list(incompatible.missing_keys)
    reshaped = [name for name, *_ in incompatible.incorrect_shapes]
    if not missing and not reshaped:
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameters not in them ({', '.join(missing[:_NAMED])})")
    if reshaped:
        problems.append(f"{len(reshaped)} of another shape ({', '.join(reshaped[:_NAMED])})")
    if weights.config_yaml is not None:
        built_from = "the config stored in them"
        fix = "a MODEL override on the command line changed the model: drop it"
    else:
        built_from = "the config given"
        fix = (
            "pass --config-file with the config they were trained with"
            f"{_saved_config_hint(weights.path)}"
        )
    raise DentalError(
        f"MODEL.WEIGHTS {weights.path} does not fit the model built from {built_from}: "
        f"{' and '.join(problems)}; {fix}"
    )


def load_model(cfg, weights: WeightsFile | None = None):
    """Builds the model of `cfg` in eval mode and loads `MODEL.WEIGHTS` into it, for inference.

    Weights that leave a parameter unloaded (missing, or of another shape) are refused: such a
    model predicts without error, and what it predicts is noise. An empty `MODEL.WEIGHTS`
    keeps the random initialisation.

    Args:
        cfg (CfgNode): the model's config (`config_for_weights`).
        weights (WeightsFile | None): `MODEL.WEIGHTS` already read; None reads it.

    Raises:
        DentalError: the weights cannot be loaded, or do not fit the model.
    """
    weights = weights if weights is not None else read_weights(cfg)
    model = build_model(cfg).eval()
    with loading_weights(cfg.MODEL.WEIGHTS):
        checkpointer = DentalCheckpointer(
            model,
            allow_pickle=cfg.DENTAL.ALLOW_PICKLE,
            read=weights.checkpoints(),
            on_incomplete=lambda incompatible: _refuse_incomplete(weights, incompatible),
        )
        checkpointer.load(cfg.MODEL.WEIGHTS)
    return model
