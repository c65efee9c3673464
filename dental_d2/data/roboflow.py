"""Loading and validating Roboflow "COCO Segmentation" exports as detectron2 dataset dicts."""

import copy
import logging
import os
from dataclasses import dataclass, field

import cachetools
from detectron2.structures import BoxMode

from ..errors import DentalError
from .categories import contiguous_id_map
from .coco_json import REEXPORT, box_from_segmentation, check_polygons, is_number, read_coco_json
from .coco_records import (
    checked_annotations,
    format_listed,
    index_images,
    read_thing_categories_of,
)
from .image_io import check_image_files
from .rle import check_rle

__all__ = [
    "ANNOTATION_FILE",
    "RoboflowSplit",
    "load_roboflow_json",
    "load_roboflow_split",
    "read_thing_categories",
]

logger = logging.getLogger(__name__)

# The file name Roboflow gives the annotations of each split folder.
ANNOTATION_FILE = "_annotations.coco.json"

# Loaded splits kept in-process, keyed by file identity, so repeated DatasetCatalog.get calls
# don't decode every image again; the least recently used go first.
_CACHE_SIZE = 16

# Repair kinds, each logged once per file as "<file>: <text> (<ids>)".
_DROPPED_SHORT_POLYGONS = "dropped {n} polygons with fewer than 3 points (annotation ids {ids})"
_DROPPED_DEGENERATE = (
    "dropped {n} annotations whose every polygon has fewer than 3 points (annotation ids {ids})"
)
_DROPPED_NO_SEGMENTATION = "dropped {n} annotations without a segmentation (annotation ids {ids})"
_CLIPPED_BOXES = "clipped {n} boxes that extended outside their image (annotation ids {ids})"
_DROPPED_EMPTY_BOXES = (
    "dropped {n} annotations whose box is empty inside the image (annotation ids {ids})"
)
_COMPUTED_BOXES = "computed {n} missing boxes from the masks (annotation ids {ids})"
_REPAIR_ORDER = (
    _DROPPED_SHORT_POLYGONS,
    _DROPPED_DEGENERATE,
    _DROPPED_NO_SEGMENTATION,
    _CLIPPED_BOXES,
    _DROPPED_EMPTY_BOXES,
    _COMPUTED_BOXES,
)
# A box may poke out of the image by this many pixels (rounding in exports) before it counts.
_CLIP_TOLERANCE = 1e-3


@dataclass
class RoboflowSplit:
    """One split of an export (Roboflow COCO or YOLO), loaded and validated.

    Attributes:
        json_file (str): the annotation file (a YOLO export's data.yaml).
        image_root (str): the folder the images' `file_name`s are relative to.
        categories (list[dict]): the real classes (Roboflow's superclass dropped), by id.
        dataset_dicts (list[dict]): detectron2 dataset dicts, one per image, in JSON order.
        repairs (list[str]): one line per kind of repair made, e.g. "dropped 2 polygons ...".
    """

    json_file: str
    image_root: str
    categories: list[dict]
    dataset_dicts: list[dict] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def thing_classes(self) -> list[str]:
        """Class names in contiguous-id order."""
        return [c["name"] for c in self.categories]

    @property
    def id_map(self) -> dict[int, int]:
        """Dataset category id -> contiguous id."""
        return contiguous_id_map(self.categories)


def short_name(json_file) -> str:
    """Returns "<split>/<file>" for log lines, e.g. "train/_annotations.coco.json"."""
    path = os.path.normpath(str(json_file))
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def read_thing_categories(json_file) -> list[dict]:
    """Returns the real classes of a COCO file (Roboflow's superclass dropped), by id.

    Args:
        json_file (str or os.PathLike): the annotation file.

    Raises:
        DentalError: see `read_coco_json`; also two classes with the same name.
    """
    return read_thing_categories_of(read_coco_json(json_file), json_file)


