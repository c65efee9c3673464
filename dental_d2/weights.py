"""The model file named by `MODEL.WEIGHTS`: checked (given, exists), read once, and the class
names of the model it holds; what training, `--eval-only`, `Predictor` and the exporter check
before building a model."""

import hashlib
import logging
import os
from dataclasses import dataclass

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .checkpoint import class_names_in, load_weights_file, read_class_names
from .data import check_num_classes
from .errors import DentalError

logger = logging.getLogger(__name__)

# Files read into memory by `read_weights`: checkpoints and exported models. Others (a
# model-zoo `.pkl`, URLs) are left to detectron2's checkpointer.
_READ_IN_MEMORY = (".pth", ".onnx", ".ts")


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


@dataclass
class WeightsFile:
    """`MODEL.WEIGHTS`, read once: its digest for reports, its content for the runtime.

    Attributes:
        path (str): `MODEL.WEIGHTS` ("" for random weights, or a URL).
        sha256 (str): the first 12 hex digits of the file's SHA-256; "" for a URL or nothing.
        checkpoint (dict | None): a `.pth` checkpoint, deserialised; None for other files.
        data (bytes | None): an exported model's bytes (`.onnx`, `.ts`); None for others.
    """

    path: str
    sha256: str = ""
    checkpoint: dict | None = None
    data: bytes | None = None

    def checkpoints(self) -> dict[str, dict]:
        """The checkpoint by path, for `DentalCheckpointer(read=...)`; empty when none was read."""
        return {} if self.checkpoint is None else {self.path: self.checkpoint}


def read_weights(cfg) -> WeightsFile:
    """Reads `MODEL.WEIGHTS` once, hashing the bytes it reads.

    A `.pth` is deserialised as `load_weights_file` does; an exported model is kept as bytes
    for its runtime. Any other local file (a model-zoo `.pkl`) is only hashed: detectron2's
    checkpointer reads it when the model is built.

    Args:
        cfg (CfgNode): the config; `DENTAL.ALLOW_PICKLE` is the user's trust in the file.
    """
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path or not os.path.isfile(path):
        return WeightsFile(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if not path.endswith(_READ_IN_MEMORY):
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return WeightsFile(path, digest.hexdigest()[:12])
        data = f.read()
    digest.update(data)
    weights = WeightsFile(path, digest.hexdigest()[:12])
    if path.endswith(".pth"):
        weights.checkpoint = load_weights_file(path, cfg.DENTAL.ALLOW_PICKLE, data=data)
    else:
        weights.data = data
    return weights


def registered_metadata(cfg) -> Metadata | None:
    """The metadata of the first dataset named in `DATASETS.TEST`/`TRAIN` that is registered
    in this process and has class names, if any.

    Args:
        cfg (CfgNode): the model's config.
    """
    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        if name in MetadataCatalog.list() and MetadataCatalog.get(name).get("thing_classes"):
            return MetadataCatalog.get(name)
    return None


def model_class_names(
    cfg,
    config_file: str | None = None,
    data_classes: list[str] | None = None,
    from_registered: bool = True,
    checkpoint: dict | None = None,
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
        checkpoint (dict | None): `MODEL.WEIGHTS` already read (`read_weights`); None reads
            the class names from the file.

    Raises:
        DentalError: no source names the classes, or not `MODEL.ROI_HEADS.NUM_CLASSES` of them.
    """
    if checkpoint is None:
        from_checkpoint = read_class_names(cfg.MODEL.WEIGHTS, cfg.DENTAL.ALLOW_PICKLE)
    else:
        from_checkpoint = class_names_in(checkpoint)
    from_config = list(cfg.DENTAL.CLASS_NAMES)
    if from_checkpoint and from_config and from_config != from_checkpoint:
        logger.warning(
            "DENTAL.CLASS_NAMES %s differ from the classes saved in %s, %s: using the checkpoint's",
            from_config,
            cfg.MODEL.WEIGHTS,
            from_checkpoint,
        )
    registered = registered_metadata(cfg) if from_registered else None
    if from_checkpoint:
        names, source = from_checkpoint, cfg.MODEL.WEIGHTS
    elif from_config:
        names, source = from_config, f"DENTAL.CLASS_NAMES of {config_file or 'the config'}"
    elif data_classes:
        names, source = data_classes, "the dataset"
    elif registered is not None:
        names, source = list(registered.thing_classes), "the registered dataset"
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
