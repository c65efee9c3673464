"""Deployment: export to ONNX or TorchScript with a `model.json` that makes it self-describing
(the runtimes that run the exports are in `dental_d2.runtime`).

`export_model` is imported when first used: the runtimes read the contract in `metadata` and
should not load the tracer with it.
"""

from .metadata import (
    INPUT_NAMES,
    METADATA_FILE,
    MODEL_FILES,
    OUTPUT_NAMES,
    apply_export_metadata,
    read_export_metadata,
)

__all__ = [
    "INPUT_NAMES",
    "METADATA_FILE",
    "MODEL_FILES",
    "OUTPUT_NAMES",
    "apply_export_metadata",
    "export_model",
    "read_export_metadata",
]


def __getattr__(name):
    # PEP 562: `from dental_d2.export import export_model` loads the exporter (and detectron2's
    # tracing code) only then.
    if name == "export_model":
        from .exporter import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
