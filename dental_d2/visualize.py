"""Drawing predictions and ground truth: masks, boxes, tooth numbers and a findings summary, for
live predictions and for saved results beside their ground truth."""

import logging
import os
from collections import defaultdict
from collections.abc import Sequence

import matplotlib
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from .config import DEFAULT_SCORE_THRESHOLD
from .data import read_image, register_from_config
from .data.categories import thing_colors
from .data.image_files import overlay_names
from .drawing import class_colors, draw_overlay, label_points, plain_text
from .errors import DentalError
from .evaluation.saved_results import (
    check_results_fit_dataset,
    load_coco_results,
    results_to_instances,
)
from .file_io import make_output_dir, write_overlay
from .findings import Findings, findings_from_instances, summarize
from .instances import instance_arrays

logger = logging.getLogger(__name__)


def build_metadata(class_names: Sequence[str]) -> Metadata:
    """Returns drawing metadata (`thing_classes`, `thing_colors`) for a model's classes.

    Used when no dataset with these classes is registered; the colours follow the datasets' rule
    (`dental_d2.data.categories.thing_colors`). It is not added to the global `MetadataCatalog`.

    Args:
        class_names (Sequence[str]): class names in contiguous-id order.
    """
    return Metadata(
        name="dental_predictions",
        thing_classes=list(class_names),
        thing_colors=thing_colors(list(class_names)),
    )


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Metadata,
    *,
    findings: Findings | None = None,
    summary: str | None = None,
) -> np.ndarray:
    """Draws masks, boxes, class names and scores with detectron2's Visualizer.

    Colours come from `metadata.thing_colors` (one per class, not jittered, so a class looks
    the same in every image; see `dental_d2.drawing.class_colors`). Teeth are labelled with
    their number from `findings`. Masks are outlined and labels placed clear of each other by
    `dental_d2.drawing.draw_overlay`.

    Args:
        image_rgb (np.ndarray): HxWx3 RGB uint8.
        instances (Instances): predictions (`pred_*`, `scores`) or ground truth (`gt_*`).
        metadata (Metadata): with `thing_classes` and `thing_colors`.
        findings (Findings | None): the image's findings, to number the teeth.
        summary (str | None): a line written on a black band above the image, so that it
            hides nothing.

    Returns:
        np.ndarray: (H + band)xWx3 RGB uint8; HxWx3 without a summary.
    """
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if len(instances):
        fields = instance_arrays(instances)
        classes = fields.classes.tolist()
        palette = class_colors(metadata.thing_classes, metadata.get("thing_colors", None))
        labels = [plain_text(metadata.thing_classes[c]) for c in classes]
        if findings is not None:
            for tooth in findings.teeth:
                labels[tooth.index] += f" {tooth.number}"
        if fields.scores is not None:
            labels = [f"{label} {score:.0%}" for label, score in zip(labels, fields.scores)]
        draw_overlay(
            visualizer,
            boxes=fields.boxes,
            masks=None if fields.masks is None else fields.masks.astype(np.uint8),
            labels=labels,
            colors=[palette[c] for c in classes],
        )
    overlay = visualizer.get_output().get_image()
    if summary:
        # The labels' type size.
        font_size = label_points(overlay.shape[0], overlay.shape[1])
        overlay = np.concatenate([summary_band(summary, overlay.shape[1], font_size), overlay])
    return overlay


def summary_band(text: str, width: int, font_size: float) -> np.ndarray:
    """Returns a black band `width` pixels wide with one line of white text, shrunk to fit.

    Args:
        text (str): the line.
        width (int): the width of the image the band goes above.
        font_size (float): the font size in points before shrinking.

    Returns:
        np.ndarray: hxwx3 RGB uint8, h about 1.5 lines of text.
    """
    # Points to pixels at the figure dpi that detectron2's VisImage draws with.
    line_height = font_size * matplotlib.rcParams["figure.dpi"] / 72
    height = int(np.ceil(line_height * 1.5)) + 4
    band = Visualizer(np.zeros((height, width, 3), dtype=np.uint8))
    band.draw_text(
        plain_text(text), (4, 2), font_size=font_size, color="white", horizontal_alignment="left"
    )
    artist = band.output.ax.texts[-1]
    artist.set_bbox(None)  # the band itself is the background
    text_width = artist.get_window_extent(renderer=band.output.canvas.get_renderer()).width
    if text_width > width - 8:
        artist.set_fontsize(artist.get_fontsize() * (width - 8) / text_width)
    return band.get_output().get_image()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Puts two RGB images next to each other on white, `gap` pixels apart, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    return canvas


