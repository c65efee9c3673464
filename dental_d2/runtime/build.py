"""Chooses the runtime for `MODEL.WEIGHTS`."""

from ..errors import DentalError
from ..export import METADATA_FILE, read_export_metadata
from ..weights import WeightsFile
from ..weights_kind import EXPORT, exported_format
from .base import Backend
from .eager import TorchBackend
from .exported import OnnxBackend, TorchScriptBackend
from .sliced import SlicedBackend


def build_backend(
    cfg, weights: WeightsFile, score_threshold: float, metadata: dict | None = None
) -> Backend:
    """The runtime for `cfg.MODEL.WEIGHTS`: ONNX Runtime for `.onnx`, TorchScript for `.ts`,
    PyTorch eager for anything else.

    Args:
        cfg (CfgNode): the predictor's config.
        weights (WeightsFile): `MODEL.WEIGHTS`, read once by the caller.
        score_threshold (float): the least score kept (the eager model keeps it through
            `MODEL.ROI_HEADS.SCORE_THRESH_TEST`).
        metadata (dict | None): the export's `model.json`, for exported models.
    """
    if weights.kind != EXPORT:
        return TorchBackend(cfg, weights)
    fmt = exported_format(cfg.MODEL.WEIGHTS)
    if cfg.TEST.AUG.ENABLED:
        raise DentalError(
            f"{cfg.MODEL.WEIGHTS}: TEST.AUG.ENABLED needs a PyTorch GeneralizedRCNN, not an "
            "exported model; set TEST.AUG.ENABLED False"
        )
    metadata = metadata or read_export_metadata(cfg.MODEL.WEIGHTS)
    if metadata.get("format") != fmt:
        raise DentalError(
            f"{cfg.MODEL.WEIGHTS}: the {METADATA_FILE} beside it describes a "
            f"{metadata.get('format')} model; export again into a folder of its own"
        )
    backend = OnnxBackend if fmt == "onnx" else TorchScriptBackend
    return backend(cfg, weights, metadata, score_threshold)


def build_runtime(
    cfg, weights: WeightsFile, score_threshold: float, metadata: dict | None, class_names: list
) -> Backend:
    """`build_backend`'s runtime, wrapped in `SlicedBackend` when `TEST.SLICED.ENABLED`; the
    arguments are `build_backend`'s and `class_names` (list[str]), the model's classes."""
    backend = build_backend(cfg, weights, score_threshold, metadata)
    return SlicedBackend(backend, cfg, class_names) if cfg.TEST.SLICED.ENABLED else backend