def _clip_box(box: list[float], width: int, height: int) -> list[float]:
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[0] + box[2], float(width)), min(box[1] + box[3], float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _segmentation(anno: dict, image: dict, where: str, repairs: dict):
    """The checked segmentation (polygons or RLE), or None when the annotation is dropped."""
    segmentation = anno.get("segmentation")
    if isinstance(segmentation, dict):
        return check_rle(segmentation, image["height"], image["width"], where)
    if segmentation in (None, []):
        repairs[_DROPPED_NO_SEGMENTATION].append(anno["id"])
        return None
    if not isinstance(segmentation, list):
        raise DentalError(
            f"{where} has a segmentation that is neither polygons nor RLE "
            f"({type(segmentation).__name__}); fix or delete the annotation"
        )
    polygons = check_polygons(segmentation, image, where)
    kept = [p for p in polygons if len(p) >= 6]
    if len(kept) < len(polygons):
        repairs[_DROPPED_SHORT_POLYGONS if kept else _DROPPED_DEGENERATE].append(anno["id"])
    return kept or None


def _box(anno: dict, segmentation, image: dict, where: str, repairs: dict):
    """The box clipped to the image (computed from the mask when missing), or None when the
    clipped box is empty and the annotation is dropped."""
    box = anno.get("bbox")
    if box is None:
        box = box_from_segmentation(segmentation)
        repairs[_COMPUTED_BOXES].append(anno["id"])
    elif not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise DentalError(f"{where} has bbox {box!r}, not 4 numbers; fix or delete it")
    box = [float(v) for v in box]
    clipped = _clip_box(box, image["width"], image["height"])
    if clipped[2] <= 0 or clipped[3] <= 0:
        repairs[_DROPPED_EMPTY_BOXES].append(anno["id"])
        return None
    if any(abs(a - b) > _CLIP_TOLERANCE for a, b in zip(box, clipped)):
        repairs[_CLIPPED_BOXES].append(anno["id"])
    return clipped


def _convert_annotations(coco: dict, images: dict, id_map: dict, json_file, repairs: dict):
    per_image = {image_id: [] for image_id in images}
    for anno, image, where in checked_annotations(coco, images, id_map, json_file):
        segmentation = _segmentation(anno, image, where, repairs)
        box = _box(anno, segmentation, image, where, repairs) if segmentation else None
        if box is None:
            continue
        per_image[image["id"]].append(
            {
                "bbox": box,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[anno["category_id"]],
                "segmentation": segmentation,
                "iscrowd": int(anno.get("iscrowd", 0)),
            }
        )
    return per_image


def _check_some_masks(num_annotations: int, repairs: dict, source: str, export_format: str):
    missing = len(repairs[_DROPPED_NO_SEGMENTATION])
    if num_annotations and missing == num_annotations:
        raise DentalError(
            f"{source}: none of the {missing} annotations has a segmentation, as in an "
            f"object-detection export; export the dataset in {export_format} format"
        )


def _cache_key(json_file: str, image_root: str, check_images: bool) -> tuple:
    stat = os.stat(json_file)
    return (json_file, stat.st_mtime_ns, stat.st_size, image_root, check_images)


def _read_split(json_file: str, image_root: str, check_images: bool) -> RoboflowSplit:
    coco = read_coco_json(json_file)
    if not coco["images"]:
        raise DentalError(f"{json_file}: lists no images; {REEXPORT}")
    categories = read_thing_categories_of(coco, json_file)
    return split_from_coco(coco, categories, json_file, image_root, check_images)


def split_from_coco(
    coco: dict,
    categories: list[dict],
    source: str,
    image_root: str,
    check_images: bool,
    label: str | None = None,
    notes: tuple[str, ...] = (),
    export_format: str = "'COCO Segmentation'",
) -> RoboflowSplit:
    """Validates and repairs a COCO dataset held in memory and makes its detectron2 records.

    The one path from annotations to records: the Roboflow loader reads a JSON file into it,
    the YOLO loader (`dental_d2.data.yolo`) its label files, so both give the same records,
    checks and repair lines.

    Args:
        coco (dict): with `images` (`id`, `file_name` relative to `image_root`, `height`,
            `width`) and `annotations` (`id`, `image_id`, `category_id`, `segmentation`,
            optional `bbox`).
        categories (list[dict]): the classes (`id`, `name`), in contiguous-id order.
        source (str): the annotation file, named by messages.
        image_root (str): the folder of the images.
        check_images (bool): also decode every image and compare its size with the record.
        label (str or None): what log lines call the split; None for "<split>/<file>".
        notes (tuple[str, ...]): lines the caller found (before the repair lines).
        export_format (str): the format to export in when no annotation has a mask.

    Raises:
        DentalError: an unusable record; the message names `source` and the record.
    """
    images = index_images(coco, source)
    repairs = {kind: [] for kind in _REPAIR_ORDER}
    per_image = _convert_annotations(coco, images, contiguous_id_map(categories), source, repairs)
    _check_some_masks(len(coco["annotations"]), repairs, source, export_format)
    name = label or short_name(source)
    if check_images:
        check_image_files(list(images.values()), image_root, source, name)
    dataset_dicts = [
        {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": image_id,
            "height": int(image["height"]),
            "width": int(image["width"]),
            "annotations": per_image[image_id],
        }
        for image_id, image in images.items()
    ]
    repair_lines = list(notes) + [
        kind.format(n=len(ids), ids=format_listed(ids)) for kind, ids in repairs.items() if ids
    ]
    for line in repair_lines:
        logger.warning(f"{name}: {line}")
    num_annotations = sum(len(d["annotations"]) for d in dataset_dicts)
    logger.info(f"Loaded {len(dataset_dicts)} images, {num_annotations} annotations from {name}")
    return RoboflowSplit(source, image_root, categories, dataset_dicts, repair_lines)


@cachetools.cached(cachetools.LRUCache(_CACHE_SIZE), key=lambda key, build: key)
def cached_split(key: tuple, build) -> RoboflowSplit:
    """Returns the split cached under `key`, or builds, caches and returns it; a split that
    fails to load is not cached.

    Args:
        key (tuple): identifies the files read (paths with modification times and sizes).
        build (Callable[[], RoboflowSplit]): loads the split.
    """
    return build()


def load_roboflow_split(json_file, image_root=None, check_images: bool = True) -> RoboflowSplit:
    """Loads and validates one split, or returns it from the in-process cache.

    Unusable data raises `DentalError`. Repairable problems are repaired and logged, one line per
    kind: polygons with fewer than 3 points are dropped (and annotations left with none), boxes
    are clipped to the image (and annotations whose box is then empty dropped), missing boxes are
    computed from the masks, annotations without a segmentation are dropped. Images without
    annotations are kept (as negatives).

    The result is cached per (file, modification time); treat it as read-only, or use
    `load_roboflow_json`, which returns a copy.

    Args:
        json_file (str or os.PathLike): the split's `_annotations.coco.json`.
        image_root (str or os.PathLike): folder of the images; defaults to the JSON's folder.
        check_images (bool): also decode every image and compare its size with the JSON.

    Returns:
        RoboflowSplit: the split.

    Raises:
        DentalError: the file or an image is unusable; the message names the file, the record
            and the fix.
    """
    json_file = os.path.abspath(os.fspath(json_file))
    image_root = os.path.abspath(
        os.fspath(image_root) if image_root is not None else os.path.dirname(json_file)
    )
    if not os.path.isfile(json_file):
        raise DentalError(
            f"{json_file}: annotation file not found; check the data root or re-export the dataset"
        )
    key = _cache_key(json_file, image_root, check_images)
    return cached_split(key, lambda: _read_split(json_file, image_root, check_images))


def load_roboflow_json(json_file, image_root=None, check_images: bool = True) -> list[dict]:
    """Loads one split of a Roboflow COCO Segmentation export as detectron2 dataset dicts.

    Each dict has `file_name`, `image_id` (the JSON id), `height`, `width` and `annotations`
    (`bbox` in XYWH_ABS, `bbox_mode`, contiguous `category_id`, `segmentation` as polygons or
    RLE, `iscrowd`). See `load_roboflow_split` for the checks and repairs.

    Args:
        json_file (str or os.PathLike): the split's `_annotations.coco.json`.
        image_root (str or os.PathLike): folder of the images; defaults to the JSON's folder.
        check_images (bool): also decode every image and compare its size with the JSON.

    Returns:
        list[dict]: a fresh copy, safe to modify.

    Raises:
        DentalError: the file or an image is unusable.
    """
    split = load_roboflow_split(json_file, image_root, check_images)
    return copy.deepcopy(split.dataset_dicts)
