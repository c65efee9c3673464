"""Converting an export between layouts: Roboflow-style COCO Segmentation and YOLO-seg.

The source is read by the loaders training uses (`register.export_layout`, then the COCO or
YOLO loader), so a converted export holds what training would have seen, repairs included.
"""

import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import yaml
from detectron2.utils.visualizer import GenericMask
from tqdm import tqdm

from ..errors import DentalError
from ..file_io import atomic_write, check_output_outside, make_output_dir, write_bytes, write_json
from .coco_json import segmentation_to_rle
from .register import export_layout
from .roboflow import ANNOTATION_FILE, RoboflowSplit, load_roboflow_split
from .yolo import YOLO_SPLITS, load_yolo_split, read_data_yaml

__all__ = ["FORMATS", "convert_dataset", "read_export"]

logger = logging.getLogger(__name__)

# The layouts `convert_dataset` writes.
FORMATS = ("coco", "yolo")
# Decimals of a normalised YOLO coordinate: 1e-6 of a 10,000 px side is 0.01 px.
_YOLO_DECIMALS = 6


def read_export(root) -> dict[str, RoboflowSplit]:
    """Loads every split of a COCO or YOLO-seg export (images are not decoded).

    Args:
        root (str or os.PathLike): the export's folder (or a YOLO data.yaml).

    Returns:
        dict[str, RoboflowSplit]: "train", "valid", "test" -> the split, for those present.
    """
    layout, found = export_layout(os.path.abspath(os.fspath(root)))
    if layout == "coco":
        return {
            split: load_roboflow_split(path, check_images=False) for split, path in found.items()
        }
    return {
        split: load_yolo_split(found, split, check_images=False)
        for split in read_data_yaml(found).splits
    }


def _copy_image(source: str, target: str) -> None:
    with open(source, "rb") as f:
        write_bytes(target, f.read())


def _output_names(split: RoboflowSplit, keep_suffix: bool) -> list[str]:
    """Base names of the split's images in the output, refusing two images with one name."""
    names = [os.path.basename(record["file_name"]) for record in split.dataset_dicts]
    keys = names if keep_suffix else [os.path.splitext(n)[0] for n in names]
    seen = {}
    for key, record in zip(keys, split.dataset_dicts):
        if key in seen:
            raise DentalError(
                f"{split.json_file}: {seen[key]} and {record['file_name']} would both be written "
                f"as {key}; rename one of them"
            )
        seen[key] = record["file_name"]
    return names


def _coco_annotation(annotation: dict, record: dict, annotation_id: int, image_id: int) -> dict:
    segmentation = annotation["segmentation"]
    rle = segmentation_to_rle(segmentation, record["height"], record["width"])
    area = float(mask_util.area({**rle, "counts": rle["counts"].encode("ascii")}))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": annotation["category_id"] + 1,
        "bbox": [round(float(v), 3) for v in annotation["bbox"]],
        "area": area,
        "segmentation": segmentation,
        "iscrowd": annotation.get("iscrowd", 0),
    }


def _write_coco_split(split: RoboflowSplit, folder: str) -> int:
    make_output_dir(folder)
    names = _output_names(split, keep_suffix=True)
    # Ids 1..K: COCO keeps 0 for the background; no Roboflow superclass is added.
    categories = [
        {"id": i + 1, "name": name, "supercategory": "none"}
        for i, name in enumerate(split.thing_classes)
    ]
    images, annotations = [], []
    for image_id, (record, name) in enumerate(zip(split.dataset_dicts, names)):
        _copy_image(record["file_name"], os.path.join(folder, name))
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "height": record["height"],
                "width": record["width"],
            }
        )
        for annotation in record["annotations"]:
            annotations.append(_coco_annotation(annotation, record, len(annotations), image_id))
    coco = {"info": {"description": "converted by dental_d2"}, "licenses": [], "images": images}
    coco.update(annotations=annotations, categories=categories)
    write_json(os.path.join(folder, ANNOTATION_FILE), coco)
    return len(images)


