"""Precision, recall, F1, PR curves and confusion matrices from matches; COCO AP per class."""

import logging
from dataclasses import dataclass, field

import numpy as np
from pycocotools.cocoeval import COCOeval

from ..config import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from .matching import ImageMatches

logger = logging.getLogger(__name__)

# COCOeval.stats indices, named as detectron2's COCOEvaluator names them.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKGROUND = "background"


def precision_recall_f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 2PR/(P+R), each 0 when undefined.

    Args:
        tp (float): true positives.
        fp (float): false positives.
        fn (float): false negatives.
    """
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def pr_curve(
    scores: np.ndarray, is_tp: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as the threshold (score >= threshold).

    Args:
        scores (np.ndarray): (N,) scores of one class's predictions over the dataset.
        is_tp (np.ndarray): (N,) bool, whether each prediction is a true positive when all
            predictions are kept (greedy matching by score makes this hold at every threshold).
        num_gt (int): the class's ground-truth count.

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray]: thresholds (descending), precision and recall,
        one entry per distinct score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_tp = np.asarray(is_tp, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_tp = scores[order], is_tp[order]
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    # The last prediction of each run of equal scores: a threshold keeps all of a run or none.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else []
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_gt if num_gt > 0 else np.zeros_like(tp)
    return scores[last], precision, recall


def best_f1_threshold(
    scores: np.ndarray, is_tp: np.ndarray, num_gt: int
) -> tuple[float | None, float]:
    """The score threshold that maximises F1, and that F1.

    Candidates are the distinct prediction scores; among equal F1s the highest threshold wins
    (fewest predictions for the same F1).

    Args:
        scores (np.ndarray): (N,) scores of one class's predictions over the dataset.
        is_tp (np.ndarray): (N,) bool, true positive when all predictions are kept.
        num_gt (int): the class's ground-truth count.

    Returns:
        tuple[float or None, float]: (threshold, F1); (None, 0.0) when no threshold finds a true
        positive.
    """
    thresholds, precision, recall = pr_curve(scores, is_tp, num_gt)
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2 * precision * recall / np.maximum(denominator, 1e-12), 0.0)
    if not len(f1) or f1.max() <= 0:
        return None, 0.0
    best = int(np.argmax(f1))  # first maximum = highest threshold, thresholds descend
    return float(thresholds[best]), float(f1[best])


@dataclass
class ClassMetrics:
    """Detection counts and metrics of one class (or pooled) at one score and IoU threshold."""

    tp: int
    fp: int
    fn: int
    precision: float = field(init=False)
    recall: float = field(init=False)
    f1: float = field(init=False)

    def __post_init__(self):
        self.precision, self.recall, self.f1 = precision_recall_f1(self.tp, self.fp, self.fn)

    def as_dict(self) -> dict:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass
class DetectionMetrics:
    """Everything dental_d2 derives from the matches of one task.

    Attributes:
        iou_type (str): "segm" or "bbox".
        category_ids (list[int]): the classes, ascending dataset ids.
        class_names (list[str]): their names, same order.
        score_threshold (float): predictions below it are not counted.
        iou_threshold (float): the least IoU of a match.
        per_class (list[ClassMetrics]): counts per class, same order as `category_ids`.
        pooled (ClassMetrics): the sums over classes.
        confusion (np.ndarray): (K+1, K+1) counts; rows are ground-truth classes then
            "background" (predictions that matched nothing), columns are predicted classes then
            "background" (ground truths nothing matched).
        pr_curves (list[tuple]): per class, (thresholds, precision, recall) over all scores.
        best_f1 (list[tuple]): per class, (threshold or None, F1) maximising F1.
        num_gt (list[int]): ground-truth count per class.
        per_image (dict[int, ClassMetrics]): pooled counts per image id.
        images (list[ImageMatches]): the matches these came from.
    """

    iou_type: str
    category_ids: list[int]
    class_names: list[str]
    score_threshold: float
    iou_threshold: float
    per_class: list[ClassMetrics]
    pooled: ClassMetrics
    confusion: np.ndarray
    pr_curves: list[tuple]
    best_f1: list[tuple]
    num_gt: list[int]
    per_image: dict
    images: list[ImageMatches]

    @property
    def confusion_labels(self) -> list[str]:
        return [*self.class_names, BACKGROUND]


def _count_confusion(
    confusion: np.ndarray,
    image: ImageMatches,
    kept_classes: np.ndarray,
    kept: np.ndarray,
    gt_classes: np.ndarray,
) -> None:
    """Adds one image to the (K + 1, K + 1) confusion matrix, background last.

    Same-class matches go on the diagonal, cross-class matches off it, leftovers against
    background; each ground truth and each kept prediction is counted once.

    Args:
        confusion (np.ndarray): the matrix, rows ground truth and columns predictions.
        image (ImageMatches): the image's matches.
        kept_classes (np.ndarray): class index of each kept prediction.
        kept (np.ndarray): the kept predictions' indices in `image`.
        gt_classes (np.ndarray): class index of each ground truth.
    """
    background = len(confusion) - 1
    gt_used = np.zeros(len(gt_classes), dtype=bool)
    for p, k in zip(kept, kept_classes):
        if image.matched_gt[p] >= 0:
            g = image.matched_gt[p]
        elif image.cross_matched_gt[p] >= 0:
            g = image.cross_matched_gt[p]
        else:
            confusion[background, k] += 1
            continue
        gt_used[g] = True
        confusion[gt_classes[g], k] += 1
    for g in np.flatnonzero(~gt_used):
        confusion[gt_classes[g], background] += 1


def _class_curves(
    all_scores: list[list[float]], all_tp: list[list[bool]], num_gt: np.ndarray
) -> tuple[list[tuple], list[tuple]]:
    """Each class's PR curve and best-F1 threshold from its predictions' scores and hits.

    Args:
        all_scores (list[list[float]]): per class, the score of every prediction.
        all_tp (list[list[bool]]): per class, whether each of them matched a ground truth.
        num_gt (np.ndarray): per class, the number of ground truths.
    """
    curves, best = [], []
    for scores, hits, count in zip(all_scores, all_tp, num_gt):
        scores, hits = np.asarray(scores), np.asarray(hits)
        curves.append(pr_curve(scores, hits, int(count)))
        best.append(best_f1_threshold(scores, hits, int(count)))
    return curves, best


def compute_detection_metrics(
    images: list[ImageMatches],
    category_ids: list[int],
    class_names: list[str],
    iou_type: str,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> DetectionMetrics:
    """Counts TP/FP/FN per class, per image and pooled, the confusion matrix and PR curves.

    Args:
        images (list[ImageMatches]): from `match_predictions` (at this score threshold).
        category_ids (list[int]): the classes to report, ascending.
        class_names (list[str]): their names.
        iou_type (str): "segm" or "bbox", recorded in the result.
        score_threshold (float): predictions scoring below it are not counted.
        iou_threshold (float): the IoU threshold the matches used, recorded in the result.
    """
    num_classes = len(category_ids)
    index = {cat_id: k for k, cat_id in enumerate(category_ids)}
    confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    counts = np.zeros((3, num_classes), dtype=np.int64)  # TP, FP, FN per class
    all_scores = [[] for _ in range(num_classes)]
    all_tp = [[] for _ in range(num_classes)]
    per_image = {}

    for image in images:
        pred_k = np.asarray([index[c] for c in image.pred_category_ids], dtype=np.int64)
        gt_k = np.asarray([index[c] for c in image.gt_category_ids], dtype=np.int64)
        kept, hit = image.scores >= score_threshold, image.matched_gt >= 0
        for k, score, is_tp in zip(pred_k, image.scores, hit):
            all_scores[k].append(score)
            all_tp[k].append(is_tp)
        image_gt = np.bincount(gt_k, minlength=num_classes)
        image_tp = np.bincount(pred_k[kept & hit], minlength=num_classes)
        image_fp = np.bincount(pred_k[kept & ~hit], minlength=num_classes)
        image_counts = np.stack([image_tp, image_fp, image_gt - image_tp])
        counts += image_counts
        per_image[image.image_id] = ClassMetrics(*(int(n) for n in image_counts.sum(axis=1)))
        _count_confusion(confusion, image, pred_k[kept], np.flatnonzero(kept), gt_k)

    num_gt = counts[0] + counts[2]  # TP + FN
    curves, best = _class_curves(all_scores, all_tp, num_gt)
    per_class = [ClassMetrics(*(int(n) for n in counts[:, k])) for k in range(num_classes)]
    pooled = ClassMetrics(*(int(n) for n in counts.sum(axis=1)))
    return DetectionMetrics(
        iou_type=iou_type,
        category_ids=list(category_ids),
        class_names=list(class_names),
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        per_class=per_class,
        pooled=pooled,
        confusion=confusion,
        pr_curves=curves,
        best_f1=best,
        num_gt=[int(n) for n in num_gt],
        per_image=per_image,
        images=images,
    )


def coco_summary(coco_eval: COCOeval | None, class_names: dict[int, str]) -> dict:
    """COCO AP in percent, as detectron2 reports it: AP, AP50, ..., and "AP-<class>".

    Args:
        coco_eval (COCOeval or None): a summarised COCOeval; None gives NaNs.
        class_names (dict[int, str]): category id -> name.
    """
    if coco_eval is None:
        return {name: float("nan") for name in COCO_METRIC_NAMES}
    summary = {
        name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
        for i, name in enumerate(COCO_METRIC_NAMES)
    }
    if len(class_names) > 1:
        for cat_id, values in per_class_ap(coco_eval).items():
            summary[f"AP-{class_names[cat_id]}"] = values["AP"]
    return summary


def per_class_ap(coco_eval: COCOeval | None, category_ids: list[int] | None = None) -> dict:
    """AP (IoU 0.50:0.95) and AP50 per class, in percent, from COCOeval's precision array.

    Args:
        coco_eval (COCOeval or None): an accumulated COCOeval; None gives NaNs.
        category_ids (list[int] or None): the classes wanted; by default COCOeval's.

    Returns:
        dict[int, dict]: category id -> {"AP": .., "AP50": ..}; NaN where COCOeval has no value
        (a class with no ground truth).
    """
    if coco_eval is None:
        return {c: {"AP": float("nan"), "AP50": float("nan")} for c in category_ids or []}
    # precision: (iou, recall, class, area range, max dets); area "all", the largest maxDets.
    precision = coco_eval.eval["precision"]
    cat_ids = list(coco_eval.params.catIds)
    out = {}
    for cat_id in category_ids if category_ids is not None else cat_ids:
        if cat_id not in cat_ids:
            out[cat_id] = {"AP": float("nan"), "AP50": float("nan")}
            continue
        k = cat_ids.index(cat_id)
        values = {}
        for name, rows in (("AP", precision[:, :, k, 0, -1]), ("AP50", precision[0, :, k, 0, -1])):
            valid = rows[rows > -1]
            values[name] = float(np.mean(valid) * 100) if valid.size else float("nan")
        out[cat_id] = values
    return out
