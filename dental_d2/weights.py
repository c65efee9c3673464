"""The model file named by `MODEL.WEIGHTS`: checked (given, exists, trained), read once, and what
it says of its model (class names, config, iteration); what training, `--eval-only`, `Predictor`
and the exporter check before building a model."""

import hashlib
import logging
import os
from dataclasses import dataclass

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .checkpoint import load_weights_file
from .checkpoint_contents import class_names_in, config_yaml_in, iteration_in
from .data import check_num_classes
from .errors import DentalError
from .weights_kind import (
    CHECKPOINT,
    EXPORT,
    NONE,
    is_local,
    only_starts_training,
    weights_kind,
)

logger = logging.getLogger(__name__)

# What `check_weights_given` asks for: the weights training writes, or an export of them.
_TRAINED_WEIGHTS = (
    "pass MODEL.WEIGHTS output/.../model_final.pth (tools/train_net.py writes it to OUTPUT_DIR) "
    "or an exported model.onnx"
)


def check_weights_exist(cfg) -> None:
    """Refuses a local `MODEL.WEIGHTS` that is not a file (URLs are checked when downloaded).

    Args:
        cfg (CfgNode): the config; an empty `MODEL.WEIGHTS` (random init) passes.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and is_local(weights) and not os.path.isfile(weights):
        raise DentalError(
            f"MODEL.WEIGHTS {weights}: no such file; give the path of a checkpoint (a "
            "model_*.pth of tools/train_net.py, an exported model.onnx, or a detectron2:// "
            "model-zoo URL)"
        )


def check_weights_given(cfg, doing: str, allow_empty: bool = False) -> None:
    """Refuses, where a trained model is needed, an empty `MODEL.WEIGHTS` and weights that only
    start a training (an ImageNet backbone, a model-zoo download): such a model evaluates, draws
    and ranks without error, and everything it says is noise.

    Args:
        cfg (CfgNode): the config.
        doing (str): what needs the trained model, for the message, e.g. "evaluating".
        allow_empty (bool): let an empty `MODEL.WEIGHTS` (random weights, for tests) pass.
    """
    weights = cfg.MODEL.WEIGHTS
    kind = weights_kind(weights)
    if kind == NONE and not allow_empty:
        raise DentalError(
            f"MODEL.WEIGHTS is empty: {doing} needs a trained model, not random weights; "
            f"{_TRAINED_WEIGHTS}"
        )
    if only_starts_training(weights):
        raise DentalError(
            f"MODEL.WEIGHTS {weights} ({kind}) only starts a training: {doing} needs a trained "
            f"model; {_TRAINED_WEIGHTS}"
        )


@dataclass
class WeightsFile:
    """`MODEL.WEIGHTS`, read once: its digest for reports, its content for the runtime.

    Attributes:
        path (str): `MODEL.WEIGHTS` ("" for random weights, or a URL).
        kind (str): what it names (`dental_d2.weights_kind.weights_kind`).
        sha256 (str): the first 12 hex digits of the file's SHA-256; "" for a URL or nothing.
        checkpoint (dict | None): a local checkpoint, deserialised; None for other files.
        data (bytes | None): an exported model's bytes (`.onnx`, `.ts`); None for others.
    """

    path: str
    kind: str = NONE
    sha256: str = ""
    checkpoint: dict | None = None
    data: bytes | None = None

    def checkpoints(self) -> dict[str, dict]:
        """The checkpoint by path, for `DentalCheckpointer(read=...)`; empty when none was read."""
        return {} if self.checkpoint is None else {self.path: self.checkpoint}

    @property
    def config_yaml(self) -> str | None:
        """The config (YAML) the checkpoint was trained with, if it stores one."""
        return config_yaml_in(self.checkpoint)

    @property
    def iteration(self) -> int | None:
        """The training iteration the checkpoint stores, if any."""
        return iteration_in(self.checkpoint)


def read_weights(cfg) -> WeightsFile:
    """Reads `MODEL.WEIGHTS` once, hashing the bytes it reads.

    A checkpoint is deserialised as `load_weights_file` does; an exported model is kept as
    bytes for its runtime. Any other local file (a model-zoo `.pkl`) is only hashed:
    detectron2's checkpointer reads it when the model is built. URLs are not read here.

    Args:
        cfg (CfgNode): the config; `DENTAL.ALLOW_PICKLE` is the user's trust in the file.
    """
    path = cfg.MODEL.WEIGHTS
    kind = weights_kind(path)
    if kind == NONE or not is_local(path) or not os.path.isfile(path):
        return WeightsFile(path, kind)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if kind not in (CHECKPOINT, EXPORT):
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return WeightsFile(path, kind, digest.hexdigest()[:12])
        data = f.read()
    digest.update(data)
    weights = WeightsFile(path, kind, digest.hexdigest()[:12])
    if kind == CHECKPOINT:
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
        checkpoint (dict | None): `MODEL.WEIGHTS` as `read_weights` read it; None when it holds
            no checkpoint (random weights, an exported model, a URL).

    Raises:
        DentalError: no source names the classes, or not `MODEL.ROI_HEADS.NUM_CLASSES` of them.
    """
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
