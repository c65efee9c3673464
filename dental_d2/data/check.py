"""Checks a Roboflow COCO or YOLO-seg export before training: counts, sizes, repairs.

(`dental_d2.visualize.render_ground_truth` draws a few of its images.)"""

import logging
from collections import Counter
from dataclasses import dataclass, field

from detectron2.data import MetadataCatalog
from tabulate import tabulate

from .register import load_registered_split, register_dental_splits
from .roboflow import short_name

__all__ = ["SplitReport", "check_dataset", "format_report"]

logger = logging.getLogger(__name__)

# More distinct image sizes than this are summarised as min..max.
_MAX_LISTED_SIZES = 4


@dataclass
class SplitReport:
    """What `check_dataset` found in one split.

    Attributes:
        split (str): "train", "valid" or "test".
        dataset_name (str): the registered detectron2 name.
        json_file (str): the split's annotation file (a YOLO export's data.yaml).
        num_images (int): images listed (all kept, with or without annotations).
        num_annotations (int): annotations kept after repairs.
        class_counts (dict[str, tuple[int, int]]): class -> (annotations, images with one).
        num_empty_images (int): images without annotations (negatives).
        image_sizes (Counter): (height, width) -> number of images.
        mask_kinds (Counter): "polygon" and "RLE" -> number of annotations with such a mask.
        repairs (list[str]): one line per kind of repair made.
    """

    split: str
    dataset_name: str
    json_file: str
    num_images: int = 0
    num_annotations: int = 0
    class_counts: dict = field(default_factory=dict)
    num_empty_images: int = 0
    image_sizes: Counter = field(default_factory=Counter)
    mask_kinds: Counter = field(default_factory=Counter)
    repairs: list = field(default_factory=list)


def check_dataset(root, name: str = "dental") -> list[SplitReport]:
    """Registers, loads and validates every split of an export (decoding every image).

    Args:
        root (str or os.PathLike): the export's folder (COCO train/, valid/, test/; or YOLO
            data.yaml).
        name (str): prefix of the registered dataset names.

    Returns:
        list[SplitReport]: one per split found, in train, valid, test order.

    Raises:
        DentalError: the first unusable problem found; the message names the file and record.
    """
    reports = []
    for split, dataset_name in register_dental_splits(root, name).items():
        metadata = MetadataCatalog.get(dataset_name)
        loaded = load_registered_split(dataset_name)
        annotations, images_with, mask_kinds = Counter(), Counter(), Counter()
        for record in loaded.dataset_dicts:
            ids = [a["category_id"] for a in record["annotations"]]
            annotations.update(ids)
            images_with.update(set(ids))
            mask_kinds.update(
                "RLE" if isinstance(a["segmentation"], dict) else "polygon"
                for a in record["annotations"]
            )
        reports.append(
            SplitReport(
                split=split,
                dataset_name=dataset_name,
                json_file=loaded.json_file,
                num_images=len(loaded.dataset_dicts),
                num_annotations=sum(annotations.values()),
                class_counts={
                    c: (annotations[i], images_with[i])
                    for i, c in enumerate(metadata.thing_classes)
                },
                num_empty_images=sum(1 for d in loaded.dataset_dicts if not d["annotations"]),
                image_sizes=Counter((d["height"], d["width"]) for d in loaded.dataset_dicts),
                mask_kinds=mask_kinds,
                repairs=list(loaded.repairs),
            )
        )
    return reports


def _format_sizes(sizes: Counter) -> str:
    if len(sizes) <= _MAX_LISTED_SIZES:
        return ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(sizes.items()))
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    return (
        f"{len(sizes)} distinct, height {min(heights)}..{max(heights)}, "
        f"width {min(widths)}..{max(widths)}"
    )


def format_report(report: SplitReport) -> str:
    """Formats a split's report as a few lines of text with a per-class table.

    Args:
        report (SplitReport): as returned by `check_dataset`.
    """
    rows = [[name, n, images] for name, (n, images) in report.class_counts.items()]
    table = tabulate(rows, headers=["class", "annotations", "images"], tablefmt="pipe")
    problems = report.repairs or ["none"]
    masks = f"masks: {report.mask_kinds['polygon']} polygon, {report.mask_kinds['RLE']} RLE"
    if report.mask_kinds["RLE"]:
        # DentalDatasetMapper gives such images bitmasks (PolygonMasks cannot hold RLE).
        masks += " (trained as bitmasks)"
    lines = [
        f"{report.split} ({report.dataset_name}, {short_name(report.json_file)}): "
        f"{report.num_images} images, {report.num_annotations} annotations, "
        f"{report.num_empty_images} images without annotations",
        f"image sizes (HxW): {_format_sizes(report.image_sizes)}",
        masks,
        table,
        "repaired: " + "; ".join(problems),
    ]
    return "\n".join(lines)
