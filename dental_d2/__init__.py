"""dental_d2: Mask R-CNN for teeth, caries, cavities and cracks in dental images, on detectron2."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "dental_d2 needs detectron2, which is not installed: run `make install` in the project "
        "root (or see README.md, 'Installing detectron2')"
    ) from e

from .config import add_dental_config
from .errors import DentalError

__all__ = ["DentalError", "add_dental_config"]
__version__ = "0.1.0"
