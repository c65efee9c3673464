"""What every image reader shares: the pixel limit, its error, and the 8-bit stretch."""

import numpy as np

from ..errors import DentalError

# Larger images are refused before they are decoded: a 45-megapixel camera photo or a full
# panoramic radiograph is far below, while a "decompression bomb" (a small file that decodes to
# gigabytes) is above. Below PIL's own limit, so PIL's warning never fires first.
MAX_IMAGE_PIXELS = 64_000_000


class ImageTooLargeError(DentalError):
    """An image with more pixels than the reader was allowed to decode (a decompression bomb)."""


def one_line(error: Exception) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scales a high-bit-depth (or float) single-channel image to uint8.

    The rule is a linear stretch of the image's own range: its minimum becomes 0 and its maximum
    255. Radiographs often store 12 significant bits in a 16-bit container, so dividing by 257
    would leave them almost black; stretching uses the whole 8-bit range whatever the bit depth.
    A constant image (no range to stretch) becomes all zeros. NaNs become 0.

    Args:
        array (np.ndarray): an HxW array of any numeric dtype.

    Returns:
        np.ndarray: HxW uint8.
    """
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
