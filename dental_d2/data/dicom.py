"""Reading DICOM radiographs and intraoral camera images with pydicom, as a viewer shows them.

`dental_d2.data.image_io` hands every DICOM file (or upload) to `read_dicom`, so training,
prediction and the service read them alike. Only the pixels and their display attributes are
used: nothing of the header (patient, study, device) leaves this module.
"""

import io
import os

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from ..errors import DentalError
from .pixels import MAX_IMAGE_PIXELS, ImageTooLargeError, one_line, to_uint8

__all__ = ["DICOM_SUFFIXES", "dicom_size", "has_dicom_preamble", "is_dicom_file", "read_dicom"]

# File name endings of DICOM files (compared case-insensitively); others are recognised by the
# preamble (see `has_dicom_preamble`).
DICOM_SUFFIXES = (".dcm", ".dicom")
# A DICOM file (Part 10) starts with a 128-byte preamble, then these four bytes.
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
# Photometric interpretations read as one grey channel.
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Errors pydicom (and its decoder plug-ins) raise for pixel data they cannot decode: a
# transfer syntax without a decoder, truncated data, or a missing pixel description element.
_DECODE_ERRORS = (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError, OSError)


def has_dicom_preamble(head: bytes) -> bool:
    """Whether the first 132 bytes of a file are a DICOM preamble ("DICM" at offset 128)."""
    return head[_MAGIC_OFFSET : _MAGIC_OFFSET + len(_MAGIC)] == _MAGIC


def is_dicom_file(path) -> bool:
    """Whether `path` is a DICOM file: named `.dcm`/`.dicom`, or starting with the preamble.

    Args:
        path (str or os.PathLike): a file; a missing or unreadable one is not DICOM.
    """
    if os.fspath(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return has_dicom_preamble(f.read(_MAGIC_OFFSET + len(_MAGIC)))
    except OSError:
        return False


def _read_dataset(source, name, stop_before_pixels: bool = False) -> pydicom.Dataset:
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as e:
        raise DentalError(f"{name}: image file not found; restore it or remove it") from e
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        # pydicom's messages may quote header bytes, so none of them is repeated here.
        raise DentalError(
            f"{name}: not a readable DICOM file ({type(e).__name__}); export the image again "
            "from the imaging software"
        ) from e


def _transfer_syntax(dataset: pydicom.Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return f"transfer syntax {uid.name} ({uid})" if uid else "no transfer syntax"


def _check_single_frame(dataset: pydicom.Dataset, name) -> tuple[int, int]:
    """(height, width) of a dataset's only frame."""
    if "PixelData" not in dataset and "Rows" not in dataset:
        raise DentalError(
            f"{name}: the DICOM file holds no pixel data (a report, a study index, or a truncated "
            "file); pass an image, or export it again"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DentalError(
            f"{name}: a multi-frame DICOM file ({frames} frames) is not supported; export each "
            "frame as its own image"
        )
    try:
        return int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise DentalError(
            f"{name}: the DICOM file has no valid Rows/Columns; export the image again"
        ) from e


def dicom_size(source, name=None) -> tuple[int, int]:
    """Returns (height, width) of a single-frame DICOM image, reading only its header.

    Args:
        source (str, os.PathLike or bytes): the file, or its bytes.
        name (str or None): what messages call it; None uses `source`.

    Raises:
        DentalError: not DICOM, no image, or several frames.
    """
    name = source if name is None else name
    return _check_single_frame(_read_dataset(source, name, stop_before_pixels=True), name)


def _display_range(dataset: pydicom.Dataset, modality: np.ndarray) -> tuple[float, float] | None:
    """The least and the greatest value the file's VOI transform gives (shown black and
    white), or None when the file has no VOI LUT and no window (or they give one value).

    pydicom applies the transform to probe inputs, so its rules (VOI LUT before window, LINEAR,
    LINEAR_EXACT, SIGMOID) stay in one place: the whole input domain of a VOI LUT, or values
    far below and above the image for a window (whose output is clipped to its range).
    """
    if dataset.get("VOILUTSequence"):
        descriptor = dataset.VOILUTSequence[0].LUTDescriptor
        entries = int(descriptor[0]) or 65536  # 0 stands for 2**16 entries
        probe = np.arange(int(descriptor[1]), int(descriptor[1]) + entries)
    elif "WindowCenter" in dataset:
        low, high = float(modality.min()), float(modality.max())
        span = max(high - low, 1.0)
        probe = np.array([low - 1e3 * span, high + 1e3 * span])
    else:
        return None
    shown = apply_voi_lut(probe, dataset)
    dark, bright = float(shown.min()), float(shown.max())
    return None if dark == bright else (dark, bright)


def _grayscale_to_uint8(dataset: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    modality = apply_modality_lut(pixels, dataset)
    display = _display_range(dataset, modality)
    if display is not None:
        dark, bright = display
        shown = apply_voi_lut(modality, dataset).astype(np.float64)
        gray = np.clip(np.rint((shown - dark) * (255.0 / (bright - dark))), 0, 255)
        gray = gray.astype(np.uint8)
    elif modality.dtype == np.uint8:
        gray = modality
    else:
        # No window in the file: the image's own range, as for 16-bit PNG and TIFF files.
        gray = to_uint8(modality)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        # MONOCHROME1 stores the brightest values as the darkest pixels.
        gray = 255 - gray
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_dicom(source, name=None, max_pixels: int | None = None) -> np.ndarray:
    """Decodes a single-frame DICOM image to HxWx3 RGB uint8, as a DICOM viewer displays it.

    - Grayscale (MONOCHROME1/2): the Modality LUT (rescale slope/intercept), then the VOI LUT
      or the window centre/width when the file has one, mapped onto 0..255; without one, the
      image's own range is stretched (see `to_uint8`). MONOCHROME1 is inverted.
    - Colour (RGB, YBR from JPEG, PALETTE COLOR): RGB, as pydicom converts it.
    - Compressed pixel data is decoded by pydicom's plug-ins (pylibjpeg for JPEG and
      JPEG 2000, pydicom itself for RLE).

    Args:
        source (str, os.PathLike or bytes): the file, or its bytes (an upload).
        name (str or None): what messages call it; None uses `source`.
        max_pixels (int or None): refuse images with more pixels, before decoding them; None
            for `MAX_IMAGE_PIXELS`.

    Returns:
        np.ndarray: HxWx3 RGB uint8.

    Raises:
        DentalError: not DICOM, no image, several frames, or pixel data pydicom cannot decode
            (the message names the transfer syntax).
        ImageTooLargeError: more than `max_pixels` pixels.
    """
    name = source if name is None else name
    dataset = _read_dataset(source, name)
    height, width = _check_single_frame(dataset, name)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if height * width > limit:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit "
            f"of {limit / 1e6:.1f}; downscale the image"
        )
    try:
        pixels = dataset.pixel_array
        photometric = str(dataset.PhotometricInterpretation)
        if photometric in _GRAYSCALE:
            return _grayscale_to_uint8(dataset, pixels)
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
    except _DECODE_ERRORS as e:
        raise DentalError(
            f"{name}: DICOM pixel data cannot be decoded with {_transfer_syntax(dataset)} "
            f"({one_line(e)}); export the image again uncompressed or as JPEG"
        ) from e
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DentalError(
            f"{name}: DICOM image with photometric interpretation {photometric} and shape "
            f"{pixels.shape} is not supported; export it as grayscale or RGB"
        )
    if pixels.dtype != np.uint8:
        # One range for the three channels, so that colours keep their balance.
        pixels = to_uint8(pixels)
    return np.ascontiguousarray(pixels)
