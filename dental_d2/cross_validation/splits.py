"""K-fold splits of an export's pooled train and valid images, stratified on the classes present."""

import logging
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field

from ..data.register import SPLITS, export_layout, load_registered_split, register_dental_splits
from ..data.roboflow import ANNOTATION_FILE, RoboflowSplit
from ..errors import DentalError
from ..file_io import write_json

__all__ = [
    "PooledImage",
    "fold_assignments",
    "fold_layout",
    "pool_images",
    "write_fold_export",
]

logger = logging.getLogger(__name__)

# Splits pooled for cross-validation; the test split stays out of it.
POOLED_SPLITS = ("train", "valid")


@dataclass
class PooledImage:
    """One image of the pooled splits, in COCO form.

    Attributes:
        image (dict): its COCO image record, `file_name` an absolute path.
        annotations (list[dict]): its COCO annotations, category ids those of `categories`.
        classes (frozenset[str]): names of the classes annotated on it.
        split (str): the split it came from.
    """

    image: dict
    annotations: list[dict] = field(default_factory=list)
    classes: frozenset = frozenset()
    split: str = ""


def _coco_annotation(annotation: dict, category_id) -> dict:
    """A loaded record's annotation in COCO form, with the train split's category id."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], bytes):
        # The loader compresses uncompressed RLE with pycocotools, which gives bytes; JSON
        # holds the same counts as ASCII text.
        segmentation = dict(segmentation, counts=segmentation["counts"].decode("ascii"))
    return {
        "category_id": category_id,
        "bbox": list(annotation["bbox"]),
        "segmentation": segmentation,
        "iscrowd": annotation["iscrowd"],
    }


def _pooled_split(split: RoboflowSplit, split_name: str, name_to_id: dict) -> list[PooledImage]:
    """The images of a split loaded by training's loader, so cross-validation trains on the
    records, with the repairs and refusals, that `tools/train_net.py` would."""
    ids = [name_to_id[name] for name in split.thing_classes]
    pooled = []
    for record in split.dataset_dicts:
        image = {k: record[k] for k in ("file_name", "height", "width")}
        annotations = [_coco_annotation(a, ids[a["category_id"]]) for a in record["annotations"]]
        classes = frozenset(split.thing_classes[a["category_id"]] for a in record["annotations"])
        pooled.append(PooledImage(image, annotations, classes, split_name))
    return pooled


def pool_images(root: str, name: str = "dental") -> tuple[list[PooledImage], list[dict]]:
    """Reads the train and valid splits of an export into one list of images.

    The splits are read by training's loader (`load_registered_split`): a record it refuses
    stops cross-validation with its message, and its repairs are logged and kept. Image and
    annotation ids are renumbered from 1; category ids are the train split's (matched by name
    for the valid split). The test split is not read.

    Args:
        root (str): the export's folder.
        name (str): prefix under which the splits are registered to read them.

    Returns:
        tuple[list[PooledImage], list[dict]]: the images, and the classes of the train split
        (COCO categories, Roboflow's superclass dropped).

    Raises:
        DentalError: the export has no train split, its splits disagree on the classes, or a
            record or an image is unusable.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    registered = register_dental_splits(root, name)
    if export_layout(root)[0] != "coco":
        raise DentalError(
            f"{root}: cross-validation writes its folds as COCO files and reads a COCO export; "
            f"convert this YOLO export first: python tools/convert_dataset.py {root} --to coco "
            "--output DIR, then pass DENTAL.DATA_ROOT DIR"
        )
    if "train" not in registered:
        raise DentalError(
            f"{root}: no train/ split; cross-validation pools train/ and valid/ of a Roboflow "
            "'COCO Segmentation' export"
        )
    splits = {s: load_registered_split(registered[s]) for s in POOLED_SPLITS if s in registered}
    categories = [{"id": c["id"], "name": c["name"]} for c in splits["train"].categories]
    name_to_id = {c["name"]: c["id"] for c in categories}
    images = []
    for split_name, split in splits.items():
        images += _pooled_split(split, split_name, name_to_id)
    next_annotation_id = 1
    for image_id, pooled in enumerate(images, start=1):
        pooled.image["id"] = image_id
        for annotation in pooled.annotations:
            annotation.update(id=next_annotation_id, image_id=image_id)
            next_annotation_id += 1
    logger.info(
        f"Pooled {len(images)} images of {', '.join(splits)} from {root}; {SPLITS[-1]}/ is left out"
    )
    return images, categories


def _choose_fold(wanted: list[float], capacity: list[float], rng: random.Random) -> int:
    # The fold that most wants this class, then the one with most room, then a random one.
    return max(range(len(wanted)), key=lambda f: (wanted[f], capacity[f], rng.random()))


def fold_assignments(classes: list[frozenset], num_folds: int, seed: int = 0) -> list[int]:
    """Assigns images to folds so that each class is spread over the folds as evenly as it can.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) for images with several
    classes: the class with the fewest unassigned images goes first, each of its images to the
    fold that still wants most of that class (ties: the fold with most room left, then at
    random). Images without annotations fill the folds with most room last.

    Args:
        classes (list[frozenset[str]]): the classes present on each image.
        num_folds (int): K, at least 2 and at most the number of images.
        seed (int): seed of the tie-breaks and of the image order.

    Returns:
        list[int]: the fold (0..K-1) of each image.

    Raises:
        DentalError: K is below 2 or above the number of images.
    """
    num_images = len(classes)
    if num_folds < 2 or num_folds > num_images:
        raise DentalError(
            f"--folds {num_folds}: needs at least 2 folds and at most one per image "
            f"({num_images} images in train/ and valid/); pass --folds between 2 and {num_images}"
        )
    rng = random.Random(seed)
    order = list(range(num_images))
    rng.shuffle(order)
    counts = Counter(name for image_classes in classes for name in image_classes)
    wanted = {name: [count / num_folds] * num_folds for name, count in counts.items()}
    capacity = [num_images / num_folds] * num_folds
    fold = [-1] * num_images

    def assign(index: int, chosen: int):
        fold[index] = chosen
        capacity[chosen] -= 1
        for name in classes[index]:
            wanted[name][chosen] -= 1

    while True:
        pending = {n: [i for i in order if fold[i] < 0 and n in classes[i]] for n in counts}
        pending = {n: indices for n, indices in pending.items() if indices}
        if not pending:
            break
        rarest = min(pending, key=lambda n: (len(pending[n]), n))
        for index in pending[rarest]:
            assign(index, _choose_fold(wanted[rarest], capacity, rng))
    for index in order:
        if fold[index] < 0:
            assign(index, _choose_fold([0.0] * num_folds, capacity, rng))
    # Rare multi-class layouts can leave a fold empty: it takes the last image of the largest.
    for empty in range(num_folds):
        if empty not in fold:
            sizes = Counter(fold)
            largest = max(sizes, key=lambda f: (sizes[f], -f))
            fold[max(i for i in order if fold[i] == largest)] = empty
    return fold


def _coco(images: list[dict], annotations: list[dict], categories, description: str) -> dict:
    return {
        "info": {"description": description},
        "licenses": [],
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }


def _link_image(source: str, folder: str) -> str:
    """Links (or, where links are not allowed, copies) an image into a fold's split folder,
    since an export's file names must stay inside their split; returns the link's name."""
    # "<split>__<name>": train/ and valid/ may both hold an image of the same name.
    name = f"{os.path.basename(os.path.dirname(source))}__{os.path.basename(source)}"
    link = os.path.join(folder, name)
    if os.path.lexists(link):
        os.remove(link)
    try:
        os.symlink(source, link)
    except OSError:
        shutil.copy2(source, link)
    return name


def fold_layout(classes: list[frozenset], folds: list[int], k: int, seed: int = 0) -> dict:
    """The images of fold `k`'s three splits: the fold itself is `test`, scored once at the
    end; the other folds are split again, stratified, into `train` and `valid`, which chooses
    the checkpoint (and stops training early). No image of `test` chooses anything.

    `valid` is one of max(K - 1, 2) parts of the other folds, about one fold's worth of
    images (a quarter of all with K = 2).

    Args:
        classes (list[frozenset[str]]): the classes present on each image.
        folds (list[int]): the fold of each image, as from `fold_assignments`.
        k (int): the fold scored.
        seed (int): seed of the split of the other folds.

    Returns:
        dict[str, list[int]]: "train", "valid", "test" -> indices into `classes`.

    Raises:
        DentalError: fewer than 2 images outside fold `k`.
    """
    num_folds = max(folds) + 1
    others = [i for i, f in enumerate(folds) if f != k]
    if len(others) < 2:
        raise DentalError(
            f"fold {k + 1}: {len(others)} image outside it, but training needs one to train on "
            "and one to choose the checkpoint with; pass fewer --folds or add images"
        )
    parts = min(max(num_folds - 1, 2), len(others))
    inner = fold_assignments([classes[i] for i in others], parts, seed + k + 1)
    return {
        "train": [i for i, part in zip(others, inner) if part != 0],
        "valid": [i for i, part in zip(others, inner) if part == 0],
        "test": [i for i, f in enumerate(folds) if f == k],
    }


def write_fold_export(
    folder: str, images: list[PooledImage], categories: list[dict], layout: dict, k: int
) -> dict[str, int]:
    """Writes fold `k` as an export with train/, valid/ and test/, images linked in.

    Args:
        folder (str): the fold's data folder; the split folders are created in it.
        images (list[PooledImage]): the pooled images.
        categories (list[dict]): their COCO categories.
        layout (dict[str, list[int]]): split -> indices into `images`, from `fold_layout`.
        k (int): the fold (0-based), for the files' descriptions.

    Returns:
        dict[str, int]: split -> number of images.
    """
    for split, indices in layout.items():
        members = [images[i] for i in indices]
        split_folder = os.path.join(folder, split)
        os.makedirs(split_folder, exist_ok=True)
        # The images first, so the JSON never names a missing file.
        records = [
            dict(pooled.image, file_name=_link_image(pooled.image["file_name"], split_folder))
            for pooled in members
        ]
        annotations = [a for pooled in members for a in pooled.annotations]
        description = f"cross-validation fold {k + 1}, {split}"
        write_json(
            os.path.join(split_folder, ANNOTATION_FILE),
            _coco(records, annotations, categories, description),
        )
    return {split: len(indices) for split, indices in layout.items()}
