"""dental_d2: Mask R-CNN for teeth, caries, cavities and cracks in dental images, on detectron2."""

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

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "dental_d2 needs detectron2, which is not installed: run `make install` in the project "
        "root (see docs/install.md)"
    ) from e

from .config import add_dental_config  # noqa: E402
from .errors import DentalError  # noqa: E402
from .modeling import DentalRCNN  # noqa: E402, F401 - registers the model parts with detectron2
from .predictor import Predictor  # noqa: E402

__all__ = ["DentalError", "Predictor", "add_dental_config"]
__version__ = "0.1.0"
