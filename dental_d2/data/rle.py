"""Checking COCO RLE masks (as CVAT and other tools export them) before pycocotools decodes them.

pycocotools trusts an RLE's run lengths: runs that add up to more pixels than its `size` make
it write past the end of the mask. So the runs are read and counted here first.
"""

from pycocotools import mask as mask_util

from ..errors import DentalError

__all__ = ["check_rle", "rle_string_counts"]

# Characters of a compressed COCO RLE string: 6 bits each, offset by 48 ("0".."o").
_CHAR_MIN, _CHAR_MAX = 48, 48 + 63


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rle_string_counts(counts: str) -> list[int] | None:
    """Decodes the run lengths of a compressed COCO RLE string.

    Each run is a little-endian series of 5-bit groups, one character each (value + 48), bit 6
    set on all but the last group, the last group's bit 5 the sign; from the third run on, the
    run two places before is added.

    Args:
        counts (str): the RLE's `counts`, e.g. "PPYo1".

    Returns:
        list[int] | None: the runs (first a run of 0s), or None when the string is malformed.
    """
    runs, value, shift = [], 0, 0
    for char in counts:
        code = ord(char)
        if not _CHAR_MIN <= code <= _CHAR_MAX:
            return None
        code -= _CHAR_MIN
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return runs if shift == 0 else None


def check_rle(segmentation: dict, height: int, width: int, where: str) -> dict:
    """Checks an RLE segmentation against its image and returns it compressed.

    Args:
        segmentation (dict): `{"size": [h, w], "counts": str or list[int]}`.
        height (int): the image's height.
        width (int): the image's width.
        where (str): names the annotation in errors, e.g. "<file>: annotation id 3 (image id 1)".

    Returns:
        dict: the RLE with `counts` compressed (a str, or bytes from pycocotools).

    Raises:
        DentalError: `size` is not the image's, or the runs do not cover exactly its pixels.
    """
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
        raise DentalError(
            f"{where} has an RLE segmentation without 'counts' and a [height, width] 'size'; fix "
            "or delete the annotation"
        )
    if list(size) != [height, width]:
        raise DentalError(
            f"{where} has an RLE mask of size {size} but its image is {[height, width]} (HxW); "
            "fix or delete the annotation"
        )
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
    elif isinstance(counts, list) and all(_is_count(v) for v in counts):
        runs = counts
    else:
        runs = None
    if runs is None or any(r < 0 for r in runs) or sum(runs) != height * width:
        raise DentalError(
            f"{where} has a malformed RLE mask: its 'counts' do not describe the "
            f"{height}x{width} pixels of its 'size'; fix or delete the annotation"
        )
    if isinstance(counts, list):
        # Uncompressed RLE: compress it so detectron2 can decode it like the rest.
        segmentation = mask_util.frPyObjects(segmentation, height, width)
    return segmentation
