"""Runtimes behind `Predictor`: PyTorch eager, ONNX Runtime and TorchScript, chosen at load.

Each takes detectron2's model inputs (`{"image": CHW float tensor, "height", "width"}`, resized
by the caller) and returns `Instances` at the original size. The exported graphs stop before
mask pasting; `detector_postprocess` does it for them exactly as it does inside
`GeneralizedRCNN`, so both paths share one post-processing.
"""

import json
import logging
import os

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..checkpoint import DentalCheckpointer, loading_weights
from ..errors import DentalError
from .exporter import METADATA_FILE, OUTPUT_NAMES

logger = logging.getLogger(__name__)

EXPORTED_EXTENSIONS = {".onnx": "onnx", ".ts": "torchscript"}


def exported_format(weights: str) -> str | None:
    """Returns "onnx" or "torchscript" when `weights` names an exported model, else None."""
    return EXPORTED_EXTENSIONS.get(os.path.splitext(weights or "")[1].lower())


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


class TorchBackend:
    """PyTorch eager: detectron2's model with `MODEL.WEIGHTS` loaded, in eval mode.

    Args:
        cfg (CfgNode): the predictor's config.
    """

    name = "pytorch"

    def __init__(self, cfg):
        self.model = build_model(cfg)
        self.model.eval()
        with loading_weights(cfg.MODEL.WEIGHTS):
            checkpointer = DentalCheckpointer(self.model, allow_pickle=cfg.DENTAL.ALLOW_PICKLE)
            checkpointer.load(cfg.MODEL.WEIGHTS)

    def __call__(self, inputs: list[dict]) -> list[Instances]:
        with torch.no_grad():
            return [output["instances"].to("cpu") for output in self.model(inputs)]


class ExportedBackend:
    """Runs an exported graph image by image and pastes its masks like detectron2 does.

    Subclasses load the graph in `load` and run it in `run`.

    Args:
        cfg (CfgNode): the predictor's config; `MODEL.WEIGHTS` is the exported file and
            `MODEL.ROI_HEADS.SCORE_THRESH_TEST` filters further what the graph kept.
        metadata (dict): the export's `model.json`.
    """

    name = "exported"

    def __init__(self, cfg, metadata: dict):
        self.metadata = metadata
        self.score_threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        exported_threshold = metadata.get("score_threshold", 0.0)
        if self.score_threshold < exported_threshold:
            logger.warning(
                "%s dropped detections scoring %.3f or less; a confidence threshold of %.3f "
                "cannot bring them back: export with MODEL.ROI_HEADS.SCORE_THRESH_TEST %s",
                cfg.MODEL.WEIGHTS,
                exported_threshold,
                self.score_threshold,
                self.score_threshold,
            )
        self.keep_all = self.score_threshold <= exported_threshold
        self.load(cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE)

    def load(self, model_path: str, device: str) -> None:
        """Loads the exported graph.

        Args:
            model_path (str): the exported file (`MODEL.WEIGHTS`).
            device (str): `MODEL.DEVICE`, where the runtime can honour it.
        """
        raise NotImplementedError

    def run(self, image: torch.Tensor) -> list[np.ndarray | torch.Tensor]:
        """Runs the graph on one CHW float image; returns `OUTPUT_NAMES` in order."""
        raise NotImplementedError

    def __call__(self, inputs: list[dict]) -> list[Instances]:
        results = []
        for record in inputs:
            image = record["image"]
            outputs = dict(zip(OUTPUT_NAMES, (torch.as_tensor(o) for o in self.run(image))))
            instances = Instances(tuple(image.shape[1:]))
            instances.pred_boxes = Boxes(outputs["boxes"])
            instances.scores = outputs["scores"]
            instances.pred_classes = outputs["classes"]
            instances.pred_masks = outputs["masks"]
            if not self.keep_all:
                instances = instances[instances.scores > self.score_threshold]
            height = record.get("height", image.shape[1])
            width = record.get("width", image.shape[2])
            results.append(detector_postprocess(instances, height, width))
        return results


class OnnxBackend(ExportedBackend):
    """ONNX Runtime on the CPU (or CUDA when its provider is installed and asked for), for a
    `.onnx` file; built as `ExportedBackend`."""

    name = "onnxruntime"

    def load(self, model_path: str, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DentalError(
                f"{model_path}: running an ONNX model needs onnxruntime; "
                "pip install onnxruntime (or make install)"
            ) from e
        self.session = ort.InferenceSession(
            model_path,
            sess_options=onnx_session_options(),
            providers=onnx_providers(device, ort.get_available_providers()),
        )

    def run(self, image: torch.Tensor) -> list[np.ndarray]:
        return self.session.run(OUTPUT_NAMES, {"image": image.cpu().numpy()})


def onnx_session_options(threads: int = 0):
    """ONNX Runtime session options: every graph optimisation, `threads` intra-op threads.

    Args:
        threads (int): 0 lets ONNX Runtime use one per physical core.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return options


def onnx_providers(device: str, available: list[str]) -> list[str]:
    """CUDA first when the device asks for it and ONNX Runtime has it; the CPU always."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TorchScriptBackend(ExportedBackend):
    """A TorchScript module traced by `tools/export_model.py --format torchscript` (a `.ts`
    file), on the CPU; built as `ExportedBackend`."""

    name = "torchscript"

    def load(self, model_path: str, device: str) -> None:
        self.module = torch.jit.load(model_path, map_location="cpu").eval()

    def run(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return self.module(image.cpu())


def build_backend(cfg, metadata: dict | None = None):
    """The runtime for `cfg.MODEL.WEIGHTS`: ONNX Runtime for `.onnx`, TorchScript for `.ts`,
    PyTorch eager for anything else.

    Args:
        cfg (CfgNode): the predictor's config.
        metadata (dict | None): the export's `model.json`, for exported models.
    """
    fmt = exported_format(cfg.MODEL.WEIGHTS)
    if fmt is None:
        return TorchBackend(cfg)
    metadata = metadata or read_export_metadata(cfg.MODEL.WEIGHTS)
    if metadata.get("format") != fmt:
        raise DentalError(
            f"{cfg.MODEL.WEIGHTS}: the {METADATA_FILE} beside it describes a "
            f"{metadata.get('format')} model; export again into a folder of its own"
        )
    return (OnnxBackend if fmt == "onnx" else TorchScriptBackend)(cfg, metadata)
