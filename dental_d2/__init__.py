"""dental_d2: Mask R-CNN for teeth, caries, cavities and cracks in dental images, on detectron2.

`DentalError` comes without loading torch; `Predictor` and `add_dental_config` are imported on
first use (PEP 562), so a tool that fails early, or only needs the error type, starts quickly.
"""

import importlib
import importlib.util
import logging
import warnings

# fvcore calls torch.jit.script while detectron2 imports, and torch 2.14 answers each time with
# a FutureWarning that users cannot act on; it would stand before every tool's one-line error.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)
# detectron2's anchor generator calls torch.meshgrid without `indexing`: same story.
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")
# torch logs two more at start-up: on a machine without CUDA, detectron2's environment report
# makes torch say where CUDA is not; detectron2's layers ask torch.fx whether they are traced.
for _name, _noise in (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
):
    logging.getLogger(_name).addFilter(
        lambda record, noise=_noise: not str(record.msg).startswith(noise)
    )

# Looked up, not imported: importing detectron2 imports torch, seconds that `DentalError` does not
# need. Every module that uses detectron2 imports it itself.
if importlib.util.find_spec("detectron2") is None:  # pragma: no cover - a subprocess test
    raise ImportError(
        "dental_d2 needs detectron2, which is not installed: run `make install` in the project "
        "root (see docs/install.md)"
    )

from .errors import DentalError  # noqa: E402

# Public names imported on first use: the module that defines each.
_LAZY = {"Predictor": ".predictor", "add_dental_config": ".config"}

__all__ = ["DentalError", "Predictor", "add_dental_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
