"""Ranks unlabelled images by how much a label would teach the model, and writes pre-labels.

Four signals per image, each from 0 (nothing to learn) to 1, summed into the score:

- `class_confusion`: two detections of different classes on one region with close scores (the
  model hesitates between, say, caries and cavity);
- `near_threshold`: detections scoring close to the confidence threshold;
- `flip_disagreement`: the prediction of the horizontally flipped image, flipped back, does not
  match the plain one;
- `unsure_teeth`: the share of teeth without a confident outline (below the threshold, or an
  outline that moves when the image is flipped).
"""

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data.transforms import HFlipTransform
from detectron2.structures import Boxes, Instances, pairwise_iou
from tqdm import tqdm

from .coco_format import coco_dataset, instances_to_coco_annotations, masks_to_rles
from .config import DEFAULT_SCORE_THRESHOLD, DEFAULT_TOOTH_CLASSES
from .data import read_image
from .data.categories import is_tooth_class
from .errors import DentalError
from .file_io import atomic_write, write_json

__all__ = [
    "RankedImage",
    "flip_back",
    "rank_images",
    "score_image",
    "write_ranking",
]

logger = logging.getLogger(__name__)

SIGNALS = ("class_confusion", "near_threshold", "flip_disagreement", "unsure_teeth")
# Two detections of different classes with at least this box IoU cover one region.
SAME_REGION_IOU = 0.5
# A tooth outline is confident when its flipped-back mask overlaps it at least this much.
OUTLINE_IOU = 0.7


@dataclass
class RankedImage:
    """One image's place in the ranking.

    Attributes:
        path (str): the image file.
        score (float): the sum of the signals, 0 to 4; higher is worth labelling sooner.
        signals (dict[str, float]): each signal of `SIGNALS`, 0 to 1.
        reasons (list[str]): the signals that fired, most important first, in words.
        instances (Instances): the plain prediction, for pre-labels.
    """

    path: str
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    instances: Instances | None = None


def flip_back(instances: Instances) -> Instances:
    """Mirrors the predictions of a horizontally flipped image back onto the original.

    Args:
        instances (Instances): CPU predictions with `pred_boxes` (and maybe `pred_masks`).
    """
    flip = HFlipTransform(instances.image_size[1])
    fields = dict(instances.get_fields())
    boxes = flip.apply_box(instances.pred_boxes.tensor.numpy())
    fields["pred_boxes"] = Boxes(torch.from_numpy(boxes))
    if instances.has("pred_masks"):
        # A trailing channel axis: apply_image takes a 3-D array for HxWxC, not NxHxW.
        masks = flip.apply_image(instances.pred_masks.numpy()[..., None])[..., 0]
        fields["pred_masks"] = torch.from_numpy(np.ascontiguousarray(masks))
    return Instances(instances.image_size, **fields)


