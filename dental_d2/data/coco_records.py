"""Checks of the image and annotation records of a COCO dataset, one message per broken record.

Every reader of annotation files checks its records here: the COCO and YOLO loaders
(`roboflow.split_from_coco`), the offline evaluation's ground truth, cross-validation (through
the loader) and `merge.merge_labelled`. A record that one of them refuses is refused by all,
with the same line.
"""

import os

from ..errors import DentalError
from .categories import thing_categories
from .coco_json import is_id, is_number

__all__ = ["checked_annotations", "format_listed", "index_images", "read_thing_categories_of"]

# At most this many ids or names are listed in one line.
MAX_LISTED = 10


def format_listed(items: list, limit: int = MAX_LISTED) -> str:
    """The first `limit` items and how many more there are, e.g. "3, 5, 8 and 4 more".

    Args:
        items (list): ids or names.
        limit (int): how many are listed.
    """
    listed = ", ".join(str(i) for i in items[:limit])
    if len(items) > limit:
        listed += f" and {len(items) - limit} more"
    return listed


def read_thing_categories_of(coco: dict, json_file) -> list[dict]:
    """The real classes of a parsed COCO file (Roboflow's superclass dropped), by id.

    Args:
        coco (dict): from `coco_json.read_coco_json`.
        json_file (str or os.PathLike): the file, named by messages.

    Raises:
        DentalError: two classes with the same name.
    """
    annotated = {
        a.get("category_id")
        for a in coco["annotations"]
        if isinstance(a, dict) and is_id(a.get("category_id"))
    }
    categories = thing_categories(coco["categories"], annotated)
    ids_by_name = {}
    for category in categories:
        ids_by_name.setdefault(category["name"], []).append(category["id"])
    for name, ids in ids_by_name.items():
        if len(ids) > 1:
            raise DentalError(
                f"{json_file}: class name {name!r} is used by category ids "
                f"{', '.join(str(i) for i in ids)}; merge or rename them in Roboflow and re-export"
            )
    return categories


def _check_file_name(file_name: str, where: str) -> None:
    # An annotation file must not make the tools read (or overwrite beside) files outside the
    # export: only relative paths that stay inside the split's folder are accepted.
    normalized = os.path.normpath(file_name.replace("\\", "/"))
    if os.path.isabs(normalized) or normalized == ".." or normalized.startswith("../"):
        raise DentalError(
            f"{where} has file_name {file_name!r}, which leaves the split's folder; file names "
            "must be relative paths inside it: fix the record or re-export"
        )


def _check_new_id(record, index: int, kind: str, seen, json_file):
    """The record's id, checked to be an id and not seen before in this file.

    Args:
        record: the `index`-th entry of the file's `images` or `annotations`.
        index (int): its place in the list, for messages.
        kind (str): "image" or "annotation".
        seen (Container): the ids already read.
        json_file (str or os.PathLike): the file, named by messages.
    """
    if not isinstance(record, dict) or not is_id(record.get("id")):
        raise DentalError(f"{json_file}: {kind} #{index} has no 'id'; fix the record or re-export")
    if record["id"] in seen:
        raise DentalError(
            f"{json_file}: {kind} id {record['id']} is listed twice; give each {kind} its own id "
            "or re-export"
        )
    return record["id"]


def index_images(coco: dict, json_file) -> dict:
    """Image id -> image record, each checked: a new id, a relative `file_name` inside the
    split's folder, positive integer `height` and `width`.

    Args:
        coco (dict): a parsed COCO file.
        json_file (str or os.PathLike): the file, named by messages.
    """
    images = {}
    for index, image in enumerate(coco["images"]):
        image_id = _check_new_id(image, index, "image", images, json_file)
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise DentalError(
                f"{json_file}: image id {image_id} has no 'file_name'; fix the record or re-export"
            )
        _check_file_name(image["file_name"], f"{json_file}: image id {image_id}")
        for key in ("height", "width"):
            value = image.get(key)
            if not is_number(value) or value <= 0 or int(value) != value:
                raise DentalError(
                    f"{json_file}: image id {image_id} has '{key}' {value!r}, not a positive "
                    "integer; fix the record or re-export"
                )
        images[image_id] = image
    return images


def _annotation_image(anno: dict, images: dict, category_ids, json_file) -> tuple[dict, str]:
    """The annotation's image and its "<file>: annotation id A (image id I)" for messages,
    after checking that its image is listed, its class is one of `category_ids` and its
    `iscrowd` is 0 or 1.

    Args:
        anno (dict): the annotation, its id checked (`_check_new_id`).
        images (dict): from `index_images`.
        category_ids (Collection): the ids of the classes (`read_thing_categories_of`).
        json_file (str or os.PathLike): the file, named by messages.
    """
    image = images.get(anno.get("image_id"))
    if image is None:
        raise DentalError(
            f"{json_file}: annotation id {anno['id']} points at image id "
            f"{anno.get('image_id')!r}, which is not in 'images'; delete the annotation or "
            "re-export"
        )
    where = f"{json_file}: annotation id {anno['id']} (image id {image['id']})"
    category_id = anno.get("category_id")
    if category_id not in category_ids:
        known = ", ".join(str(i) for i in category_ids)
        raise DentalError(
            f"{where} has category_id {category_id!r}, which is not a class in 'categories' "
            f"(ids {known}); fix the annotation or re-export"
        )
    if anno.get("iscrowd", 0) not in (0, 1):
        raise DentalError(f"{where} has iscrowd {anno.get('iscrowd')!r}; use 0 or 1")
    return image, where


def checked_annotations(coco: dict, images: dict, category_ids, json_file):
    """Yields (annotation, its image, "<file>: annotation id A (image id I)") for each
    annotation of `coco`, checked by `_check_new_id` and `_annotation_image`.

    Args:
        coco (dict): a parsed COCO file.
        images (dict): from `index_images`.
        category_ids (Collection): the ids of the classes.
        json_file (str or os.PathLike): the file, named by messages.
    """
    seen = set()
    for index, anno in enumerate(coco["annotations"]):
        seen.add(_check_new_id(anno, index, "annotation", seen, json_file))
        image, where = _annotation_image(anno, images, category_ids, json_file)
        yield anno, image, where
