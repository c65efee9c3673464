"""Per-tooth sensitivity and specificity on a hand-made case with a known answer."""

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from dental_d2.evaluation.per_tooth import ANY_LESION, per_tooth_scores

CATEGORIES = [
    {"id": 1, "name": "Caries"},
    {"id": 2, "name": "Cavity"},
    {"id": 3, "name": "Crack"},
    {"id": 4, "name": "Tooth"},
]
SIZE = 100


def _rect(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(x0, y0, x1, y1) -> dict:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    mask[y0:y1, x0:x1] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode()
    return rle


def _ground_truth() -> COCO:
    boxes = [
        # image 1: two teeth; a caries on the left one
        (1, 4, (0, 0, 40, 80)),
        (1, 4, (50, 0, 90, 80)),
        (1, 1, (10, 10, 20, 20)),
        # image 2: one tooth with a cavity
        (2, 4, (20, 20, 60, 90)),
        (2, 2, (30, 30, 40, 40)),
    ]
    annotations = [
        {"id": k + 1, "image_id": image, "category_id": cat, "iscrowd": 0,
         "segmentation": _rect(*box), "area": float((box[2] - box[0]) * (box[3] - box[1])),
         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
        for k, (image, cat, box) in enumerate(boxes)
    ]  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": [
            {"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.jpg"} for i in (1, 2)
        ],
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    coco.createIndex()
    return coco


def _result(image, category, box, score) -> dict:
    return {"image_id": image, "category_id": category, "segmentation": _rle(*box), "score": score}


def test_per_tooth_counts_flagged_teeth_against_the_known_answer():
    results = [
        # image 1: both teeth found; a caries on the left tooth (right), a cavity on the right
        # tooth (wrong: that tooth has nothing)
        _result(1, 4, (0, 0, 40, 78), 0.9),
        _result(1, 4, (50, 2, 90, 80), 0.9),
        _result(1, 1, (11, 11, 19, 19), 0.8),
        _result(1, 2, (60, 10, 70, 20), 0.7),
        # image 2: the tooth is not found (IoU < 0.5), so its cavity is missed whatever is said
        # of it; a low-scoring caries is below the threshold
        _result(2, 4, (20, 20, 35, 40), 0.9),
        _result(2, 2, (30, 30, 40, 40), 0.9),
        _result(2, 1, (50, 50, 55, 55), 0.2),
    ]
    scores = per_tooth_scores(
        _ground_truth(), results, tooth_classes=["Tooth"], score_threshold=0.5, iou_threshold=0.5
    )
    assert scores["teeth"] == 3 and scores["teeth_found"] == 2
    classes = scores["classes"]
    assert classes["Caries"] == {
        "with": 1, "flagged_with": 1, "without": 2, "flagged_without": 0,
        "sensitivity": 1.0, "specificity": 1.0,
    }  # fmt: skip
    assert classes["Cavity"] == {
        "with": 1, "flagged_with": 0, "without": 2, "flagged_without": 1,
        "sensitivity": 0.0, "specificity": 0.5,
    }  # fmt: skip
    assert classes["Crack"]["sensitivity"] is None and classes["Crack"]["specificity"] == 1.0
    assert classes[ANY_LESION] == {
        "with": 2, "flagged_with": 1, "without": 1, "flagged_without": 1,
        "sensitivity": 0.5, "specificity": 0.0,
    }  # fmt: skip


@pytest.mark.parametrize("threshold, flagged", [(0.5, 0), (0.1, 1)])
def test_per_tooth_keeps_only_lesions_at_the_score_threshold(threshold, flagged):
    results = [_result(2, 4, (20, 20, 60, 90), 0.9), _result(2, 2, (30, 30, 40, 40), 0.3)]
    scores = per_tooth_scores(
        _ground_truth(),
        results,
        tooth_classes=["Tooth"],
        score_threshold=threshold,
        iou_threshold=0.5,
    )
    # The tooth of image 2 is found either way; its cavity counts only when the score is kept.
    assert scores["classes"]["Cavity"]["flagged_with"] == flagged
