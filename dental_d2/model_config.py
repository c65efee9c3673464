"""What every user of a model checks before building it (training and `--eval-only`,
`Predictor`, the exporter): the weights file exists, CUDA is there, and the class names are
known and as many as the model predicts."""

import logging
import os

import torch
from detectron2.data import MetadataCatalog

from .checkpoint import read_class_names
from .data import check_num_classes
from .errors import DentalError

logger = logging.getLogger(__name__)


def check_weights_exist(cfg) -> None:
    """Refuses a local `MODEL.WEIGHTS` that is not a file (URLs are checked when downloaded).

    Args:
        cfg (CfgNode): the config; an empty `MODEL.WEIGHTS` (random init) passes.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise DentalError(
            f"MODEL.WEIGHTS {weights}: no such file; give the path of a checkpoint (a "
            "model_*.pth of tools/train_net.py, an exported model.onnx, or a detectron2:// "
            "model-zoo URL)"
        )


def check_weights_given(cfg, doing: str) -> None:
    """Refuses an empty `MODEL.WEIGHTS` where a trained model is needed: a model with random
    weights evaluates, draws and ranks without error, and everything it says is noise.

    Args:
        cfg (CfgNode): the config.
        doing (str): what needs the trained model, for the message, e.g. "evaluating".
    """
    if not cfg.MODEL.WEIGHTS:
        raise DentalError(
            f"MODEL.WEIGHTS is empty: {doing} needs a trained model, not random weights; pass "
            "MODEL.WEIGHTS output/.../model_final.pth (or an exported model.onnx)"
        )


def fall_back_to_cpu(cfg, doing: str) -> None:
    """Sets `MODEL.DEVICE cpu`, with a warning, when the config asks for CUDA and there is none.

    Args:
        cfg (CfgNode): a mutable config.
        doing (str): what runs on the CPU instead, for the warning, e.g. "predicting".
    """
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: %s on the CPU", doing)
        cfg.MODEL.DEVICE = "cpu"


def _registered_class_names(cfg) -> list[str] | None:
    """The classes of an already registered dataset named in the config, if any."""
    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        if name in MetadataCatalog.list():
            names = MetadataCatalog.get(name).get("thing_classes")
            if names:
                return list(names)
    return None


def model_class_names(
    cfg,
    config_file: str | None = None,
    data_classes: list[str] | None = None,
    from_registered: bool = True,
) -> list[str]:
    """The classes of the model in `cfg`, in contiguous-id order.

    They come from the checkpoint (written by the dental trainer), else `DENTAL.CLASS_NAMES`,
    else `data_classes`, else the metadata of a registered dataset in `DATASETS.TEST`/`TRAIN`.
    When the checkpoint and `DENTAL.CLASS_NAMES` disagree, the checkpoint wins and a warning
    says so.

    Args:
        cfg (CfgNode): the model's config.
        config_file (str | None): the config's file, for messages.
        data_classes (list[str] | None): the classes of the data the model is evaluated on.
        from_registered (bool): fall back on a dataset registered in this process (the
            exporter does not: what it writes must not depend on what ran before it).

    Raises:
        DentalError: no source names the classes, or not `MODEL.ROI_HEADS.NUM_CLASSES` of them.
    """
    from_checkpoint = read_class_names(cfg.MODEL.WEIGHTS, cfg.DENTAL.ALLOW_PICKLE)
    from_config = list(cfg.DENTAL.CLASS_NAMES)
    if from_checkpoint and from_config and from_config != from_checkpoint:
        logger.warning(
            "DENTAL.CLASS_NAMES %s differ from the classes saved in %s, %s: using the checkpoint's",
            from_config,
            cfg.MODEL.WEIGHTS,
            from_checkpoint,
        )
    if from_checkpoint:
        names, source = from_checkpoint, cfg.MODEL.WEIGHTS
    elif from_config:
        names, source = from_config, f"DENTAL.CLASS_NAMES of {config_file or 'the config'}"
    elif data_classes:
        names, source = data_classes, "the dataset"
    elif from_registered:
        names, source = _registered_class_names(cfg), "the registered dataset"
    else:
        names, source = None, None
    if not names:
        raise DentalError(
            f"{cfg.MODEL.WEIGHTS or config_file or 'the model'}: no class names in the "
            "checkpoint, the config or a registered dataset; pass them as DENTAL.CLASS_NAMES "
            "\"['Caries', 'Cavity', 'Crack', 'Tooth']\" (in contiguous-id order)"
        )
    check_num_classes(cfg, names, source)
    return list(names)
