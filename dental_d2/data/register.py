"""Registers the train/valid/test splits of a Roboflow export in detectron2's catalogs."""

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DentalError
from .categories import contiguous_id_map, thing_colors
from .roboflow import ANNOTATION_FILE, load_roboflow_json, read_thing_categories

__all__ = ["SPLITS", "check_num_classes", "register_dental_splits", "register_from_config"]

logger = logging.getLogger(__name__)

# Split folders of a Roboflow export, in the order they are registered.
SPLITS = ("train", "valid", "test")

# Dataset names this module registered -> (root, signature of the JSON files), so a second call
# for the same data is a no-op and one for other data replaces only what this module owns.
_REGISTERED: dict[str, tuple] = {}


def _split_files(root: str) -> dict[str, str]:
    if not os.path.isdir(root):
        raise DentalError(
            f"{root}: data root not found; set DENTAL.DATA_ROOT to the folder of a Roboflow "
            "'COCO Segmentation' export (with train/, valid/, test/)"
        )
    files = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            continue
        json_file = os.path.join(folder, ANNOTATION_FILE)
        if not os.path.isfile(json_file):
            raise DentalError(
                f"{json_file}: not found although the split folder exists; export the dataset in "
                "'COCO Segmentation' format or remove the folder"
            )
        files[split] = json_file
    if not files:
        raise DentalError(
            f"{root}: no train/, valid/ or test/ folder with {ANNOTATION_FILE}; set "
            "DENTAL.DATA_ROOT to the folder of a Roboflow 'COCO Segmentation' export"
        )
    return files


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
    """Registers each split folder of a Roboflow export as `<name>_<split>`.

    Split folders that are absent are not registered. The JSON files are parsed now, to learn
    the classes and reject empty or malformed files; images are checked when a dataset is first
    loaded with `DatasetCatalog.get`. Calling again with the same root is a no-op; with another
    root (or changed files) the old `<name>_*` entries are replaced.

    Args:
        root (str or os.PathLike): folder holding `train/`, `valid/`, `test/`, each with an
            `_annotations.coco.json` and its images.
        name (str): prefix of the registered dataset names.

    Returns:
        dict[str, str]: split ("train", "valid", "test") -> registered dataset name.

    Raises:
        DentalError: no split folder, a split folder without annotations, an unreadable JSON,
            splits with different classes, or a name taken by other code.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    files = _split_files(root)
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
        DatasetCatalog.register(
            dataset_name, functools.partial(load_roboflow_json, json_file, image_root)
        )
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
