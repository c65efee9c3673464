"""Deployment: export to ONNX or TorchScript with a `model.json` that makes it self-describing
(the runtimes that run the exports are in `dental_d2.runtime`)."""

from .exporter import METADATA_FILE, MODEL_FILES, OUTPUT_NAMES, export_model
from .metadata import apply_export_metadata, exported_format, read_export_metadata

__all__ = [
    "METADATA_FILE",
    "MODEL_FILES",
    "OUTPUT_NAMES",
    "apply_export_metadata",
    "export_model",
    "exported_format",
    "read_export_metadata",
]
