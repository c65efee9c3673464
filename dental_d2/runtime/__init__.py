"""The runtimes behind `Predictor`, chosen by `MODEL.WEIGHTS`: PyTorch eager for a checkpoint,
ONNX Runtime for a `.onnx` file, TorchScript for a `.ts` file.

Each takes HxWx3 BGR images, prepares detectron2's model inputs with `base.PredictorInput`
(`Backend.model_input`) and returns `Instances` at the original size, on the CPU.
"""

from .base import Backend
from .build import build_backend
from .eager import TorchBackend
from .exported import ExportedBackend, OnnxBackend, TorchScriptBackend

__all__ = [
    "Backend",
    "ExportedBackend",
    "OnnxBackend",
    "TorchBackend",
    "TorchScriptBackend",
    "build_backend",
]
