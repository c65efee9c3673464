"""Adding images labelled in an annotation tool (a COCO file) to one split of an export."""

import logging
import os

from ..errors import DentalError
from ..file_io import write_bytes, write_json
from .coco_json import read_coco_json
from .coco_records import checked_annotations, index_images, read_thing_categories_of
from .roboflow import ANNOTATION_FILE

__all__ = ["merge_labelled"]

logger = logging.getLogger(__name__)


def _renumbered(corrected: dict, path: str, category_ids: dict, first_image: int, first_anno: int):
    """The corrected images and annotations with fresh ids and the split's category ids, the
    records checked as training's loader checks them."""
    images = index_images(corrected, path)
    names = {c["id"]: c["name"] for c in read_thing_categories_of(corrected, path)}
    image_ids = {image_id: first_image + offset for offset, image_id in enumerate(images)}
    annotations = []
    for annotation, _, where in checked_annotations(corrected, images, names, path):
        name = names[annotation["category_id"]]
        if name not in category_ids:
            raise DentalError(
                f"{where} has class {name!r}, which the export does not have "
                f"({', '.join(sorted(category_ids))}); fix it in the annotation tool"
            )
        annotations.append(
            dict(
                annotation,
                id=first_anno + len(annotations),
                image_id=image_ids[annotation["image_id"]],
                category_id=category_ids[name],
            )
        )
    renumbered = [dict(image, id=image_ids[image_id]) for image_id, image in images.items()]
    return renumbered, annotations


def merge_labelled(corrected_json: str, image_dir: str, split_dir: str) -> int:
    """Adds corrected images and their annotations to one split folder of an export.

    The images are copied next to the split's `_annotations.coco.json`, which gets their
    records and annotations with fresh ids; classes are matched by name.

    Args:
        corrected_json (str): the COCO file exported by the annotation tool.
        image_dir (str): the folder its `file_name`s are relative to.
        split_dir (str): the export's split folder to add to, e.g. `export/train`.

    Returns:
        int: the number of images added.

    Raises:
        DentalError: unreadable files, a broken record, an unknown class, or an image the
            split already has.
    """
    split_json = os.path.join(split_dir, ANNOTATION_FILE)
    split = read_coco_json(split_json)
    corrected = read_coco_json(corrected_json)
    category_ids = {c["name"]: c["id"] for c in split["categories"]}
    first_image = max((i["id"] for i in split["images"] if isinstance(i["id"], int)), default=0)
    first_annotation = max(
        (a["id"] for a in split["annotations"] if isinstance(a.get("id"), int)), default=0
    )
    images, annotations = _renumbered(
        corrected, corrected_json, category_ids, first_image + 1, first_annotation + 1
    )
    taken = {os.path.basename(image["file_name"]) for image in split["images"]}
    for image in images:
        name = os.path.basename(image["file_name"])
        source = os.path.join(image_dir, image["file_name"])
        if name in taken:
            raise DentalError(
                f"{corrected_json}: image {name} is already in {split_json}; it was labelled "
                "before, remove it from the corrected file"
            )
        if not os.path.isfile(source):
            raise DentalError(f"{corrected_json}: {source} not found; pass its folder as --images")
    for image in images:
        name = os.path.basename(image["file_name"])
        with open(os.path.join(image_dir, image["file_name"]), "rb") as f:
            write_bytes(os.path.join(split_dir, name), f.read())
        image["file_name"] = name
    split["images"] += images
    split["annotations"] += annotations
    # The JSON last: an interrupted merge leaves extra image files, never records without them.
    write_json(split_json, split)
    logger.info(f"Added {len(images)} images, {len(annotations)} annotations to {split_json}")
    return len(images)
