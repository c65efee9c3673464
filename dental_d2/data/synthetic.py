"""A synthetic intraoral-photo dataset (teeth, caries, cavities, cracks) in Roboflow's layout.

The pictures come from `synthetic_image.make_synthetic_image`; this module writes them as a
Roboflow "COCO Segmentation" export.
"""

import hashlib
import logging
import os
import re

import cv2
import numpy as np
from tqdm import tqdm

from ..file_io import write_image, write_json
from .roboflow import ANNOTATION_FILE
from .synthetic_image import CLASS_NAMES, DEFAULT_SIZE, make_synthetic_image

__all__ = ["CLASS_NAMES", "DEFAULT_COUNTS", "generate_synthetic_dataset", "make_synthetic_image"]

logger = logging.getLogger(__name__)

# Roboflow's project-level category (id 0, supercategory "none", no annotations).
SUPERCLASS_NAME = "dental-lesions"
# Fixed so that two runs write byte-identical JSON.
DATE_CREATED = "2025-01-01T00:00:00+00:00"
JPEG_QUALITY = 95

DEFAULT_COUNTS = {"train": 160, "valid": 40, "test": 40}

_SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}
_GENERATED_NAME = re.compile(r"^synthetic_\d+_png\.rf\.[0-9a-f]{32}\.jpg$")


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        contour = cv2.approxPolyDP(contour, 0.6, True)
        if len(contour) >= 3:
            # Contours run through boundary pixel indices; +0.5 moves them to pixel centres.
            polygons.append([round(float(v) + 0.5, 1) for v in contour.reshape(-1)])
    return polygons


def _coco_annotation(annotation_id: int, image_id: int, name: str, mask: np.ndarray):
    polygons = _polygons(mask)
    if not polygons:
        return None
    points = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polygons])
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": CLASS_NAMES.index(name) + 1,
        "bbox": [round(float(x0), 1), round(float(y0), 1), round(float(x1 - x0), 1)]
        + [round(float(y1 - y0), 1)],
        "area": float(mask.sum()),
        "segmentation": polygons,
        "iscrowd": 0,
    }


def _coco_header(seed: int) -> dict:
    return {
        "info": {
            "year": DATE_CREATED[:4],
            "version": "1",
            "description": f"Synthetic dental lesions made by dental_d2 (seed {seed})",
            "contributor": "dental_d2",
            "url": "",
            "date_created": DATE_CREATED,
        },
        "licenses": [
            {
                "id": 1,
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
                "name": "Public Domain",
            }
        ],
        "categories": [{"id": 0, "name": SUPERCLASS_NAME, "supercategory": "none"}]
        + [
            {"id": i + 1, "name": name, "supercategory": SUPERCLASS_NAME}
            for i, name in enumerate(CLASS_NAMES)
        ],
        "images": [],
        "annotations": [],
    }


def _write_split(output_dir, split, count, first_number, size, seed) -> tuple[int, int]:
    folder = os.path.join(output_dir, split)
    os.makedirs(folder, exist_ok=True)
    json_file = os.path.join(folder, ANNOTATION_FILE)
    # An interrupted run leaves a split without its JSON (never one naming missing images):
    # the old JSON goes first and the new one appears whole, by rename, after the images.
    if os.path.exists(json_file):
        os.remove(json_file)
    for name in os.listdir(folder):
        if _GENERATED_NAME.match(name):  # images of an earlier run with other counts
            os.remove(os.path.join(folder, name))
    coco_json = _coco_header(seed)
    for image_id in tqdm(range(count), desc=f"synthetic {split}", disable=None):
        number = first_number + image_id
        rng = np.random.default_rng([seed, _SPLIT_INDEX[split], image_id])
        image, instances = make_synthetic_image(rng, size)
        digest = hashlib.md5(f"{seed}:{split}:{number}".encode()).hexdigest()
        file_name = f"synthetic_{number:04d}_png.rf.{digest}.jpg"
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        write_image(os.path.join(folder, file_name), bgr, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
        coco_json["images"].append(
            {
                "id": image_id,
                "license": 1,
                "file_name": file_name,
                "height": size,
                "width": size,
                "date_captured": DATE_CREATED,
                "extra": {"name": f"synthetic_{number:04d}.png"},
            }
        )
        for name, mask in instances:
            annotation = _coco_annotation(len(coco_json["annotations"]), image_id, name, mask)
            if annotation is not None:
                coco_json["annotations"].append(annotation)
    write_json(json_file, coco_json)
    return len(coco_json["images"]), len(coco_json["annotations"])


def generate_synthetic_dataset(
    output_dir,
    num_train: int = DEFAULT_COUNTS["train"],
    num_valid: int = DEFAULT_COUNTS["valid"],
    num_test: int = DEFAULT_COUNTS["test"],
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> dict[str, tuple[int, int]]:
    """Writes a synthetic export laid out as Roboflow's "COCO Segmentation" download.

    `output_dir/{train,valid,test}/_annotations.coco.json` plus JPEG images, with Roboflow's
    superclass quirk (category 0 "dental-lesions", then Caries, Cavity, Crack, Tooth). The same
    seed gives byte-identical JSON and identical images. A split with 0 images is not written.

    Args:
        output_dir (str or os.PathLike): folder to write into (created if needed).
        num_train (int): images in train/.
        num_valid (int): images in valid/.
        num_test (int): images in test/.
        size (int): width and height of the images in pixels.
        seed (int): random seed.

    Returns:
        dict[str, tuple[int, int]]: split -> (number of images, number of annotations).
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    counts = {}
    first_number = 1
    for split, count in (("train", num_train), ("valid", num_valid), ("test", num_test)):
        if count <= 0:
            continue
        counts[split] = _write_split(output_dir, split, count, first_number, size, seed)
        first_number += count
    logger.info(f"Wrote synthetic dataset to {output_dir}: {counts}")
    return counts
