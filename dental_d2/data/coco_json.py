"""Reading COCO JSON files, datasets and detection results, with one set of checks and messages.

Every reader of the project goes through here: the Roboflow loader (`roboflow.py`), the
offline evaluation (`evaluation/offline.py`), drawing saved results
(`evaluation/saved_results.py`), cross-validation splits and label merging. A broken file gets
one line naming the file, the record and the fix, whichever tool read it.
"""

import json
import math
import numbers
import os

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ..errors import DentalError

# The fix for a broken annotation file, unless a tool knows a better one.
REEXPORT = "re-export the dataset from Roboflow in 'COCO Segmentation' format"
# A polygon point farther outside its image than this share of the image's width or height is
# not a rounding slip (those boxes are clipped) but coordinates meant for another image.
FAR_OUTSIDE = 0.1


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_id(value) -> bool:
    """A COCO id: an int (not a bool) or a str."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def is_box(value) -> bool:
    """An [x, y, w, h] list of four numbers."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 4
        and all(isinstance(v, numbers.Real) for v in value)
    )


def read_json(path, fix: str):
    """Parses a JSON file.

    Args:
        path (str or os.PathLike): the file.
        fix (str): what the user should do, ending each message.

    Raises:
        DentalError: the file is missing, unreadable, empty or not JSON.
    """
    if not os.path.isfile(path):
        raise DentalError(f"{path}: no such file; {fix}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DentalError(f"{path}: cannot be read ({e}); {fix}") from e
    if not raw.strip():
        raise DentalError(f"{path}: the file is empty; {fix}")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno} column {e.colno}: {e.msg}" if hasattr(e, "lineno") else str(e)
        raise DentalError(f"{path}: not valid JSON ({where}); {fix}") from e


def _check_categories(categories: list, path, fix: str) -> None:
    seen = set()
    for index, category in enumerate(categories):
        if not (
            isinstance(category, dict)
            and is_id(category.get("id"))
            and isinstance(category.get("name"), str)
        ):
            raise DentalError(f"{path}: category #{index} needs an 'id' and a 'name' string; {fix}")
        if category["id"] in seen:
            raise DentalError(
                f"{path}: category id {category['id']} is listed twice; give each category its "
                f"own id, or {fix}"
            )
        seen.add(category["id"])