def _overlaps(a: Instances, b: Instances) -> np.ndarray:
    """IoU of each of `a` with each of `b`: masks when both have them, else boxes; 0 across
    classes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    if a.has("pred_masks") and b.has("pred_masks"):
        rles_a, rles_b = masks_to_rles(a.pred_masks), masks_to_rles(b.pred_masks)
        iou = np.asarray(mask_util.iou(rles_a, rles_b, [0] * len(b))).reshape(len(a), len(b))
    else:
        iou = pairwise_iou(a.pred_boxes, b.pred_boxes).numpy()
    same_class = a.pred_classes.numpy()[:, None] == b.pred_classes.numpy()[None, :]
    return np.where(same_class, iou, 0.0)


def _class_confusion(instances: Instances, floor: float, names: Sequence[str]):
    kept = instances[instances.scores >= floor]
    iou = pairwise_iou(kept.pred_boxes, kept.pred_boxes).numpy() if len(kept) else np.zeros(0)
    best, reason = 0.0, ""
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            if kept.pred_classes[i] == kept.pred_classes[j] or iou[i, j] < SAME_REGION_IOU:
                continue
            value = 1.0 - abs(float(kept.scores[i] - kept.scores[j]))
            if value > best:
                first, second = sorted((i, j), key=lambda k: -float(kept.scores[k]))
                best = value
                reason = (
                    f"class confusion: {names[kept.pred_classes[first]]} "
                    f"{float(kept.scores[first]):.2f} vs {names[kept.pred_classes[second]]} "
                    f"{float(kept.scores[second]):.2f} on one region"
                )
    return best, reason


def _near_threshold(instances: Instances, threshold: float, band: float, names: Sequence[str]):
    distance = (instances.scores - threshold).abs()
    near = torch.nonzero(distance < band).flatten()
    if not len(near):
        return 0.0, ""
    closest = int(near[distance[near].argmin()])
    value = 1.0 - float(distance[closest]) / band
    reason = (
        f"{len(near)} detection(s) within {band:g} of the {threshold:g} threshold (closest: "
        f"{names[instances.pred_classes[closest]]} {float(instances.scores[closest]):.2f})"
    )
    return value, reason


def _flip_agreement(plain: Instances, flipped: Instances, threshold: float, floor: float):
    """Best same-class IoU, in the other prediction (above `floor`), of each confident
    detection of either; matches (plain index -> IoU) for the plain ones."""
    plain_kept, flipped_kept = plain[plain.scores >= floor], flipped[flipped.scores >= floor]
    iou = _overlaps(plain_kept, flipped_kept)
    plain_best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(plain_kept))
    flipped_best = iou.max(axis=0) if iou.shape[0] else np.zeros(len(flipped_kept))
    confident = np.concatenate(
        [
            plain_best[plain_kept.scores.numpy() >= threshold],
            flipped_best[flipped_kept.scores.numpy() >= threshold],
        ]
    )
    return confident, plain_kept, plain_best


def _flip_disagreement(confident: np.ndarray):
    if not len(confident):
        return 0.0, ""
    agreement = float(confident.mean())
    reason = (
        f"flipped prediction overlaps the plain one by mean IoU {agreement:.2f} "
        f"({len(confident)} confident detections)"
    )
    return 1.0 - agreement, reason


def _unsure_teeth(plain_kept, plain_best, threshold: float, tooth_ids: Sequence[int]):
    is_tooth = np.isin(plain_kept.pred_classes.numpy(), list(tooth_ids))
    if not is_tooth.any():
        return 0.0, ""
    sure = (plain_kept.scores.numpy() >= threshold) & (plain_best >= OUTLINE_IOU)
    unsure = int((is_tooth & ~sure).sum())
    if not unsure:
        return 0.0, ""
    total = int(is_tooth.sum())
    return unsure / total, f"{unsure} of {total} teeth without a confident outline"


def score_image(
    plain: Instances,
    flipped: Instances,
    class_names: Sequence[str],
    tooth_classes: Sequence[str] = DEFAULT_TOOTH_CLASSES,
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    band: float = 0.2,
) -> tuple[float, dict[str, float], list[str]]:
    """Scores one image from its plain prediction and that of its mirror image.

    Args:
        plain (Instances): the prediction of the image, including detections down to
            `threshold - band`.
        flipped (Instances): the prediction of the horizontally flipped image, flipped back
            (see `flip_back`).
        class_names (Sequence[str]): class names in contiguous-id order.
        tooth_classes (Sequence[str]): names of the classes that are teeth (see
            `dental_d2.data.categories.is_tooth_class`).
        threshold (float): the confidence threshold a finding is reported at.
        band (float): how close to `threshold` a score counts as uncertain.

    Returns:
        tuple: the score (sum of the signals), the signals, and the reasons (most important
        first; "confident and consistent" when none fired).
    """
    floor = max(0.0, threshold - band)
    confident, plain_kept, plain_best = _flip_agreement(plain, flipped, threshold, floor)
    tooth_ids = [k for k, name in enumerate(class_names) if is_tooth_class(name, tooth_classes)]
    results = {
        "class_confusion": _class_confusion(plain, floor, class_names),
        "near_threshold": _near_threshold(plain, threshold, band, class_names),
        "flip_disagreement": _flip_disagreement(confident),
        "unsure_teeth": _unsure_teeth(plain_kept, plain_best, threshold, tooth_ids),
    }
    signals = {name: round(value, 4) for name, (value, _) in results.items()}
    fired = sorted((r for r in results.values() if r[0] > 0), key=lambda r: -r[0])
    reasons = [reason for _, reason in fired] or ["confident and consistent"]
    return round(sum(signals.values()), 4), signals, reasons


def rank_images(
    predictor,
    image_paths: Sequence[str],
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    band: float = 0.2,
) -> tuple[list[RankedImage], list[str]]:
    """Predicts each image and its mirror image and ranks the images, most informative first.

    Args:
        predictor (dental_d2.predictor.Predictor): built with a confidence threshold at most
            `threshold - band`, so that uncertain detections reach the signals.
        image_paths (Sequence[str]): image files.
        threshold (float): the confidence threshold findings are reported at.
        band (float): how close to `threshold` a score counts as uncertain.

    Returns:
        tuple[list[RankedImage], list[str]]: the ranking (ties keep the input order), and one
        message per image that could not be read.
    """
    tooth_classes = predictor.cfg.DENTAL.FINDINGS.TOOTH_CLASSES
    ranked, failures = [], []
    for path in tqdm(image_paths, desc="ranking", unit="image"):
        try:
            image = read_image(path, format="BGR")
        except DentalError as e:
            logger.warning("skipped: %s", e)
            failures.append(str(e))
            continue
        plain, flipped = predictor.predict_batch([image, np.ascontiguousarray(image[:, ::-1])])
        score, signals, reasons = score_image(
            plain, flip_back(flipped), predictor.class_names, tooth_classes, threshold, band
        )
        ranked.append(RankedImage(path, score, signals, reasons, plain))
    ranked.sort(key=lambda r: -r.score)
    return ranked, failures


def write_ranking(
    csv_path: str,
    coco_path: str,
    ranked: Sequence[RankedImage],
    file_names: dict[str, str],
    class_names: Sequence[str],
    top: int,
    threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> None:
    """Writes the ranking as CSV and the top images' predictions as a COCO file to correct.

    Args:
        csv_path (str): rank, image, score, the signals and the reasons ("; "-separated).
        coco_path (str): COCO file (as `predictions.coco.json` of tools/visualize.py) with the
            first `top` images and their detections scoring at least `threshold`.
        ranked (Sequence[RankedImage]): as from `rank_images`.
        file_names (dict[str, str]): image path -> the `file_name` to write (as it will be
            uploaded to the annotation tool).
        class_names (Sequence[str]): class names in contiguous-id order.
        top (int): how many images go into the COCO file.
        threshold (float): detections scoring below it are left out of the COCO file.
    """
    with atomic_write(csv_path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["rank", "image", "score", *SIGNALS, "reasons"])
        for rank, item in enumerate(ranked, start=1):
            signals = [item.signals[name] for name in SIGNALS]
            writer.writerow(
                [rank, file_names[item.path], item.score, *signals, "; ".join(item.reasons)]
            )
    images, annotations = [], []
    for image_id, item in enumerate(ranked[:top], start=1):
        height, width = item.instances.image_size
        images.append(
            {"id": image_id, "file_name": file_names[item.path], "height": height, "width": width}
        )
        kept = item.instances[item.instances.scores >= threshold]
        annotations += instances_to_coco_annotations(kept, image_id, first_id=len(annotations) + 1)
    write_json(coco_path, coco_dataset(images, annotations, class_names))
    logger.info(
        f"Ranked {len(ranked)} images into {csv_path}; pre-labels of the first "
        f"{len(images)} in {os.path.basename(coco_path)}"
    )
