"""Loading Ultralytics YOLO-seg exports (data.yaml, images/, labels/) as detectron2 records.

A label file holds one object a line, `class x1 y1 x2 y2 ...` (a polygon) or `class cx cy w h`
(a box, which has no mask), coordinates normalised to 0..1 of the image's size. The records
are made by the same code as the COCO loader's (`roboflow.split_from_coco`), so training,
evaluation and `tools/check_dataset.py` see no difference. The layout and the way paths are
resolved follow Ultralytics' `check_det_dataset` and `img2label_paths`. Ultralytics itself is
not a dependency: it is AGPL-3.0 and brings its own training stack, too much for text files.
"""

import hashlib
import logging
import math
import os
from dataclasses import dataclass

import yaml

from ..errors import DentalError
from .coco_records import format_listed
from .image_files import is_image_file
from .image_io import image_size
from .roboflow import RoboflowSplit, cached_split, split_from_coco

__all__ = ["DATA_YAML", "YOLO_SPLITS", "YoloExport", "find_data_yaml", "load_yolo_split"]

logger = logging.getLogger(__name__)

# The file that describes a YOLO export (Ultralytics and Roboflow name it so).
DATA_YAML = ("data.yaml", "data.yml")
# Registered split name -> its key in data.yaml.
YOLO_SPLITS = {"train": "train", "valid": "val", "test": "test"}
# A normalised coordinate may lie this far outside 0..1 (rounding in exports) and is clipped;
# farther out it is an error (pixel coordinates, or labels of another image).
COORDINATE_TOLERANCE = 0.01
# At most this many file names are listed in one note.
_MAX_LISTED = 5
# What the loader noted about a split's files, one line each (in this order) when it happened.
_NOTES = {
    "orphan": "ignored {n} label files without an image ({names})",
    "unlabelled": "kept {n} images without a label file as negatives ({names})",
    "empty": "kept {n} images with an empty label file as negatives ({names})",
    "crlf": "read {n} label files with Windows line endings ({names})",
}
_FIX = "fix the line or delete it"


@dataclass
class YoloExport:
    """A parsed data.yaml.

    Attributes:
        yaml_file (str): the data.yaml.
        names (list[str]): class names by class id.
        splits (dict[str, list[str]]): registered split name -> its image folders and list
            files, as existing absolute paths.
    """

    yaml_file: str
    names: list[str]
    splits: dict


