"""The contract of an exported model, which the exporter writes and the runtimes read: its file
names, the graph's input and output names, and the `model.json` beside it, read back and applied
to a predictor's config. Nothing here traces a model: the runtimes import it without the tracer.
"""

import json
import os

from ..errors import DentalError
from ..weights_kind import EXPORT_FORMATS

# File names inside the export folder, by format: "model" and the format's extension.
MODEL_FILES = {fmt: f"model{extension}" for extension, fmt in EXPORT_FORMATS.items()}
METADATA_FILE = "model.json"
# The traced graph's inputs and outputs, in this order.
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "classes", "masks"]


def read_export_metadata(model_path: str) -> dict:
    """Reads the `model.json` written beside an exported model.

    Args:
        model_path (str): the `.onnx` or `.ts` file.

    Raises:
        DentalError: when the JSON is missing or unreadable.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
        metadata["class_names"]  # noqa: B018 - the one key every user needs
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DentalError(
            f"{path}: cannot read the export's metadata ({e}); export the model again with "
            "tools/export_model.py, which writes it beside the model"
        ) from e
    return metadata


def apply_export_metadata(cfg, metadata: dict) -> None:
    """Sets what an exported model fixed (classes, input format and sizes) in an unfrozen cfg.

    Args:
        cfg (CfgNode): the predictor's config.
        metadata (dict): from `read_export_metadata`.
    """
    cfg.DENTAL.CLASS_NAMES = list(metadata["class_names"])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(metadata["class_names"])
    cfg.INPUT.FORMAT = metadata["input"]["format"]
    cfg.MODEL.PIXEL_MEAN = list(metadata["pixel_mean"])
    cfg.MODEL.PIXEL_STD = list(metadata["pixel_std"])
    cfg.INPUT.MIN_SIZE_TEST = metadata["min_size_test"]
    cfg.INPUT.MAX_SIZE_TEST = metadata["max_size_test"]
    cfg.TEST.DETECTIONS_PER_IMAGE = metadata["detections_per_image"]
