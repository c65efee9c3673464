"""Registers the train/valid/test splits of a Roboflow COCO or a YOLO-seg export in detectron2's
catalogs; the layout is told by its files."""

import copy
import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DentalError
from .categories import contiguous_id_map, thing_colors
from .roboflow import ANNOTATION_FILE, RoboflowSplit, load_roboflow_split, read_thing_categories
from .yolo import find_data_yaml, load_yolo_split, read_data_yaml

__all__ = [
    "SPLITS",
    "check_num_classes",
    "export_layout",
    "load_registered_split",
    "register_dental_splits",
    "register_from_config",
]

logger = logging.getLogger(__name__)

# Split folders of a Roboflow export, in the order they are registered.
SPLITS = ("train", "valid", "test")

# Dataset names this module registered -> (root, signature of the JSON files), so a second call
# for the same data is a no-op and one for other data replaces only what this module owns.
_REGISTERED: dict[str, tuple] = {}


def _split_files(root: str) -> dict[str, str]:
    """Split -> annotation file of a COCO export; empty when no split folder has one."""
    files = {}
    for split in SPLITS:
        json_file = os.path.join(root, split, ANNOTATION_FILE)
        if os.path.isfile(json_file):
            files[split] = json_file
    return files


def export_layout(root) -> tuple[str, dict[str, str] | str]:
    """Tells a Roboflow COCO export from a YOLO-seg export by their files.

    A COCO export has `_annotations.coco.json` in `train/`, `valid/` or `test/`; a YOLO export
    has a `data.yaml` (or `root` is one). A folder with both is read as COCO.

    Args:
        root (str or os.PathLike): the export's folder (or a YOLO data.yaml).

    Returns:
        tuple: ("coco", {split: annotation file}) or ("yolo", the data.yaml).

    Raises:
        DentalError: `root` does not exist, is neither layout, or has a COCO split folder
            without its annotation file.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DentalError(
            f"{root}: data root not found; set DENTAL.DATA_ROOT to the folder of a Roboflow "
            "'COCO Segmentation' export (with train/, valid/, test/) or of a YOLO-seg export "
            "(with data.yaml)"
        )
    files = _split_files(root) if os.path.isdir(root) else {}
    yaml_file = find_data_yaml(root)
    if yaml_file and not files:
        return "yolo", yaml_file
    for split in SPLITS:
        if split not in files and os.path.isdir(os.path.join(root, split)):
            raise DentalError(
                f"{os.path.join(root, split, ANNOTATION_FILE)}: not found although the split "
                "folder exists; export the dataset in 'COCO Segmentation' format (or as YOLO-seg, "
                "with its data.yaml) or remove the folder"
            )
    if files:
        if yaml_file:
            logger.info(f"{root}: has COCO annotations and {yaml_file}; reading the COCO files")
        return "coco", files
    parent = os.path.dirname(os.path.abspath(root))
    if _split_files(parent) or find_data_yaml(parent):
        raise DentalError(
            f"{root}: this is one split of an export; set DENTAL.DATA_ROOT to the export's "
            f"folder, {parent}, which holds the splits"
        )
    raise DentalError(
        f"{root}: neither a COCO export (train/, valid/ or test/ with {ANNOTATION_FILE}) nor a "
        "YOLO-seg export (data.yaml); set DENTAL.DATA_ROOT to the folder of either"
    )


def _signature(files: dict[str, str]) -> tuple:
    return tuple(
        (split, path, os.stat(path).st_mtime_ns, os.stat(path).st_size)
        for split, path in files.items()
    )


def _get_meta(categories: list[dict]) -> dict:
    thing_classes = [c["name"] for c in categories]
    return {
        "thing_classes": thing_classes,
        "thing_colors": thing_colors(thing_classes),
        "thing_dataset_id_to_contiguous_id": contiguous_id_map(categories),
    }


def _already_registered(name: str, names: dict[str, str], signature: tuple) -> bool:
    catalog = set(DatasetCatalog.list())
    current = all(_REGISTERED.get(n) == signature and n in catalog for n in names.values())
    stale = any(f"{name}_{split}" in _REGISTERED for split in SPLITS if split not in names)
    return current and not stale


def _unregister(dataset_name: str) -> None:
    if dataset_name in DatasetCatalog.list():
        if dataset_name not in _REGISTERED:
            raise DentalError(
                f"dataset name {dataset_name} is already registered by other code; set "
                "DENTAL.DATASET_NAME to another name"
            )
        DatasetCatalog.remove(dataset_name)
    # Metadata may exist without a dataset (MetadataCatalog.get creates it on first access);
    # stale values would make the new `set` fail.
    if dataset_name in MetadataCatalog.list():
        MetadataCatalog.remove(dataset_name)
    _REGISTERED.pop(dataset_name, None)


def register_dental_splits(root, name: str = "dental") -> dict[str, str]:
    """Registers each split of a Roboflow COCO or YOLO-seg export as `<name>_<split>`.

    The layout is found by `export_layout`. Split folders (COCO) or data.yaml keys (YOLO
    `train`, `val`, `test`) that are absent are not registered. The annotation files are read
    now only as far as the classes (COCO JSON files are parsed, to reject empty or malformed
    ones; of a YOLO export only data.yaml); labels and images are read and checked when a
    dataset is first loaded with `DatasetCatalog.get`. Calling again with the same root is a
    no-op; with another root (or changed files) the old `<name>_*` entries are replaced.

    Args:
        root (str or os.PathLike): folder holding `train/`, `valid/`, `test/`, each with an
            `_annotations.coco.json` and its images; or a YOLO export's folder (or data.yaml).
        name (str): prefix of the registered dataset names.

    Returns:
        dict[str, str]: split ("train", "valid", "test") -> registered dataset name.

    Raises:
        DentalError: neither layout, a split folder without annotations, an unreadable
            annotation file, splits with different classes, or a name taken by other code.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    layout, found = export_layout(root)
    if layout == "yolo":
        return _register_yolo(root, found, name)
    files = found
    names = {split: f"{name}_{split}" for split in files}
    signature = (root, _signature(files))
    if _already_registered(name, names, signature):
        return names

    categories = {split: read_thing_categories(path) for split, path in files.items()}
    first = next(iter(files))
    first_classes = [c["name"] for c in categories[first]]
    for split, split_categories in categories.items():
        classes = [c["name"] for c in split_categories]
        if classes != first_classes:
            raise DentalError(
                f"{files[split]} has classes {classes} but {files[first]} has {first_classes}; "
                "re-export all splits from the same Roboflow dataset version"
            )

    for split in SPLITS:
        _unregister(f"{name}_{split}")
    for split, json_file in files.items():
        dataset_name = names[split]
        image_root = os.path.dirname(json_file)
        DatasetCatalog.register(dataset_name, functools.partial(_dataset_dicts, dataset_name))
        MetadataCatalog.get(dataset_name).set(
            **_get_meta(categories[split]),
            image_root=image_root,
            roboflow_json=json_file,
            evaluator_type="coco",
            dental_root=root,
        )
        _REGISTERED[dataset_name] = signature
    logger.info(f"Registered {', '.join(names.values())} from {root} with classes {first_classes}")
    return names


