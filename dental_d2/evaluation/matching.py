"""Greedy score-ordered matching of COCO results to ground truth, the rule behind P/R/F1, on the
IoUs pycocotools' COCOeval computed for the AP."""

from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..config import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from .coco_eval import check_iou_type, coco_eval_ious, evaluated_results, run_coco_eval


def greedy_match(
    ious: np.ndarray,
    iou_threshold: float,
    allowed: np.ndarray | None = None,
    taken: np.ndarray | None = None,
) -> np.ndarray:
    """Matches predictions to ground truth, one prediction at a time in row order.

    Each row (a prediction; rows are sorted by descending score) takes the still-unmatched column
    (a ground truth) with the highest IoU when that IoU is at least `iou_threshold`. Equal IoUs go
    to the lower column index.

    Args:
        ious (np.ndarray): (P, G) IoUs between predictions (rows) and ground truths (columns).
        iou_threshold (float): the least IoU of a match.
        allowed (np.ndarray or None): (P, G) bool, the pairs that may match (for example, pairs
            of the same class). None allows every pair.
        taken (np.ndarray or None): (G,) bool, ground truths matched before; left unchanged.

    Returns:
        np.ndarray: (P,) int64, the column each row matched, or -1.
    """
    num_preds, num_gts = ious.shape
    matched = np.full(num_preds, -1, dtype=np.int64)
    if num_gts == 0:
        return matched
    taken = np.zeros(num_gts, dtype=bool) if taken is None else taken.copy()
    # -1 marks pairs that cannot match: every real IoU is >= 0.
    candidates = np.where(allowed, ious, -1.0) if allowed is not None else ious.astype(float)
    for row in range(num_preds):
        row_ious = np.where(taken, -1.0, candidates[row])
        best = int(np.argmax(row_ious))
        if row_ious[best] >= 0 and row_ious[best] >= iou_threshold:
            matched[row] = best
            taken[best] = True
    return matched


def pairwise_ious(
    coco_gt: COCO, predictions: list[dict], gt_annotations: list[dict], iou_type: str
) -> np.ndarray:
    """IoUs between predictions and ground truths of one image, as pycocotools computes them.

    Args:
        coco_gt (COCO): the ground truth; gives the image size to rasterise polygons.
        predictions (list[dict]): COCO results of the image.
        gt_annotations (list[dict]): COCO annotations of the image (none of them crowd).
        iou_type (str): "segm" (mask IoU on RLEs) or "bbox" (box IoU).

    Returns:
        np.ndarray: (len(predictions), len(gt_annotations)) float64.
    """
    check_iou_type(iou_type)
    if not predictions or not gt_annotations:
        return np.zeros((len(predictions), len(gt_annotations)))
    not_crowd = [0] * len(gt_annotations)
    if iou_type == "segm":
        pred_rles = [coco_gt.annToRLE(p) for p in predictions]
        gt_rles = [coco_gt.annToRLE(a) for a in gt_annotations]
        ious = mask_util.iou(pred_rles, gt_rles, not_crowd)
    else:
        pred_boxes = np.asarray([p["bbox"] for p in predictions], dtype=np.float64)
        gt_boxes = np.asarray([a["bbox"] for a in gt_annotations], dtype=np.float64)
        ious = mask_util.iou(pred_boxes, gt_boxes, not_crowd)
    return np.asarray(ious, dtype=np.float64).reshape(len(predictions), len(gt_annotations))


