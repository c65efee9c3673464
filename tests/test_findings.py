"""Per-tooth findings on hand-built masks: assignment, numbering, summaries and JSON."""

import json

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from support import CLASSES

from dental_d2.findings import (
    TOOTH_NUMBERS,
    assign_findings,
    findings_from_instances,
    findings_to_dict,
    lesion_tooth_overlap,
    number_teeth,
    summarize,
)

CARIES, CAVITY, CRACK, TOOTH = range(4)
SIZE = (40, 60)


def rect(x0, y0, x1, y1, size=SIZE):
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_lesion_across_two_teeth_goes_to_the_larger_share():
    left_tooth = rect(0, 0, 20, 40)
    right_tooth = rect(20, 0, 40, 40)
    # 4 columns on the left tooth, 6 on the right one.
    lesion = rect(16, 10, 26, 20)
    findings = assign_findings(
        np.stack([right_tooth, lesion, left_tooth]),
        [TOOTH, CARIES, TOOTH],
        CLASSES,
        scores=[0.9, 0.8, 0.95],
    )
    assert [t.index for t in findings.teeth] == [2, 0]  # numbered left to right
    assert findings.teeth[0].lesions == []
    (placed,) = findings.teeth[1].lesions
    assert placed.index == 1 and placed.class_name == "Caries"
    assert placed.overlap == 0.6
    assert findings.unassigned == []


def test_lesion_on_no_tooth_is_unassigned():
    tooth = rect(0, 0, 20, 40)
    outside = rect(40, 10, 50, 20)
    barely = rect(10, 0, 30, 10)  # half on the tooth
    findings = assign_findings(
        np.stack([tooth, outside, barely]),
        [TOOTH, CRACK, CAVITY],
        CLASSES,
        scores=[0.9, 0.7, 0.6],
        min_overlap=0.6,
    )
    assert [lesion.index for lesion in findings.unassigned] == [1, 2]
    assert [lesion.overlap for lesion in findings.unassigned] == [0.0, 0.5]
    assert findings.teeth[0].lesions == []


def test_lesions_without_teeth_and_teeth_without_lesions():
    lesion_only = assign_findings(
        rect(5, 5, 10, 10)[None], [CARIES], CLASSES, scores=[0.5], tooth_classes=["Tooth"]
    )
    assert lesion_only.teeth == [] and len(lesion_only.unassigned) == 1
    # Said in plain words; "unassigned" stays the machine-readable key of findings.json.
    assert summarize(lesion_only) == "0 teeth; not on a detected tooth: caries 0.50"
    assert [les["class"] for les in findings_to_dict(lesion_only)["unassigned"]] == ["Caries"]

    teeth_only = assign_findings(
        np.stack([rect(0, 0, 10, 10), rect(20, 0, 30, 10)]), [TOOTH, TOOTH], CLASSES
    )
    assert [t.number for t in teeth_only.teeth] == [1, 2]
    assert summarize(teeth_only) == "2 teeth; no lesions"

    empty = assign_findings(np.zeros((0, *SIZE), dtype=bool), [], CLASSES)
    assert summarize(empty) == "no findings"
    assert findings_to_dict(empty) == {
        "summary": "no findings",
        "tooth_numbers": TOOTH_NUMBERS,
        "teeth": [],
        "unassigned": [],
    }

    # Predictions say what was looked for and at what confidence: a miss is no negative finding.
    assert summarize(teeth_only, 0.5) == "2 teeth; no lesion found at score >= 0.5"
    assert summarize(empty, 0.25) == "no tooth or lesion found at score >= 0.25"
    assert findings_to_dict(empty, 0.5)["summary"] == "no tooth or lesion found at score >= 0.5"


def test_teeth_are_numbered_by_mask_centroid_not_box():
    # An L-shaped tooth whose box starts at x=0 but whose mass lies at the right.
    tilted = rect(30, 0, 40, 40)
    tilted[35:40, 0:30] = True
    upright = rect(12, 0, 22, 30)
    order = number_teeth([tilted, upright])
    assert order == [1, 0]
    # An empty mask falls back to its box centre.
    empty = np.zeros(SIZE, dtype=bool)
    assert number_teeth([tilted, empty], np.array([[0, 0, 40, 40], [0, 0, 4, 4]])) == [1, 0]


def test_overlap_is_share_of_the_lesion():
    teeth = np.stack([rect(0, 0, 30, 40), rect(30, 0, 60, 40)])
    shares = lesion_tooth_overlap(rect(25, 0, 35, 1), teeth)
    np.testing.assert_allclose(shares, [0.5, 0.5])
    np.testing.assert_allclose(lesion_tooth_overlap(np.zeros(SIZE, bool), teeth), [0, 0])


def test_summary_lists_lesions_per_tooth_by_score():
    teeth = [rect(x, 0, x + 10, 40) for x in range(0, 50, 10)]
    caries = rect(12, 5, 15, 8)
    crack = rect(11, 20, 14, 30)
    findings = assign_findings(
        np.stack([*teeth, crack, caries]),
        [TOOTH] * 5 + [CRACK, CARIES],
        CLASSES,
        scores=[0.99] * 5 + [0.55, 0.91],
    )
    # T-numbers, so that no one reads an FDI or Universal tooth number into them.
    assert summarize(findings) == "5 teeth; T2: caries 0.91, crack 0.55"
    data = json.loads(json.dumps(findings_to_dict(findings)))
    assert "not FDI or Universal" in data["tooth_numbers"]
    assert "left to right" in data["tooth_numbers"]
    tooth = data["teeth"][1]
    assert tooth["number"] == 2 and tooth["label"] == "T2"
    assert tooth["box"] == [10.0, 0.0, 20.0, 40.0]
    assert [(les["class"], les["score"], les["overlap"]) for les in tooth["lesions"]] == [
        ("Caries", 0.91, 1.0),
        ("Crack", 0.55, 1.0),
    ]


def _instances(masks, classes, scores=None, prefix="pred"):
    instances = Instances(SIZE)
    masks = torch.as_tensor(np.stack(masks))
    boxes = BitMasks(masks).get_bounding_boxes()
    instances.set(f"{prefix}_boxes", boxes if prefix == "pred" else Boxes(boxes.tensor))
    instances.set(f"{prefix}_classes", torch.tensor(classes))
    instances.set(f"{prefix}_masks", masks if prefix == "pred" else BitMasks(masks))
    if scores is not None:
        instances.scores = torch.tensor(scores)
    return instances


def test_findings_from_predictions_and_ground_truth():
    masks = [rect(30, 0, 60, 40), rect(0, 0, 30, 40), rect(2, 2, 6, 6)]
    predicted = findings_from_instances(
        _instances(masks, [TOOTH, TOOTH, CAVITY], [0.9, 0.8, 0.7]),
        CLASSES,
        tooth_classes=["tooth"],  # compared case-insensitively
    )
    assert summarize(predicted) == "2 teeth; T1: cavity 0.70"
    truth = findings_from_instances(_instances(masks, [TOOTH, TOOTH, CAVITY], prefix="gt"), CLASSES)
    assert summarize(truth) == "2 teeth; T1: cavity"
    assert truth.teeth[0].score is None


def test_findings_from_boxes_when_there_are_no_masks():
    instances = Instances(SIZE)
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 40.0], [5.0, 5.0, 10.0, 10.0]]))
    instances.pred_classes = torch.tensor([TOOTH, CRACK])
    instances.scores = torch.tensor([0.9, 0.6])
    findings = findings_from_instances(instances, CLASSES)
    assert findings.teeth[0].lesions[0].overlap == 1.0
