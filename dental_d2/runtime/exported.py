"""Runtimes for models written by `tools/export_model.py`: ONNX Runtime and TorchScript.

The exported graphs stop before mask pasting; `dental_postprocess` does it for them exactly as
it does inside `DentalRCNN`, so every runtime shares one post-processing.
"""

import io
import logging

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..errors import DentalError
from ..export import OUTPUT_NAMES
from ..modeling.postprocessing import dental_postprocess
from ..weights import WeightsFile
from .base import Backend

logger = logging.getLogger(__name__)


class ExportedBackend(Backend):
    """Runs an exported graph image by image and pastes its masks like detectron2 does.

    Subclasses load the graph in `load` and run it in `graph`.

    Args:
        cfg (CfgNode): the predictor's config; `MODEL.WEIGHTS` is the exported file.
        weights (WeightsFile): `MODEL.WEIGHTS` read, with the graph's bytes.
        metadata (dict): the export's `model.json`.
        score_threshold (float): the least score kept, a further filter on what the graph
            kept.
    """

    name = "exported"

    def __init__(self, cfg, weights: WeightsFile, metadata: dict, score_threshold: float):
        super().__init__(cfg)
        self.metadata = metadata
        self.score_threshold = score_threshold
        exported_threshold = metadata.get("score_threshold", 0.0)
        if self.score_threshold < exported_threshold:
            logger.warning(
                "%s dropped detections scoring below %.3f; a confidence threshold of %.3f "
                "cannot bring them back: export with MODEL.ROI_HEADS.SCORE_THRESH_TEST %s",
                cfg.MODEL.WEIGHTS,
                exported_threshold,
                self.score_threshold,
                self.score_threshold,
            )
        self.keep_all = self.score_threshold <= exported_threshold
        self.load(weights, cfg.MODEL.DEVICE)

    def load(self, weights: WeightsFile, device: str) -> None:
        """Loads the exported graph.

        Args:
            weights (WeightsFile): the exported file (`MODEL.WEIGHTS`), with its bytes.
            device (str): `MODEL.DEVICE`, where the runtime can honour it.
        """
        raise NotImplementedError

    def graph(self, image: torch.Tensor) -> list[np.ndarray | torch.Tensor]:
        """Runs the graph on one CHW float image; returns `OUTPUT_NAMES` in order."""
        raise NotImplementedError

    def detections(self, image: torch.Tensor) -> Instances:
        """The graph's detections of one CHW float image scoring at least the threshold, at the
        image's size, masks not yet pasted (28x28 per box)."""
        outputs = dict(zip(OUTPUT_NAMES, (torch.as_tensor(o) for o in self.graph(image))))
        instances = Instances(tuple(image.shape[1:]))
        instances.pred_boxes = Boxes(outputs["boxes"])
        instances.scores = outputs["scores"]
        instances.pred_classes = outputs["classes"]
        instances.pred_masks = outputs["masks"]
        if not self.keep_all:
            instances = instances[instances.scores >= self.score_threshold]
        return instances

    def run(self, inputs: list[dict]) -> list[Instances]:
        results = []
        for record in inputs:
            image = record["image"]
            height = record.get("height", image.shape[1])
            width = record.get("width", image.shape[2])
            results.append(dental_postprocess(self.detections(image), height, width))
        return results


class OnnxBackend(ExportedBackend):
    """ONNX Runtime on the CPU (or CUDA when its provider is installed and asked for), for a
    `.onnx` file; built as `ExportedBackend`."""

    name = "onnxruntime"

    def load(self, weights: WeightsFile, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DentalError(
                f"{weights.path}: running an ONNX model needs onnxruntime; "
                "pip install onnxruntime (or make install)"
            ) from e
        self.session = ort.InferenceSession(
            weights.data,
            sess_options=onnx_session_options(),
            providers=onnx_providers(device, ort.get_available_providers()),
        )

    def graph(self, image: torch.Tensor) -> list[np.ndarray]:
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

    def load(self, weights: WeightsFile, device: str) -> None:
        self.module = torch.jit.load(io.BytesIO(weights.data), map_location="cpu").eval()

    def graph(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return self.module(image.cpu())
