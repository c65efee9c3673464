"""pycocotools' COCOeval, run once per evaluation as detectron2's COCOEvaluator runs it, and the
IoUs it computed, read through its public attributes so that the matching computes them once."""

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")


def check_iou_type(iou_type: str):
    """Raises ValueError unless `iou_type` is "bbox" or "segm"."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")


def run_coco_eval(coco_gt: COCO, results: list[dict], iou_type: str) -> COCOeval | None:
    """Runs pycocotools' COCOeval the way detectron2's COCOEvaluator does.

    For "segm" the results' boxes are dropped so that COCOeval's small/medium/large use the mask
    area. The results are copied: `COCO.loadRes` writes into them.

    Args:
        coco_gt (COCO): the ground truth.
        results (list[dict]): COCO results, category ids as in `coco_gt`.
        iou_type (str): "segm" or "bbox".

    Returns:
        COCOeval or None: evaluated, accumulated and summarised; None when there are no results
        (COCOeval cannot load an empty list).
    """
    check_iou_type(iou_type)
    if not results:
        return None
    results = [copy.copy(r) for r in results]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    # COCOeval prints its progress and summary; detectron2 logs the numbers instead.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def evaluated_results(
    coco_eval: COCOeval | None, coco_gt: COCO, results: list[dict], iou_type: str
) -> bool:
    """Whether `coco_eval` evaluated exactly `results` (loaded in this order, so result k has
    id k + 1) on every image and class of `coco_gt`."""
    if coco_eval is None or not hasattr(coco_eval, "ious") or coco_eval.cocoGt is not coco_gt:
        return False
    params = coco_eval.params
    if params.iouType != iou_type or not params.useCats:
        return False
    if not set(coco_gt.getImgIds()) <= set(params.imgIds):
        return False
    if not set(coco_gt.getCatIds()) <= set(params.catIds):
        return False
    dts = coco_eval.cocoDt.anns
    fields = ("image_id", "category_id", "score")
    return len(dts) == len(results) and all(
        k + 1 in dts and all(dts[k + 1][f] == r[f] for f in fields) for k, r in enumerate(results)
    )


def coco_eval_ious(coco_eval: COCOeval, image_id: int, cat_id: int) -> tuple | None:
    """The IoUs COCOeval computed between one image's detections and ground truth of one class.

    COCOeval keeps them in `ious[image_id, cat_id]`: rows are the detections by descending score
    (ties in loading order), at most `params.maxDets[-1]` of them; columns are the ground truths
    (crowd ones too) in the order `COCO.getAnnIds` gives.

    Args:
        coco_eval (COCOeval): evaluated (`evaluate()` has run), with `useCats`.
        image_id (int): the image.
        cat_id (int): the class.

    Returns:
        tuple or None: the detections' ids, the ground truths' annotation ids and their (D, G)
        IoUs; None when the image has no detection or no ground truth of the class.
    """
    gt_ids = coco_eval.cocoGt.getAnnIds(imgIds=[image_id], catIds=[cat_id])
    dts = coco_eval.cocoDt.loadAnns(coco_eval.cocoDt.getAnnIds(imgIds=[image_id], catIds=[cat_id]))
    if not dts or not gt_ids:
        return None
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")  # as COCOeval sorts
    order = order[: coco_eval.params.maxDets[-1]]
    ious = np.asarray(coco_eval.ious[image_id, cat_id], dtype=np.float64)
    return [dts[k]["id"] for k in order], gt_ids, ious.reshape(len(order), len(gt_ids))
