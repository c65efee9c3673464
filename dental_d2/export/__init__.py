"""Deployment: export to ONNX or TorchScript, and the runtimes `Predictor` chooses between."""

from .backends import (
    OnnxBackend,
    TorchBackend,
    TorchScriptBackend,
    apply_export_metadata,
    build_backend,
    exported_format,
    read_export_metadata,
)
from .exporter import METADATA_FILE, MODEL_FILES, export_model

__all__ = [
    "METADATA_FILE",
    "MODEL_FILES",
    "OnnxBackend",
    "TorchBackend",
    "TorchScriptBackend",
    "apply_export_metadata",
    "build_backend",
    "export_model",
    "exported_format",
    "read_export_metadata",
]