def find_data_yaml(root) -> str | None:
    """The data.yaml of a YOLO export: `root` itself when it is one, else `root/data.yaml`.

    Args:
        root (str or os.PathLike): a folder or a .yaml file.
    """
    root = os.fspath(root)
    if os.path.isfile(root) and root.lower().endswith((".yaml", ".yml")):
        return root
    for name in DATA_YAML:
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _names(data: dict, yaml_file: str) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        ids = sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in ids] != [str(i) for i in range(len(names))]:
            raise DentalError(
                f"{yaml_file}: 'names' has ids {', '.join(str(k) for k in ids)}; number the "
                "classes 0, 1, 2, ... without gaps"
            )
        names = [names[k] for k in ids]
    if not isinstance(names, list) or not names:
        raise DentalError(
            f"{yaml_file}: no 'names' (a list of class names, or a map id -> name); add them"
        )
    names = [str(n) for n in names]
    if "nc" in data and data["nc"] != len(names):
        raise DentalError(
            f"{yaml_file}: 'nc' is {data['nc']} but 'names' lists {len(names)} classes; make "
            "them agree"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DentalError(
            f"{yaml_file}: class name(s) {', '.join(duplicates)} listed twice in 'names'; give "
            "each class its own name"
        )
    return names


def _resolve(entry: str, base: str, yaml_file: str, key: str) -> str:
    path = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
    if not os.path.exists(path) and entry.startswith("../"):
        # Roboflow writes "../train/images" for exports unpacked with data.yaml beside train/.
        path = os.path.normpath(os.path.join(base, entry[3:]))
    if not os.path.exists(path):
        raise DentalError(
            f"{yaml_file}: '{key}' is {entry}, but {path} does not exist; fix the path in "
            "data.yaml or restore the folder"
        )
    return path


def read_data_yaml(yaml_file) -> YoloExport:
    """Parses a data.yaml: class names and the image folders or list files of each split.

    `path` (relative to the data.yaml's folder) is the base of the split paths; when it is
    absent or names a folder that does not exist here (the export was made elsewhere), the
    data.yaml's own folder is.

    Args:
        yaml_file (str or os.PathLike): the data.yaml.

    Raises:
        DentalError: unreadable YAML, no usable names, no split, or a split path that does not
            exist.
    """
    yaml_file = os.path.abspath(os.fspath(yaml_file))
    try:
        with open(yaml_file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())
        raise DentalError(f"{yaml_file}: not readable YAML ({reason}); fix the file") from e
    if not isinstance(data, dict):
        raise DentalError(f"{yaml_file}: not a YOLO data.yaml (no keys); export the dataset again")
    names = _names(data, yaml_file)
    folder = os.path.dirname(yaml_file)
    base = folder
    if isinstance(data.get("path"), str) and data["path"]:
        candidate = os.path.normpath(os.path.join(folder, os.path.expanduser(data["path"])))
        if os.path.isdir(candidate):
            base = candidate
        else:
            logger.info(f"{yaml_file}: 'path' {data['path']} not found; reading paths from {base}")
    splits = {}
    for split, key in YOLO_SPLITS.items():
        entries = data.get(key)
        if not entries:
            continue
        entries = entries if isinstance(entries, list) else [entries]
        splits[split] = [_resolve(str(entry), base, yaml_file, key) for entry in entries]
    if not splits:
        raise DentalError(
            f"{yaml_file}: names no 'train', 'val' or 'test' images; add the image folders or "
            "list files of the splits"
        )
    return YoloExport(yaml_file, names, splits)


def _files_under(folder: str) -> list[str]:
    return [os.path.join(parent, f) for parent, _, files in os.walk(folder) for f in files]


def _images_of(entries: list[str]) -> list[str]:
    images = []
    for entry in entries:
        if os.path.isdir(entry):
            images.extend(p for p in _files_under(entry) if is_image_file(p))
            continue
        # A list file: one image a line, relative to the list file's folder unless absolute.
        base = os.path.dirname(entry)
        with open(entry, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            image = os.path.normpath(os.path.join(base, line))
            if not os.path.isfile(image):
                raise DentalError(
                    f"{entry} line {number}: {image} not found; restore the image or remove "
                    "the line"
                )
            images.append(image)
    return sorted(dict.fromkeys(os.path.abspath(p) for p in images))


def _labels_of(path: str) -> str:
    """`path` with its last `images` folder replaced by `labels` (unchanged without one)."""
    parts = path.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return os.sep.join(parts)


def label_path(image: str) -> str:
    """The label file of an image: the last `images` folder of its path becomes `labels`, and
    the extension `.txt` (Ultralytics' `img2label_paths`).

    Args:
        image (str): the image's path.
    """
    folder, name = os.path.split(image)
    return os.path.join(_labels_of(folder), os.path.splitext(name)[0] + ".txt")


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DentalError(f"{where}: {text!r} is not a number; {_FIX}") from None
    if not math.isfinite(value):
        raise DentalError(f"{where}: {text!r} is not a finite number; {_FIX}")
    return value


def _coordinates(tokens: list[str], where: str) -> list[float]:
    values = [_number(t, where) for t in tokens]
    for value in values:
        if not -COORDINATE_TOLERANCE <= value <= 1 + COORDINATE_TOLERANCE:
            raise DentalError(
                f"{where}: coordinate {value:g} is outside 0..1; YOLO labels are normalised to "
                f"the image's width and height (pixel coordinates?): {_FIX}"
            )
    return [min(max(v, 0.0), 1.0) for v in values]


def _parse_label_line(line: str, where: str, names: list[str], height: int, width: int) -> dict:
    """One annotation (without ids) of a label line, in pixels."""
    tokens = line.split()
    class_value = _number(tokens[0], where)
    if class_value != int(class_value) or not 0 <= class_value < len(names):
        known = ", ".join(f"{i} {n}" for i, n in enumerate(names))
        raise DentalError(
            f"{where}: class id {tokens[0]} is not in data.yaml's names ({known}); fix the line "
            "or add the class to names"
        )
    coordinates = _coordinates(tokens[1:], where)
    if len(coordinates) % 2:
        raise DentalError(
            f"{where}: an odd number of coordinates ({len(coordinates)}); a line is 'class x y "
            f"x y ...' (a polygon) or 'class cx cy w h' (a box): {_FIX}"
        )
    annotation = {"category_id": int(class_value), "iscrowd": 0}
    if len(coordinates) == 4:
        cx, cy, w, h = coordinates
        annotation["bbox"] = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        annotation["segmentation"] = None
        return annotation
    points = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coordinates)]
    annotation["segmentation"] = [points]
    if len(points) >= 2:
        xs, ys = points[0::2], points[1::2]
        annotation["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return annotation


def _read_labels(path: str, names, height: int, width: int, notes: dict) -> list[dict]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DentalError(f"{path}: not a UTF-8 text file ({e.reason}); export it again") from e
    if "\r" in text:
        notes["crlf"].append(os.path.basename(path))
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        notes["empty"].append(os.path.basename(path))
    annotations = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            annotation = _parse_label_line(line, f"{path} line {number}", names, height, width)
            annotation["id"] = f"{os.path.basename(path)}:{number}"
            annotations.append(annotation)
    return annotations


def _orphan_labels(entries: list[str], images: list[str]) -> list[str]:
    """Label files in the label folders of the split's image folders that no image has."""
    expected = {label_path(image) for image in images}
    orphans = []
    for entry in entries:
        label_folder = _labels_of(entry)
        if not os.path.isdir(entry) or label_folder == entry or not os.path.isdir(label_folder):
            continue
        orphans.extend(
            p for p in _files_under(label_folder) if p.endswith(".txt") and p not in expected
        )
    return sorted(orphans)


def _coco_of_split(export: YoloExport, split: str, images: list[str]):
    """The split as an in-memory COCO dataset, its image root and its notes."""
    entries = export.splits[split]
    image_root = os.path.commonpath([os.path.dirname(p) for p in images])
    notes = {"crlf": [], "empty": [], "unlabelled": []}
    coco = {"images": [], "annotations": []}
    for image_id, image in enumerate(images):
        height, width = image_size(image)
        coco["images"].append(
            {
                "id": image_id,
                "file_name": os.path.relpath(image, image_root),
                "height": height,
                "width": width,
            }
        )
        label = label_path(image)
        if not os.path.isfile(label):
            notes["unlabelled"].append(os.path.basename(image))
            continue
        for annotation in _read_labels(label, export.names, height, width, notes):
            coco["annotations"].append({**annotation, "image_id": image_id})
    notes["orphan"] = [os.path.basename(p) for p in _orphan_labels(entries, images)]
    lines = [
        text.format(n=len(notes[kind]), names=format_listed(notes[kind], _MAX_LISTED))
        for kind, text in _NOTES.items()
        if notes[kind]
    ]
    return coco, image_root, lines


def _files_signature(images: list[str]) -> str:
    """A digest of the paths, sizes and modification times of images and their label files."""
    digest = hashlib.sha256()
    for path in images:
        for file in (path, label_path(path)):
            try:
                stat = os.stat(file)
            except FileNotFoundError:
                digest.update(f"{file}:-;".encode())
                continue
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def load_yolo_split(yaml_file, split: str, check_images: bool = True) -> RoboflowSplit:
    """Loads and validates one split of a YOLO-seg export, or returns it from the cache.

    Image sizes come from the image headers (after EXIF orientation, as Ultralytics reads
    them). Polygons become COCO polygons in pixels; box lines have no mask and are dropped
    like COCO annotations without a segmentation; images without a label file, or with an
    empty one, are kept as negatives. Each of those is one line in `repairs` (and the log).

    Args:
        yaml_file (str or os.PathLike): the export's data.yaml.
        split (str): "train", "valid" or "test" (data.yaml's `train`, `val`, `test`).
        check_images (bool): also decode every image.

    Returns:
        RoboflowSplit: the split; `json_file` is the data.yaml. Treat it as read-only.

    Raises:
        DentalError: the data.yaml, a label line or an image is unusable; the message names
            the file (and line) and the fix.
    """
    export = read_data_yaml(yaml_file)
    if split not in export.splits:
        raise DentalError(
            f"{export.yaml_file}: has no '{YOLO_SPLITS.get(split, split)}' split; add it or "
            "choose another"
        )
    images = _images_of(export.splits[split])
    if not images:
        raise DentalError(
            f"{export.yaml_file}: '{YOLO_SPLITS[split]}' ({', '.join(export.splits[split])}) "
            "holds no images; fix the path or add the images"
        )
    stat = os.stat(export.yaml_file)
    key = ("yolo", export.yaml_file, stat.st_mtime_ns, split, _files_signature(images))

    def build() -> RoboflowSplit:
        coco, image_root, notes = _coco_of_split(export, split, images)
        categories = [{"id": i, "name": name} for i, name in enumerate(export.names)]
        label = f"{os.path.basename(export.yaml_file)} {YOLO_SPLITS[split]}"
        return split_from_coco(
            coco,
            categories,
            export.yaml_file,
            image_root,
            check_images,
            label,
            tuple(notes),
            export_format="YOLO segmentation (polygons, not 'class cx cy w h' boxes)",
        )

    return cached_split((*key, check_images), build)
