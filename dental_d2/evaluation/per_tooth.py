"""Scores by tooth, as a dentist reads a chart: for each ground-truth tooth, does it carry a
lesion, and did the model flag that tooth?

COCO AP counts lesion outlines; a dentist asks which teeth need treatment. Here every
ground-truth tooth is one case per lesion class (and one for "any lesion"):

- it *has* the class when a ground-truth lesion of that class lies on it (placed as
  `dental_d2.findings` places lesions: on the tooth covering most of the lesion's mask);
- the model *flags* it when a predicted tooth matches it (mask IoU >= the IoU threshold,
  greedily by score) and a predicted lesion of the class, scoring at least the threshold, is
  placed on that predicted tooth. A tooth the model did not find is flagged for nothing.

Sensitivity is flagged / has; specificity is not flagged / has not. pycocotools decodes the
masks and computes the IoUs; findings' placement is reused, so the rules are the report's own.
"""

from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ..data.categories import is_tooth_class
from ..findings import assign_findings

# The pooled case: any lesion class at all.
ANY_LESION = "any lesion"


def _tooth_matches(gt_teeth: list[dict], predicted_teeth: list[dict], iou_threshold: float):
    """Ground-truth tooth position -> predicted tooth position, matched greedily by score."""
    if not gt_teeth or not predicted_teeth:
        return {}
    order = sorted(range(len(predicted_teeth)), key=lambda i: -predicted_teeth[i]["score"])
    ious = mask_util.iou(
        [predicted_teeth[i]["segmentation"] for i in order],
        [t["segmentation"] for t in gt_teeth],
        [0] * len(gt_teeth),
    )
    matches = {}
    for row, predicted in enumerate(order):
        candidates = [
            (ious[row, g], g)
            for g in range(len(gt_teeth))
            if g not in matches and ious[row, g] >= iou_threshold
        ]
        if candidates:
            matches[max(candidates)[1]] = predicted
    return matches


def _lesions_by_tooth(annotations: list[dict], names: dict, tooth_classes, min_overlap):
    """Teeth (in input order) and, per tooth, the set of lesion classes placed on it."""
    if not annotations:
        return [], []
    masks = mask_util.decode([a["segmentation"] for a in annotations]).transpose(2, 0, 1)
    classes = [a["category_id"] for a in annotations]
    ids = sorted(set(classes))
    findings = assign_findings(
        masks,
        [ids.index(c) for c in classes],
        [names[c] for c in ids],
        tooth_classes=tooth_classes,
        min_overlap=min_overlap,
    )
    by_index = {t.index: {lesion.class_name for lesion in t.lesions} for t in findings.teeth}
    tooth_indices = [i for i, c in enumerate(classes) if is_tooth_class(names[c], tooth_classes)]
    return [annotations[i] for i in tooth_indices], [by_index[i] for i in tooth_indices]


def per_tooth_scores(
    coco_gt: COCO,
    results: list[dict],
    *,
    tooth_classes,
    score_threshold: float,
    iou_threshold: float,
    min_overlap: float = 0.1,
) -> dict:
    """Per-tooth sensitivity and specificity of each lesion class and of any lesion.

    Args:
        coco_gt (COCO): ground truth with masks; crowd annotations are left out.
        results (list[dict]): COCO "segm" results (RLE masks), category ids as in `coco_gt`.
        tooth_classes (Sequence[str]): class names that are teeth.
        score_threshold (float): predictions scoring below it are left out.
        iou_threshold (float): the least mask IoU of a predicted tooth matching a true one.
        min_overlap (float): the least share of a lesion on a tooth that places it there.

    Returns:
        dict: {"teeth": ground-truth teeth, "teeth_found": those a predicted tooth matches,
        "classes": {class or "any lesion": {"with": teeth that have it, "flagged_with": of
        those flagged, "without": teeth without it, "flagged_without": of those flagged,
        "sensitivity": .., "specificity": ..}}}; a ratio with nothing to count is None.
    """
    names = {c: coco_gt.cats[c]["name"] for c in coco_gt.getCatIds()}
    lesion_names = [n for n in names.values() if not is_tooth_class(n, tooth_classes)]
    predicted = defaultdict(list)
    for result in results:
        if result["score"] >= score_threshold:
            predicted[result["image_id"]].append(result)
    counts = {name: np.zeros(4, dtype=int) for name in [*lesion_names, ANY_LESION]}
    teeth = found = 0
    for image_id in coco_gt.getImgIds():
        gt = [
            {**a, "segmentation": coco_gt.annToRLE(a)}
            for a in coco_gt.imgToAnns.get(image_id, [])
            if not a.get("iscrowd", 0)
        ]
        gt_teeth, gt_lesions = _lesions_by_tooth(gt, names, tooth_classes, min_overlap)
        if not gt_teeth:
            continue
        pred_teeth, pred_lesions = _lesions_by_tooth(
            predicted[image_id], names, tooth_classes, min_overlap
        )
        matches = _tooth_matches(gt_teeth, pred_teeth, iou_threshold)
        teeth, found = teeth + len(gt_teeth), found + len(matches)
        for g, has in enumerate(gt_lesions):
            flagged = pred_lesions[matches[g]] if g in matches else set()
            for name in lesion_names:
                _count(counts[name], name in has, name in flagged)
            _count(counts[ANY_LESION], bool(has), bool(flagged & set(lesion_names)))
    return {
        "teeth": teeth,
        "teeth_found": found,
        "classes": {name: _rates(c) for name, c in counts.items()},
    }


def _count(counts: np.ndarray, has: bool, flagged: bool) -> None:
    # [with, flagged_with, without, flagged_without]
    counts[0 if has else 2] += 1
    counts[1 if has else 3] += int(flagged)


def _rates(counts: np.ndarray) -> dict:
    with_, flagged_with, without, flagged_without = (int(n) for n in counts)
    return {
        "with": with_,
        "flagged_with": flagged_with,
        "without": without,
        "flagged_without": flagged_without,
        "sensitivity": flagged_with / with_ if with_ else None,
        "specificity": (without - flagged_without) / without if without else None,
    }
