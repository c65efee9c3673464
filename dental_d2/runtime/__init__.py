"""The runtimes behind `Predictor`, chosen by `MODEL.WEIGHTS`: PyTorch eager for a checkpoint,
ONNX Runtime for a `.onnx` file, TorchScript for a `.ts` file.

Each takes HxWx3 BGR images, prepares detectron2's model inputs with `base.PredictorInput`
(`Backend.model_input`) and returns `Instances` at the original size, on the CPU. With
`TEST.SLICED.ENABLED`, `SlicedBackend` wraps the one chosen: lesions also from overlapping
tiles of large photos.
"""

from .base import Backend
from .build import build_backend, build_runtime
from .eager import TorchBackend
from .exported import ExportedBackend, OnnxBackend, TorchScriptBackend
from .sliced import SlicedBackend

__all__ = [
    "Backend",
    "ExportedBackend",
    "OnnxBackend",
    "SlicedBackend",
    "TorchBackend",
    "TorchScriptBackend",
    "build_backend",
    "build_runtime",
]