def _dataset_metadata(cfg, dataset_name: str):
    register_from_config(cfg)
    if dataset_name not in DatasetCatalog.list():
        prefix = cfg.DENTAL.DATASET_NAME + "_"
        registered = [name for name in DatasetCatalog.list() if name.startswith(prefix)]
        raise DentalError(
            f"{dataset_name}: no such dataset; registered from DENTAL.DATA_ROOT "
            f"{cfg.DENTAL.DATA_ROOT}: {', '.join(registered) or 'none'}; pass one as --dataset"
        )
    # Registration gives every dataset its thing_colors and id mapping.
    return MetadataCatalog.get(dataset_name)


def _draw_pair(
    cfg, image_rgb, truth: Instances, predictions: Instances, metadata, score_threshold: float
) -> np.ndarray:
    """Ground truth on the left, predictions on the right, each with its findings summary."""
    panels = []
    for title, instances, threshold in (
        ("ground truth", truth, None),
        ("predictions", predictions, score_threshold),
    ):
        findings = findings_from_instances(
            instances,
            metadata.thing_classes,
            tooth_classes=cfg.DENTAL.FINDINGS.TOOTH_CLASSES,
            min_overlap=cfg.DENTAL.FINDINGS.MIN_OVERLAP,
        )
        summary = f"{title}: {summarize(findings, threshold)}"
        panels.append(
            draw_instances(image_rgb, instances, metadata, findings=findings, summary=summary)
        )
    return side_by_side(*panels)


def render_saved_predictions(
    cfg,
    predictions_file: str,
    dataset_name: str,
    output_dir: str,
    *,
    confidence_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> list[str]:
    """Draws ground truth (left) beside saved predictions (right) for a registered dataset.

    The dataset is registered from the config (`DENTAL.DATA_ROOT`, `DENTAL.DATASET_NAME`).
    Category ids of the predictions are dataset ids, mapped through the dataset's
    `thing_dataset_id_to_contiguous_id`. Each side carries its findings summary.

    Args:
        cfg (CfgNode): a dental config.
        predictions_file (str): a COCOEvaluator `coco_instances_results.json`.
        dataset_name (str): e.g. "dental_test".
        output_dir (str): created if missing; gets one `<stem>.jpg` per image.
        confidence_threshold (float): predictions scoring below this are not drawn.

    Returns:
        list[str]: one message per image that could not be read.
    """
    metadata = _dataset_metadata(cfg, dataset_name)
    results = load_coco_results(predictions_file)
    id_map = metadata.thing_dataset_id_to_contiguous_id
    records = DatasetCatalog.get(dataset_name)
    check_results_fit_dataset(results, predictions_file, dataset_name, id_map, records)
    by_image = defaultdict(list)
    for r in results:
        if r["score"] >= confidence_threshold:
            by_image[r["image_id"]].append(r)

    make_output_dir(output_dir)
    names = overlay_names([record["file_name"] for record in records])
    failures = []
    for record, name in tqdm(
        list(zip(records, names)), desc=f"rendering {dataset_name}", unit="image"
    ):
        try:
            image_rgb = read_image(record["file_name"], format="RGB")
        except DentalError as e:
            logger.warning("skipped: %s", e)
            failures.append(str(e))
            continue
        size = image_rgb.shape[:2]
        truth = annotations_to_instances(record.get("annotations", []), size, mask_format="bitmask")
        predictions = results_to_instances(by_image[record["image_id"]], size, id_map)
        pair = _draw_pair(cfg, image_rgb, truth, predictions, metadata, confidence_threshold)
        write_overlay(os.path.join(output_dir, name), pair)
    written = len(records) - len(failures)
    logger.info(f"wrote {written} image{'' if written == 1 else 's'} to {output_dir}")
    return failures
