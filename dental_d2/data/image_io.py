"""Reading dental images (8/16-bit, grayscale, alpha, EXIF-rotated, DICOM) as HxWx3 uint8."""

import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..errors import DentalError
from . import dicom
from .pixels import MAX_IMAGE_PIXELS, ImageTooLargeError, one_line, to_uint8

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "decode_image",
    "read_image",
    "image_size",
    "to_uint8",
]

# EXIF tag 0x0112 'Orientation'; values 5-8 swap width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

# PIL modes that hold more than 8 bits per sample and get stretched to 0..255.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# PIL modes with an alpha channel (P images can carry it in info["transparency"]).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, ValueError, TypeError, SyntaxError):
        # A broken EXIF block only loses the orientation, as in detectron2's read_image.
        return 1


def _too_large(name, pixels: str, limit: int = MAX_IMAGE_PIXELS) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{name}: image has {pixels} pixels, more than {limit:,} (a decompression bomb "
        "or a needlessly large scan); downscale it or remove it"
    )


def _open(path, name=None) -> Image.Image:
    name = path if name is None else name
    try:
        image = Image.open(path)
    except FileNotFoundError as e:
        raise DentalError(
            f"{name}: image file not found; restore it or remove it from the annotation JSON"
        ) from e
    except Image.DecompressionBombError as e:
        raise _too_large(name, "too many") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        # PIL names the stream it could not identify; an in-memory one has no useful name.
        reason = "unknown format" if isinstance(e, UnidentifiedImageError) else one_line(e)
        raise DentalError(
            f"{name}: not a readable image ({reason}); replace the file or re-export it"
        ) from e
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_large(name, f"{width}x{height} (WxH)")
    return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        gray = to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        # Composite on black: transparent padding (common around exported radiographs) becomes
        # black instead of whatever colour the hidden pixels happen to hold.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def read_image(path, format: str = "BGR") -> np.ndarray:
    """Reads an image file as detectron2's `detection_utils.read_image` does, for more kinds.

    - EXIF orientation is applied (as Roboflow's auto-orient does), so the array has the size
      the annotations were drawn on.
    - Grayscale (L, 1) becomes 3 identical channels.
    - 16-bit, 32-bit and float images (I;16, I, F) are stretched linearly from the image's own
      min..max to 0..255 (see `to_uint8`); a constant image becomes black.
    - Alpha (RGBA, LA, PA, P with a transparent colour) is composited on black.
    - DICOM (`.dcm`, or any file with the DICOM preamble) is read by `dicom.read_dicom`:
      grayscale as a viewer shows it (rescale, then the file's window), colour as RGB.

    Args:
        path (str or os.PathLike): the image file.
        format (str): channel order of the result, "BGR" (detectron2's default) or "RGB".

    Returns:
        np.ndarray: HxWx3 uint8, contiguous.

    Raises:
        DentalError: the file is missing, not an image, corrupt or truncated.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image supports format 'BGR' or 'RGB', got {format!r}")
    if _is_dicom_path(path):
        return _in_format(dicom.read_dicom(path), format)
    return _decode(_open(path), path, format)


# Endings of the files PIL reads; any other file is first checked for the DICOM preamble.
_PIL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def _is_dicom_path(path) -> bool:
    if os.fspath(path).lower().endswith(_PIL_SUFFIXES):
        return False
    return dicom.is_dicom_file(path)


def _in_format(rgb: np.ndarray, format: str) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1] if format == "BGR" else rgb)


def _decode(image: Image.Image, name, format: str) -> np.ndarray:
    with image:
        try:
            image.load()
            orientation = _exif_orientation(image)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb_array(image)
        except (OSError, ValueError, SyntaxError) as e:
            raise DentalError(
                f"{name}: image is corrupt or truncated ({one_line(e)}); replace the file or "
                "re-export it"
            ) from e
    return _in_format(rgb, format)


def decode_image(
    data: bytes, name: str, format: str = "BGR", max_pixels: int | None = None
) -> np.ndarray:
    """Decodes an image held in memory (an upload) exactly as `read_image` reads a file.

    The size in the header is checked before any pixel is decoded, so a small file that
    claims a huge image (a decompression bomb) costs no memory.

    Args:
        data (bytes): the encoded image (JPEG, PNG, TIFF, BMP, DICOM, ...).
        name (str): what error messages call it, e.g. the uploaded file's name.
        format (str): channel order of the result, "BGR" or "RGB".
        max_pixels (int | None): the most pixels (width x height) to decode; None for PIL's
            own limit.

    Returns:
        np.ndarray: HxWx3 uint8, contiguous.

    Raises:
        DentalError: the data is empty, not an image, corrupt or truncated.
        ImageTooLargeError: the image has more than `max_pixels` pixels.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"decode_image supports format 'BGR' or 'RGB', got {format!r}")
    if not data:
        raise DentalError(f"{name}: the file is empty; send the image's bytes")
    if dicom.has_dicom_preamble(data[:132]) or name.lower().endswith(dicom.DICOM_SUFFIXES):
        return _in_format(dicom.read_dicom(data, name, max_pixels), format)
    image = _open(io.BytesIO(data), name)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit "
            f"of {max_pixels / 1e6:.1f}; send a smaller image"
        )
    return _decode(image, name, format)