def _polygons(annotation: dict, record: dict) -> list[list[float]]:
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        return segmentation
    # An RLE mask: its outlines, traced by detectron2 (OpenCV's findContours).
    return [list(p) for p in GenericMask(segmentation, record["height"], record["width"]).polygons]


def _yolo_line(class_id: int, polygon: list[float], height: int, width: int) -> str:
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / (width, height)
    points = np.clip(points, 0.0, 1.0)
    return " ".join([str(class_id), *(f"{v:.{_YOLO_DECIMALS}f}" for v in points.ravel())])


def _write_yolo_split(split: RoboflowSplit, root: str, key: str, notes: dict) -> int:
    image_folder, label_folder = (
        os.path.join(root, "images", key),
        os.path.join(root, "labels", key),
    )
    make_output_dir(image_folder)
    make_output_dir(label_folder)
    names = _output_names(split, keep_suffix=False)
    for record, name in zip(split.dataset_dicts, names):
        _copy_image(record["file_name"], os.path.join(image_folder, name))
        lines = []
        for annotation in record["annotations"]:
            polygons = _polygons(annotation, record)
            notes["rle"] += not isinstance(annotation["segmentation"], list)
            notes["split"] += len(polygons) > 1
            lines.extend(
                _yolo_line(annotation["category_id"], p, record["height"], record["width"])
                for p in polygons
                if len(p) >= 6
            )
        stem = os.path.splitext(name)[0]
        with atomic_write(os.path.join(label_folder, stem + ".txt")) as f:
            f.write("".join(line + "\n" for line in lines))
    return len(names)


def convert_dataset(source, output, to: str) -> dict[str, int]:
    """Writes an export in another layout (or the same one, normalised).

    - "coco": a Roboflow-style export, `train/`, `valid/`, `test/`, each with
      `_annotations.coco.json` and its images; category ids 1..K in class order.
    - "yolo": Ultralytics' layout, `data.yaml` (names as a list) with `images/<split>/` and
      `labels/<split>/`; one polygon a line, normalised to 0..1 with six decimals. An object
      of several polygons becomes one line each, an RLE mask its traced outlines (YOLO has no
      other way to hold them); both are logged.

    Images are copied unchanged.

    Args:
        source (str or os.PathLike): a COCO or YOLO-seg export.
        output (str or os.PathLike): the folder to write (created; not inside `source`).
        to (str): "coco" or "yolo".

    Returns:
        dict[str, int]: split -> images written.

    Raises:
        DentalError: an unusable source, an output inside it, or two images of one split that
            would get the same name.
    """
    if to not in FORMATS:
        raise DentalError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    source, output = os.fspath(source), os.fspath(output)
    folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    check_output_outside(output, [folder])
    splits = read_export(source)
    if not splits:
        raise DentalError(f"{source}: has no train, valid or test split to convert")
    make_output_dir(output)
    written, notes = {}, {"rle": 0, "split": 0}
    for split_name, split in tqdm(splits.items(), desc="converting", disable=None):
        if to == "coco":
            written[split_name] = _write_coco_split(split, os.path.join(output, split_name))
        else:
            key = YOLO_SPLITS[split_name]
            written[split_name] = _write_yolo_split(split, output, key, notes)
    if to == "yolo":
        first = next(iter(splits.values()))
        data = {key: f"images/{key}" for s, key in YOLO_SPLITS.items() if s in splits}
        data.update(nc=len(first.thing_classes), names=list(first.thing_classes))
        with atomic_write(os.path.join(output, "data.yaml")) as f:
            yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
        if notes["rle"]:
            logger.warning(f"traced the outlines of {notes['rle']} RLE masks as polygons")
        if notes["split"]:
            logger.warning(
                f"wrote {notes['split']} objects of several polygons as one line per polygon"
            )
    logger.info(
        f"Wrote {', '.join(f'{s} {n} images' for s, n in written.items())} to {output} ({to})"
    )
    return written