@dataclass
class ImageMatches:
    """How the predictions of one image matched its ground truth, for one task.

    Attributes:
        image_id (int): the COCO image id.
        gt_annotations (list[dict]): the image's non-crowd ground truth.
        predictions (list[dict]): all of the image's predictions, by descending score.
        matched_gt (np.ndarray): (P,) index into `gt_annotations` of the same-class ground truth
            each prediction matched when every prediction, whatever its score, is kept; -1 when
            none. Because matching is greedy by score, the matches at any score threshold are
            these matches restricted to the predictions scoring at least the threshold.
        cross_matched_gt (np.ndarray): (P,) for predictions at or above the score threshold that
            matched nothing of their own class, the other-class ground truth they matched in the
            confusion matrix's second pass; -1 otherwise.
    """

    image_id: int
    gt_annotations: list[dict]
    predictions: list[dict]
    matched_gt: np.ndarray
    cross_matched_gt: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        return np.asarray([p["score"] for p in self.predictions], dtype=np.float64)

    @property
    def pred_category_ids(self) -> np.ndarray:
        return np.asarray([p["category_id"] for p in self.predictions], dtype=np.int64)

    @property
    def gt_category_ids(self) -> np.ndarray:
        return np.asarray([a["category_id"] for a in self.gt_annotations], dtype=np.int64)

    def kept(self, score_threshold: float) -> np.ndarray:
        """(P,) bool, the predictions scoring at least `score_threshold`."""
        return self.scores >= score_threshold

    def gt_matched(self, score_threshold: float) -> np.ndarray:
        """(G,) bool, the ground truths a same-class prediction at the threshold matched."""
        hits = np.zeros(len(self.gt_annotations), dtype=bool)
        matched = self.matched_gt[self.kept(score_threshold)]
        hits[matched[matched >= 0]] = True
        return hits


def _ground_truth(coco_gt: COCO, image_id: int) -> list[dict]:
    """The image's annotations that count as ground truth: all but crowd regions."""
    return [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]


def _same_class_ious(
    coco_gt: COCO,
    coco_eval: COCOeval | None,
    image_id: int,
    predictions: list[dict],
    result_ids: list[int],
    iou_type: str,
) -> np.ndarray:
    """(P, G) IoUs of an image's results (in order; `result_ids` are their COCOeval ids) with
    its non-crowd ground truth of the same class; 0 across classes.

    They are COCOeval's; only detections past its `maxDets` per image and class, whose IoUs it
    does not compute, are computed here (as COCOeval would).
    """
    gt_annotations = _ground_truth(coco_gt, image_id)
    ious = np.zeros((len(result_ids), len(gt_annotations)))
    if coco_eval is None or not ious.size:
        return ious
    rows = {result_id: k for k, result_id in enumerate(result_ids)}
    columns = {a["id"]: g for g, a in enumerate(gt_annotations)}
    for cat_id in {a["category_id"] for a in gt_annotations}:
        found = coco_eval_ious(coco_eval, image_id, cat_id)
        if found is None:
            continue
        dt_ids, gt_ids, block = found
        kept = [j for j, gt_id in enumerate(gt_ids) if gt_id in columns]  # not crowd
        target = np.ix_([rows[d] for d in dt_ids], [columns[gt_ids[j]] for j in kept])
        ious[target] = block[:, kept]
        of_class = {r for r, p in enumerate(predictions) if p["category_id"] == cat_id}
        past = sorted(of_class - {rows[d] for d in dt_ids})
        if past:
            same = [g for g, a in enumerate(gt_annotations) if a["category_id"] == cat_id]
            ious[np.ix_(past, same)] = pairwise_ious(
                coco_gt, [predictions[r] for r in past], [gt_annotations[g] for g in same], iou_type
            )
    return ious


