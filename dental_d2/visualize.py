"""Drawing predictions and ground truth: masks, boxes, T-numbered teeth and a findings summary, for
live predictions and for saved results beside their ground truth."""

import logging
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.structures import Instances
from tqdm import tqdm

from .config import DEFAULT_SCORE_THRESHOLD
from .data import load_registered_split, read_image, register_from_config
from .data.categories import is_tooth_class, thing_colors
from .data.image_files import overlay_names
from .drawing import class_colors, draw_overlay, drawn_scale, label_points, text_band
from .errors import DentalError
from .evaluation.saved_results import (
    check_results_fit_dataset,
    load_coco_results,
    results_to_instances,
)
from .file_io import make_output_dir, write_image, write_overlay
from .findings import (
    TOOTH_NUMBERS,
    Findings,
    findings_from_instances,
    summarize,
    tooth_label,
)
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


def instance_labels(classes, scores, class_names, findings: Findings | None = None) -> list[str]:
    """The label of each instance: class, T-number for a tooth, score ("Tooth T3 97%").

    Args:
        classes (Sequence[int]): contiguous class ids.
        scores (Sequence[float] | None): confidences; None for ground truth.
        class_names (Sequence[str]): names of the class ids.
        findings (Findings | None): the image's findings, to number the teeth.
    """
    labels = [class_names[c] for c in classes]
    for tooth in findings.teeth if findings is not None else ():
        labels[tooth.index] += f" {tooth_label(tooth.number)}"
    if scores is not None:
        labels = [f"{label} {score:.0%}" for label, score in zip(labels, scores)]
    return labels


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Metadata,
    *,
    findings: Findings | None = None,
    summary: str | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """Draws masks (or boxes), class names and scores, and teeth's T-numbers.

    Colours come from `metadata.thing_colors` (one per class, not jittered, so a class looks
    the same in every image; see `dental_d2.drawing.class_colors`). Teeth are labelled with
    their T-number from `findings` ("Tooth T3 97%"), and the band above says what T-numbers
    are (`dental_d2.findings.TOOTH_NUMBERS`). Masks are outlined and labels placed clear of
    each other by `dental_d2.drawing.draw_overlay`.

    Args:
        image_rgb (np.ndarray): HxWx3 RGB uint8.
        instances (Instances): predictions (`pred_*`, `scores`) or ground truth (`gt_*`).
        metadata (Metadata): with `thing_classes` and `thing_colors`.
        findings (Findings | None): the image's findings, to number the teeth.
        summary (str | None): text written, wrapped to the width, on a black band above the
            image, so that it hides nothing.
        scale (float | None): drawing pixels per photo pixel; None enlarges small photos
            (`dental_d2.drawing.drawn_scale`) and draws the others at their size.

    Returns:
        np.ndarray: (s*H + band)x(s*W)x3 RGB uint8 for scale s; no band without a summary.
    """
    if scale is None:
        scale = drawn_scale(*image_rgb.shape[:2])
    kwargs = {}
    if len(instances):
        fields = instance_arrays(instances)
        classes = fields.classes.tolist()
        palette = class_colors(metadata.thing_classes, metadata.get("thing_colors", None))
        kwargs = {
            "boxes": fields.boxes,
            "masks": fields.masks,
            "labels": instance_labels(classes, fields.scores, metadata.thing_classes, findings),
            "colors": [palette[c] for c in classes],
        }
    overlay = draw_overlay(image_rgb, scale=scale, **kwargs)
    if summary:
        paragraphs = [summary]
        if findings is not None and findings.teeth:
            paragraphs.append(TOOTH_NUMBERS)
        # The labels' type size.
        points = label_points(*overlay.shape[:2])
        overlay = np.concatenate([text_band(paragraphs, overlay.shape[1], points), overlay])
    return overlay


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


def render_ground_truth(dataset_name: str, output_dir, num_images: int = 3) -> list[str]:
    """Draws the ground truth of a few images as every overlay is drawn (`draw_instances`):
    class colours, outlined masks, labels on chips, T-numbered teeth and the findings band.

    Images with annotations are preferred. Teeth are the classes whose name says so, as for the
    colours (`dental_d2.data.categories.is_tooth_class`): no model config is at hand.

    Args:
        dataset_name (str): a dataset registered by `register_dental_splits`.
        output_dir (str or os.PathLike): folder for the JPEGs (created if needed).
        num_images (int): images to draw.

    Returns:
        list[str]: the files written.
    """
    metadata = MetadataCatalog.get(dataset_name)
    records = load_registered_split(dataset_name).dataset_dicts
    chosen = [d for d in records if d["annotations"]][:num_images]
    chosen += [d for d in records if not d["annotations"]][: num_images - len(chosen)]
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise DentalError(f"{output_dir}: cannot create the folder ({e}); choose another") from e
    tooth_classes = [name for name in metadata.thing_classes if is_tooth_class(name)]
    written = []
    for record in chosen:
        image = read_image(record["file_name"], format="RGB")
        truth = annotations_to_instances(
            record["annotations"], image.shape[:2], mask_format="bitmask"
        )
        findings = findings_from_instances(
            truth, metadata.thing_classes, tooth_classes=tooth_classes
        )
        summary = f"ground truth: {summarize(findings)}"
        drawn = draw_instances(image, truth, metadata, findings=findings, summary=summary)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, f"{dataset_name}_{stem}.jpg")
        if not write_image(path, drawn[:, :, ::-1]):
            raise DentalError(
                f"{path}: cannot write the drawing; check that the folder is writable"
            )
        written.append(path)
    return written