def image_size(path) -> tuple[int, int]:
    """Returns (height, width) of an image after EXIF orientation, reading only its header.

    Args:
        path (str or os.PathLike): the image file.

    Raises:
        DentalError: the file is missing or not an image.
    """
    if _is_dicom_path(path):
        return dicom.dicom_size(path)
    with _open(path) as image:
        width, height = image.size
        if _exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def decode_check(path) -> tuple[int, int]:
    """Decodes an image fully (to catch corrupt or truncated files) and returns its size.

    Cheaper than `read_image`: no colour conversion or copy.

    Args:
        path (str or os.PathLike): the image file.

    Returns:
        tuple[int, int]: (height, width) after EXIF orientation.

    Raises:
        DentalError: the file is missing, not an image, corrupt or truncated.
    """
    if _is_dicom_path(path):
        return dicom.read_dicom(path).shape[:2]
    with _open(path) as image:
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise DentalError(
                f"{path}: image is corrupt or truncated ({one_line(e)}); replace the file or "
                "re-export it"
            ) from e
        width, height = image.size
        if _exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def _check_image_file(image: dict, image_root: str, json_file) -> None:
    where = f"{json_file}: image id {image['id']}"
    path = os.path.join(image_root, image["file_name"])
    if not os.path.isfile(path):
        raise DentalError(
            f"{where}: {path} not found; restore the image or remove it (and its annotations) "
            "from the JSON"
        )
    try:
        height, width = decode_check(path)
    except DentalError as e:
        raise DentalError(f"{where}: {e}") from e
    expected = (int(image["height"]), int(image["width"]))
    if (height, width) != expected:
        hint = (
            " (width and height swapped: often an EXIF rotation the annotation tool ignored)"
            if (width, height) == expected
            else ""
        )
        raise DentalError(
            f"{where}: {path} is {height}x{width} (HxW) but the JSON says "
            f"{expected[0]}x{expected[1]}{hint}; fix 'height'/'width' or re-export the dataset"
        )


def check_image_files(images: list[dict], image_root: str, json_file, label: str) -> None:
    """Decodes every image of a COCO file (in threads) and compares its size with the file's.

    Args:
        images (list[dict]): the file's `images` records (`id`, `file_name`, `height`, `width`).
        image_root (str): the folder their `file_name`s are relative to.
        json_file (str): the COCO file, for messages.
        label (str): names the file on the progress bar.

    Raises:
        DentalError: naming the first image that is missing, undecodable or of another size.
    """
    check = functools.partial(_check_image_file, image_root=image_root, json_file=json_file)
    # PIL releases the GIL while decoding, so threads overlap the decodes.
    executor = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        results = executor.map(check, images)
        for _ in tqdm(
            results,
            total=len(images),
            desc=f"checking {label}",
            disable=None,
        ):
            pass
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