def match_image(
    coco_gt: COCO,
    image_id: int,
    predictions: list[dict],
    same_class_ious: np.ndarray,
    iou_type: str,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> ImageMatches:
    """Matches one image's predictions to its ground truth.

    Same-class pass (true positives), on COCOeval's IoUs: predictions, by descending score, each
    take the still-unmatched ground truth of their class with the highest IoU if that IoU is at
    least `iou_threshold` (`greedy_match`: COCOeval's rule, but equal IoUs go to the first
    ground truth, where COCOeval's `evaluateImg` takes the last). Crowd annotations (iscrowd=1)
    are left out: they are not ground truth, so they are never missed, and a prediction on one
    is a false positive like any other.

    Cross-class pass (the confusion matrix's off-diagonal), whose IoUs COCOeval does not
    compute: the predictions scoring at least `score_threshold` that matched nothing of their own
    class, by descending score, each take the still-unmatched ground truth of another class with
    the highest IoU if that IoU is at least `iou_threshold`; "still-unmatched" means not matched
    in the same-class pass at the threshold nor earlier in this pass.

    Args:
        coco_gt (COCO): the ground truth.
        image_id (int): the image.
        predictions (list[dict]): the image's COCO results (category ids as in `coco_gt`).
        same_class_ious (np.ndarray): (P, G) IoUs of the predictions, in the given order, with
            the image's non-crowd ground truth (in `coco_gt` order); read for same-class pairs
            only.
        iou_type (str): "segm" or "bbox".
        score_threshold (float): the least score of a prediction the cross-class pass uses.
        iou_threshold (float): the least IoU of a match.
    """
    gt_annotations = _ground_truth(coco_gt, image_id)
    scores = np.asarray([p["score"] for p in predictions], dtype=np.float64)
    # Stable, as COCOeval sorts: equal scores keep the results' order.
    order = np.argsort(-scores, kind="mergesort")
    predictions = [predictions[i] for i in order]
    pred_classes = np.asarray([p["category_id"] for p in predictions], dtype=np.int64)
    gt_classes = np.asarray([a["category_id"] for a in gt_annotations], dtype=np.int64)
    same_class = pred_classes[:, None] == gt_classes[None, :]
    ious = np.asarray(same_class_ious, dtype=np.float64)[order]
    matched_gt = greedy_match(ious, iou_threshold, allowed=same_class)

    cross_matched_gt = np.full(len(predictions), -1, dtype=np.int64)
    kept = scores[order] >= score_threshold
    unmatched = np.flatnonzero(kept & (matched_gt < 0))
    if len(unmatched) and len(gt_annotations):
        taken = np.zeros(len(gt_annotations), dtype=bool)
        hits = matched_gt[kept]
        taken[hits[hits >= 0]] = True
        cross_ious = pairwise_ious(
            coco_gt, [predictions[p] for p in unmatched], gt_annotations, iou_type
        )
        cross_matched_gt[unmatched] = greedy_match(
            cross_ious, iou_threshold, allowed=~same_class[unmatched], taken=taken
        )
    return ImageMatches(image_id, gt_annotations, predictions, matched_gt, cross_matched_gt)


def match_predictions(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    progress: bool = False,
    coco_eval: COCOeval | None = None,
) -> list[ImageMatches]:
    """Matches COCO results to ground truth, image by image (see `match_image` for the rule).

    Args:
        coco_gt (COCO): the ground truth.
        results (list[dict]): COCO results (`image_id`, `category_id` as in `coco_gt`, `score`,
            and `bbox` or `segmentation`); every image id must be in `coco_gt`.
        iou_type (str): "segm" or "bbox".
        score_threshold (float): the score threshold of the confusion matrix.
        iou_threshold (float): the least IoU of a match.
        progress (bool): show a progress bar.
        coco_eval (COCOeval or None): the evaluated COCOeval of these results (detectron2's
            COCOEvaluator's), whose IoUs are used; None, or one of other results or images,
            runs COCOeval here.

    Returns:
        list[ImageMatches]: one per image of `coco_gt`, in ascending image id order.
    """
    if not evaluated_results(coco_eval, coco_gt, results, iou_type):
        coco_eval = run_coco_eval(coco_gt, results, iou_type)
    by_image = {image_id: ([], []) for image_id in coco_gt.getImgIds()}
    for k, result in enumerate(results):
        predictions, result_ids = by_image[result["image_id"]]
        predictions.append(result)
        result_ids.append(k + 1)  # COCO.loadRes numbers the results from 1
    matches = []
    for image_id in tqdm(sorted(by_image), desc=f"Matching {iou_type}", disable=not progress):
        predictions, result_ids = by_image[image_id]
        ious = _same_class_ious(coco_gt, coco_eval, image_id, predictions, result_ids, iou_type)
        matches.append(
            match_image(
                coco_gt, image_id, predictions, ious, iou_type, score_threshold, iou_threshold
            )
        )
    return matches