def _register_yolo(root: str, yaml_file: str, name: str) -> dict[str, str]:
    export = read_data_yaml(yaml_file)
    names = {split: f"{name}_{split}" for split in export.splits}
    stat = os.stat(export.yaml_file)
    signature = (root, export.yaml_file, stat.st_mtime_ns, stat.st_size)
    if _already_registered(name, names, signature):
        return names
    categories = [{"id": i, "name": class_name} for i, class_name in enumerate(export.names)]
    for split in SPLITS:
        _unregister(f"{name}_{split}")
    for split, dataset_name in names.items():
        DatasetCatalog.register(dataset_name, functools.partial(_dataset_dicts, dataset_name))
        MetadataCatalog.get(dataset_name).set(
            **_get_meta(categories),
            yolo_yaml=export.yaml_file,
            yolo_split=split,
            evaluator_type="coco",
            dental_root=root,
        )
        _REGISTERED[dataset_name] = signature
    logger.info(
        f"Registered {', '.join(names.values())} from {export.yaml_file} (YOLO) with classes "
        f"{export.names}"
    )
    return names


def load_registered_split(dataset_name: str, check_images: bool = True) -> RoboflowSplit:
    """Loads a split registered by `register_dental_splits`, whichever its layout.

    Args:
        dataset_name (str): e.g. "dental_train".
        check_images (bool): also decode every image.

    Returns:
        RoboflowSplit: cached; treat it as read-only.
    """
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("yolo_yaml"):
        return load_yolo_split(metadata.yolo_yaml, metadata.yolo_split, check_images)
    return load_roboflow_split(metadata.roboflow_json, metadata.image_root, check_images)


def _dataset_dicts(dataset_name: str) -> list[dict]:
    """What `DatasetCatalog.get` returns: a copy of the split's records, safe to modify."""
    return copy.deepcopy(load_registered_split(dataset_name).dataset_dicts)


def register_from_config(cfg) -> list[str]:
    """Registers `cfg.DENTAL.DATA_ROOT` as `cfg.DENTAL.DATASET_NAME`_<split>.

    Args:
        cfg (CfgNode): a config with the dental keys (see `add_dental_config`).

    Returns:
        list[str]: the class names (`thing_classes`) in contiguous-id order.
    """
    names = register_dental_splits(cfg.DENTAL.DATA_ROOT, cfg.DENTAL.DATASET_NAME)
    return list(MetadataCatalog.get(next(iter(names.values()))).thing_classes)


def check_num_classes(cfg, thing_classes: list[str], source: str = "the dataset") -> None:
    """Checks that the model predicts as many classes as `source` names.

    Args:
        cfg (CfgNode): the config.
        thing_classes (list[str]): the class names.
        source (str): where they come from, for the message (a dataset, a checkpoint, ...).

    Raises:
        DentalError: `MODEL.ROI_HEADS.NUM_CLASSES` differs; the message gives the number to use.
    """
    expected = len(thing_classes)
    configured = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if configured != expected:
        raise DentalError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {configured} but {source} "
            f"has {expected} classes ({', '.join(thing_classes)}); set "
            f"MODEL.ROI_HEADS.NUM_CLASSES {expected}"
        )