def read_coco_json(path, fix: str = REEXPORT) -> dict:
    """Parses a COCO dataset file and checks its top level and its categories.

    Args:
        path (str or os.PathLike): the annotation file.
        fix (str): what the user should do, ending each message.

    Returns:
        dict: the parsed file, with `images`, `annotations` and `categories` lists; each
        category has an id and a name, and no id is listed twice.

    Raises:
        DentalError: the file is missing, empty, not JSON, or not a COCO dataset.
    """
    coco = read_json(path, fix)
    if not isinstance(coco, dict):
        raise DentalError(f"{path}: top level is not a JSON object; {fix}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DentalError(f"{path}: has no '{key}' list; {fix}")
    if not coco["categories"]:
        raise DentalError(f"{path}: lists no categories; {fix}")
    _check_categories(coco["categories"], path, fix)
    return coco


def read_coco_results(path, fix: str) -> list[dict]:
    """Parses a COCO results file: a list of detections, as detectron2's COCOEvaluator writes.

    Each detection needs `image_id`, `category_id`, a numeric `score`, and an [x, y, w, h]
    `bbox` or a `segmentation` (segm-only results of other tools are accepted; their box is
    the mask's, see `box_from_segmentation`).

    Args:
        path (str or os.PathLike): the results file.
        fix (str): what the user should do, ending each message.

    Raises:
        DentalError: the file is missing or broken, or a detection lacks a field.
    """
    results = read_json(path, fix)
    if not isinstance(results, list):
        raise DentalError(
            f"{path}: a COCO results file is a JSON list of detections, not a "
            f"{type(results).__name__}; {fix}"
        )
    for index, result in enumerate(results):
        record = f"{path}: result {index}"
        if not isinstance(result, dict):
            raise DentalError(f"{record} is not an object; {fix}")
        if not (is_id(result.get("image_id")) and is_id(result.get("category_id"))):
            raise DentalError(f"{record} has no 'image_id' or 'category_id'; {fix}")
        if not is_number(result.get("score")):
            raise DentalError(f"{record} has no numeric 'score'; {fix}")
        if not is_box(result.get("bbox")) and "segmentation" not in result:
            raise DentalError(f"{record} has neither a [x, y, w, h] bbox nor a segmentation; {fix}")
    return results


def check_polygons(segmentation: list, image: dict, where: str) -> list[list[float]]:
    """Checks polygons (a list of flat x,y lists, or one flat list) against their image.

    Args:
        segmentation (list): the annotation's `segmentation`.
        image (dict): its image record (`width`, `height`).
        where (str): names the annotation in errors.

    Returns:
        list[list[float]]: the polygons, as lists of floats.

    Raises:
        DentalError: a coordinate is not a number, a polygon has an odd count, or a point lies
            far outside the image (`FAR_OUTSIDE`).
    """
    # Some tools write one polygon as a flat list instead of a list of polygons.
    if segmentation and all(not isinstance(v, list) for v in segmentation):
        segmentation = [segmentation]
    polygons = []
    for polygon in segmentation:
        if not isinstance(polygon, list):
            raise DentalError(
                f"{where} has a polygon that is not a list of coordinates ({polygon!r}); fix or "
                "delete the annotation"
            )
        for value in polygon:
            if not is_number(value):
                raise DentalError(
                    f"{where} has a non-numeric polygon coordinate {value!r}; fix or delete the "
                    "annotation"
                )
        if len(polygon) % 2:
            raise DentalError(
                f"{where} has a polygon with an odd number of coordinates ({len(polygon)}); fix "
                "or delete the annotation"
            )
        polygons.append([float(v) for v in polygon])
    _check_inside(polygons, image, where)
    return polygons


def _check_inside(polygons: list[list[float]], image: dict, where: str) -> None:
    width, height = image["width"], image["height"]
    margin_x, margin_y = FAR_OUTSIDE * width, FAR_OUTSIDE * height
    for polygon in polygons:
        for x, y in zip(polygon[0::2], polygon[1::2]):
            if -margin_x <= x <= width + margin_x and -margin_y <= y <= height + margin_y:
                continue
            raise DentalError(
                f"{where} has the polygon point ({x:g}, {y:g}) far outside its {width}x{height} "
                f"(WxH) image; were the coordinates drawn on another image size? Fix or delete "
                "the annotation"
            )


def segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """Why pycocotools cannot rasterise `segmentation` on a `height` x `width` image, or None."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            return "an RLE segmentation needs 'counts' and 'size'"
        if list(segmentation["size"]) != [height, width]:
            return f"its RLE size {segmentation['size']} is not the image's [{height}, {width}]"
        return None
    if not isinstance(segmentation, list) or not segmentation:
        return "it has no segmentation"
    for polygon in segmentation:
        if (
            not isinstance(polygon, list)
            or len(polygon) < 6
            or len(polygon) % 2
            or not all(isinstance(v, numbers.Real) for v in polygon)
        ):
            return "a polygon is not a flat list of at least 3 x,y points"
    return None


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE (`counts` a str) for polygons or an RLE (compressed or not).

    Args:
        segmentation (list | dict): checked with `segmentation_problem` first.
        height (int): the image's height.
        width (int): the image's width.
    """
    # pycocotools' annToRLE reads the image size from the COCO object's image records.
    coco = COCO()
    coco.imgs[0] = {"height": height, "width": width}
    rle = coco.annToRLE({"image_id": 0, "segmentation": segmentation})
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def box_from_segmentation(segmentation) -> list[float]:
    """The [x, y, w, h] box of an RLE (its pixels; compressed or not) or of polygons (their
    points' extent)."""
    if isinstance(segmentation, dict):
        rle = segmentation_to_rle(segmentation, *segmentation["size"])
        return [
            float(v) for v in mask_util.toBbox({**rle, "counts": rle["counts"].encode("ascii")})
        ]
    points = np.concatenate([np.asarray(p, dtype=np.float64) for p in segmentation]).reshape(-1, 2)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
