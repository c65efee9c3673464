"""Hand-built cases with known TP/FP/FN, and a brute-force check of the matching rule."""

import collections
import contextlib
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from dental_d2.evaluation import (
    best_f1_threshold,
    compute_detection_metrics,
    evaluate_task,
    greedy_match,
    match_predictions,
    pr_curve,
    precision_recall_f1,
    run_coco_eval,
)

CARIES, TOOTH = 1, 2
CLASSES = {CARIES: "Caries", TOOTH: "Tooth"}


def make_gt(annotations, num_images=2, size=(100, 100)):
    """A COCO ground truth from (image_id, category_id, [x, y, w, h], iscrowd) tuples."""
    height, width = size
    dataset = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "height": height, "width": width}
            for i in range(1, num_images + 1)
        ],
        "categories": [{"id": c, "name": n} for c, n in CLASSES.items()],
        "annotations": [],
    }
    for k, (image_id, category_id, box, *crowd) in enumerate(annotations, start=1):
        x, y, w, h = box
        dataset["annotations"].append(
            {
                "id": k,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": list(box),
                "area": w * h,
                "iscrowd": crowd[0] if crowd else 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
        )
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def metrics_of(coco_gt, results, iou_type="bbox", score_threshold=0.5, iou_threshold=0.5):
    images = match_predictions(coco_gt, results, iou_type, score_threshold, iou_threshold)
    return compute_detection_metrics(
        images, [CARIES, TOOTH], ["Caries", "Tooth"], iou_type, score_threshold, iou_threshold
    )


def counts(metrics, k):
    c = metrics.per_class[k]
    return c.tp, c.fp, c.fn


BOX_A = (10, 10, 20, 20)
BOX_B = (50, 50, 30, 30)


def test_precision_recall_f1_zero_denominators():
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(0, 3, 0) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(0, 0, 2) == (0.0, 0.0, 0.0)
    p, r, f1 = precision_recall_f1(3, 1, 2)
    assert (p, r) == (0.75, 0.6)
    assert f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_greedy_match_takes_highest_unmatched_iou_in_row_order():
    ious = np.array([[0.6, 0.9], [0.7, 0.95], [0.55, 0.1]])
    # Row 0 takes column 1 (0.9), row 1 then takes column 0 (0.7), row 2 finds nothing left.
    assert greedy_match(ious, 0.5).tolist() == [1, 0, -1]
    allowed = np.array([[True, False], [True, True], [True, True]])
    assert greedy_match(ious, 0.5, allowed=allowed).tolist() == [0, 1, -1]
    assert greedy_match(ious, 0.96).tolist() == [-1, -1, -1]
    assert greedy_match(np.zeros((2, 0)), 0.5).tolist() == [-1, -1]


def test_perfect_predictions():
    gt = make_gt([(1, CARIES, BOX_A), (1, TOOTH, BOX_B), (2, CARIES, BOX_B)])
    results = [det(1, CARIES, BOX_A, 0.9), det(1, TOOTH, BOX_B, 0.8), det(2, CARIES, BOX_B, 0.7)]
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm":
            results = [
                dict(r, segmentation=gt.annToRLE(a))
                for r, a in zip(results, gt.loadAnns([1, 2, 3]))
            ]
        m = metrics_of(gt, results, iou_type)
        assert counts(m, 0) == (2, 0, 0)
        assert counts(m, 1) == (1, 0, 0)
        assert (m.pooled.precision, m.pooled.recall, m.pooled.f1) == (1.0, 1.0, 1.0)
        assert m.confusion.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_missed_ground_truth_is_a_false_negative():
    gt = make_gt([(1, CARIES, BOX_A), (1, CARIES, BOX_B)])
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.9)])
    assert counts(m, 0) == (1, 0, 1)
    assert m.per_class[0].recall == 0.5
    assert m.confusion[0].tolist() == [1, 0, 1]  # row Caries: 1 found, 1 against background


def test_duplicate_of_a_true_positive_is_a_false_positive():
    gt = make_gt([(1, CARIES, BOX_A)])
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.9), det(1, CARIES, (11, 10, 20, 20), 0.8)])
    assert counts(m, 0) == (1, 1, 0)
    assert m.confusion[2].tolist() == [1, 0, 0]  # the duplicate: background row, Caries column


def test_wrong_class_is_fp_and_fn_and_off_diagonal():
    gt = make_gt([(1, CARIES, BOX_A)])
    m = metrics_of(gt, [det(1, TOOTH, BOX_A, 0.9)])
    assert counts(m, 0) == (0, 0, 1)
    assert counts(m, 1) == (0, 1, 0)
    # Row = ground truth Caries, column = predicted Tooth; nothing against background.
    assert m.confusion.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_cross_class_pass_does_not_take_ground_truth_matched_by_its_own_class():
    gt = make_gt([(1, CARIES, BOX_A)])
    m = metrics_of(gt, [det(1, TOOTH, BOX_A, 0.9), det(1, CARIES, BOX_A, 0.6)])
    assert counts(m, 0) == (1, 0, 0)
    assert counts(m, 1) == (0, 1, 0)
    assert m.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_prediction_below_score_threshold_is_ignored():
    gt = make_gt([(1, CARIES, BOX_A)])
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.49)])
    assert counts(m, 0) == (0, 0, 1)
    assert m.confusion.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    # At a lower threshold the same prediction counts.
    assert counts(metrics_of(gt, [det(1, CARIES, BOX_A, 0.49)], score_threshold=0.4), 0) == (
        1,
        0,
        0,
    )


def test_empty_images():
    gt = make_gt([(1, CARIES, BOX_A)], num_images=3)
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.9), det(2, TOOTH, BOX_B, 0.9)])
    assert counts(m, 1) == (0, 1, 0)
    assert m.confusion[2].tolist() == [0, 1, 0]
    assert (m.per_image[2].tp, m.per_image[2].fp, m.per_image[2].fn) == (0, 1, 0)
    # Image 3: no ground truth, no prediction: nothing counted.
    assert (m.per_image[3].tp, m.per_image[3].fp, m.per_image[3].fn) == (0, 0, 0)
    assert m.pooled.tp + m.pooled.fp + m.pooled.fn == 2


def test_crowd_annotations_are_not_ground_truth():
    gt = make_gt([(1, CARIES, BOX_A), (1, CARIES, BOX_B, 1)])
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.9)])
    assert counts(m, 0) == (1, 0, 0)  # the crowd region is not missed
    assert m.num_gt == [1, 0]
    # A prediction on the crowd region matches nothing: a false positive.
    m = metrics_of(gt, [det(1, CARIES, BOX_A, 0.9), det(1, CARIES, BOX_B, 0.8)])
    assert counts(m, 0) == (1, 1, 0)


def test_greedy_by_score_order_matters():
    # The higher-scored prediction overlaps GT1 best (0.67) and GT2 enough (0.54); the lower one
    # overlaps only GT1 (1.0; GT2 0.33). Greedy by score: the first takes GT1, the second finds
    # nothing. With the scores swapped both match.
    gt = make_gt([(1, CARIES, (0, 0, 10, 10)), (1, CARIES, (5, 0, 10, 10))])
    first, second = (2, 0, 10, 10), (0, 0, 10, 10)
    m = metrics_of(gt, [det(1, CARIES, second, 0.8), det(1, CARIES, first, 0.9)])
    assert counts(m, 0) == (1, 1, 1)
    m = metrics_of(gt, [det(1, CARIES, second, 0.9), det(1, CARIES, first, 0.8)])
    assert counts(m, 0) == (2, 0, 0)


def test_pooled_sums_over_classes():
    gt = make_gt(
        [(1, CARIES, BOX_A), (1, TOOTH, BOX_B), (2, TOOTH, BOX_A), (2, CARIES, (70, 0, 20, 20))]
    )
    results = [
        det(1, CARIES, BOX_A, 0.9),  # TP
        det(1, TOOTH, BOX_B, 0.9),  # TP
        det(1, TOOTH, (0, 60, 20, 20), 0.7),  # FP
        det(2, CARIES, BOX_A, 0.8),  # wrong class: Caries FP, Tooth FN
    ]
    m = metrics_of(gt, results)
    assert counts(m, 0) == (1, 1, 1)
    assert counts(m, 1) == (1, 1, 1)
    assert (m.pooled.tp, m.pooled.fp, m.pooled.fn) == (2, 2, 2)
    assert m.pooled.precision == 0.5
    assert m.pooled.f1 == 0.5
    assert m.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 1, 0]]


def test_iou_threshold_applies():
    gt = make_gt([(1, CARIES, (0, 0, 10, 10))])
    shifted = det(1, CARIES, (4, 0, 10, 10), 0.9)  # IoU 6/14 = 0.43
    assert counts(metrics_of(gt, [shifted]), 0) == (0, 1, 1)
    assert counts(metrics_of(gt, [shifted], iou_threshold=0.4), 0) == (1, 0, 0)


def test_pr_curve_and_best_f1_threshold():
    scores = np.array([0.6, 0.9, 0.7, 0.8])
    is_tp = np.array([False, True, True, False])
    thresholds, precision, recall = pr_curve(scores, is_tp, num_gt=2)
    assert thresholds.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]
    # F1: 0.667, 0.5, 0.8, 0.667 -> best at 0.7.
    threshold, f1 = best_f1_threshold(scores, is_tp, num_gt=2)
    assert threshold == 0.7
    assert f1 == pytest.approx(0.8)
    assert best_f1_threshold(np.array([0.9]), np.array([False]), 3) == (None, 0.0)


def test_pr_curve_keeps_equal_scores_together():
    thresholds, precision, recall = pr_curve(
        np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), num_gt=2
    )
    assert thresholds.tolist() == [0.9, 0.5]
    assert precision.tolist() == pytest.approx([1.0, 2 / 3])
    assert recall.tolist() == [0.5, 1.0]


def test_best_f1_threshold_from_matches():
    gt = make_gt([(1, CARIES, BOX_A), (2, CARIES, BOX_A)])
    results = [
        det(1, CARIES, BOX_A, 0.95),
        det(1, CARIES, BOX_B, 0.9),  # FP
        det(2, CARIES, BOX_A, 0.3),  # TP below the default threshold
    ]
    m = metrics_of(gt, results)
    assert counts(m, 0) == (1, 1, 1)
    threshold, f1 = m.best_f1[0]
    # Thresholds 0.95: F1 0.667; 0.9: 0.5; 0.3: P 2/3, R 1 -> 0.8.
    assert threshold == 0.3
    assert f1 == pytest.approx(0.8)
    assert m.best_f1[1] == (None, 0.0)


def test_evaluate_task_ap_matches_pycocotools_and_has_ap50():
    gt = make_gt([(1, CARIES, BOX_A), (1, TOOTH, BOX_B), (2, CARIES, BOX_B)])
    results = [
        det(1, CARIES, BOX_A, 0.9),
        det(1, TOOTH, (52, 50, 30, 30), 0.8),
        det(2, CARIES, (10, 10, 10, 10), 0.7),
    ]
    evaluation = evaluate_task(gt, results, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        from pycocotools.cocoeval import COCOeval

        coco_eval = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert evaluation.coco["AP"] == pytest.approx(coco_eval.stats[0] * 100)
    assert evaluation.coco["AP50"] == pytest.approx(coco_eval.stats[1] * 100)
    assert evaluation.class_ap[TOOTH]["AP50"] == pytest.approx(100.0)
    # Caries: one of two found at IoU >= 0.5, first in score order -> AP50 about 50.
    assert evaluation.class_ap[CARIES]["AP50"] == pytest.approx(50.5, abs=0.6)
    assert evaluation.coco["AP-Caries"] == pytest.approx(evaluation.class_ap[CARIES]["AP"])


# ---- brute force -----------------------------------------------------------------------------


def _box_iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0


def brute_force_counts(gt_anns, results, masks, iou_type, score_threshold, iou_threshold):
    """The rule written out plainly: per image and class, loop over sorted predictions.

    Returns {class: [tp, fp, fn]} and the set of matched (prediction index, annotation id).
    """
    out = {c: [0, 0, 0] for c in CLASSES}
    pairs = set()
    image_ids = {a["image_id"] for a in gt_anns} | {r["image_id"] for r in results}
    for image_id in image_ids:
        for c in CLASSES:
            gts = [
                a
                for a in gt_anns
                if a["image_id"] == image_id and a["category_id"] == c and not a["iscrowd"]
            ]
            preds = [
                r
                for r in results
                if r["image_id"] == image_id
                and r["category_id"] == c
                and r["score"] >= score_threshold
            ]
            preds = sorted(preds, key=lambda r: -r["score"])
            used = set()
            for p in preds:
                best, best_iou = None, -1.0
                for g in gts:
                    if g["id"] in used:
                        continue
                    if iou_type == "bbox":
                        iou = _box_iou(p["bbox"], g["bbox"])
                    else:
                        iou = _mask_iou(masks[("dt", p["index"])], masks[("gt", g["id"])])
                    if iou > best_iou:
                        best, best_iou = g, iou
                if best is not None and best_iou >= iou_threshold:
                    used.add(best["id"])
                    pairs.add((p["index"], best["id"]))
                    out[c][0] += 1
                else:
                    out[c][1] += 1
            out[c][2] += len(gts) - len(used)
    return out, pairs


def _random_mask(rng, height, width):
    mask = np.zeros((height, width), dtype=np.uint8)
    x, y = rng.integers(0, width - 12), rng.integers(0, height - 12)
    w, h = rng.integers(6, 30), rng.integers(6, 30)
    mask[y : y + h, x : x + w] = 1
    if rng.random() < 0.5:  # not a rectangle: cut a corner
        mask[y : y + h // 2, x : x + w // 2] = 0
    return mask


def _box_of(mask):
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _indexed_coco(images, annotations):
    """A pycocotools COCO over these records and the test's classes, indexed quietly."""
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in CLASSES.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _random_ground_truth(rng, images, objects_per_image, crowd_rate):
    """Random masks as COCO annotations, `objects_per_image` (low, high) a photo, and the masks
    by ("gt", annotation id)."""
    masks, annotations = {}, []
    for image in images:
        for _ in range(rng.integers(*objects_per_image)):
            mask = _random_mask(rng, image["height"], image["width"])
            ann_id = len(annotations) + 1
            masks[("gt", ann_id)] = mask
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image["id"],
                    "category_id": int(rng.choice(list(CLASSES))),
                    "segmentation": _rle(mask),
                    "bbox": _box_of(mask),
                    "area": float(mask.sum()),
                    "iscrowd": int(rng.random() < crowd_rate),
                }
            )
    return masks, annotations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_perturbed_ground_truth(seed):
    rng = np.random.default_rng(seed)
    height, width, num_images = 40, 40, 20
    images = [
        {"id": i, "height": height, "width": width, "file_name": f"{i}.png"}
        for i in range(num_images)
    ]
    # Crowded: same-class objects overlap.
    masks, annotations = _random_ground_truth(rng, images, (0, 8), crowd_rate=0.05)
    results = []
    for a in annotations:
        roll = rng.random()
        if roll < 0.15:
            continue  # dropped: a miss
        mask = masks[("gt", a["id"])].copy()
        if roll < 0.6:  # jittered: shifted by up to 4 pixels
            mask = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        category = a["category_id"]
        if rng.random() < 0.2:  # flipped class
            category = TOOTH if category == CARIES else CARIES
        copies = 2 if rng.random() < 0.1 else 1  # duplicates
        for _ in range(copies):
            results.append((a["image_id"], category, mask))
    for a, b in zip(annotations, annotations[1:]):  # one box over two neighbours
        if a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]:
            union = masks[("gt", a["id"])] | masks[("gt", b["id"])]
            results.append((a["image_id"], a["category_id"], union))
    for _ in range(15):  # false positives anywhere
        results.append(
            (
                int(rng.integers(num_images)),
                int(rng.choice(list(CLASSES))),
                _random_mask(rng, height, width),
            )
        )
    dts = []
    for index, (image_id, category, mask) in enumerate(results):
        if not mask.any():
            continue
        masks[("dt", index)] = mask
        dts.append(
            {
                "image_id": image_id,
                "category_id": category,
                "segmentation": _rle(mask),
                "bbox": _box_of(mask),
                "score": float(np.round(rng.random(), 2)),  # rounded: equal scores happen
                "index": index,
            }
        )

    coco = _indexed_coco(images, annotations)

    off_diagonal = 0
    for iou_type in ("bbox", "segm"):
        for score_threshold, iou_threshold in ((0.5, 0.5), (0.3, 0.7)):
            m = metrics_of(coco, dts, iou_type, score_threshold, iou_threshold)
            expected, expected_pairs = brute_force_counts(
                annotations, dts, masks, iou_type, score_threshold, iou_threshold
            )
            got = {c: list(counts(m, k)) for k, c in enumerate((CARIES, TOOTH))}
            assert got == expected, (iou_type, score_threshold, iou_threshold)
            pairs = {
                (p["index"], image.gt_annotations[g]["id"])
                for image in m.images
                for p, g in zip(image.predictions, image.matched_gt)
                if g >= 0 and p["score"] >= score_threshold
            }
            assert pairs == expected_pairs
            # The confusion matrix agrees with the counts.
            for k in range(2):
                assert m.confusion[k, k] == m.per_class[k].tp
                assert m.confusion[:, k].sum() == m.per_class[k].tp + m.per_class[k].fp
                assert m.confusion[k, :].sum() == m.per_class[k].tp + m.per_class[k].fn
            # The perturbations gave every kind of outcome, so the comparison means something.
            assert all(min(v) > 0 for v in got.values()) or iou_threshold > 0.5
            off_diagonal += m.confusion[:2, :2].sum() - np.trace(m.confusion[:2, :2])
    assert off_diagonal > 0  # class flips reached the confusion matrix


# ---- COCOeval's IoUs -------------------------------------------------------------------------


def _random_case(seed, num_images=8, size=40):
    """Random masks of both classes, and predictions near (or far from) them, as COCO."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": i, "height": size, "width": size, "file_name": f"{i}.png"}
        for i in range(1, num_images + 1)
    ]
    masks, annotations = _random_ground_truth(rng, images, (1, 6), crowd_rate=0.1)
    dts = []
    for a in annotations:
        for _ in range(rng.integers(1, 3)):
            shift = (int(rng.integers(-4, 5)), int(rng.integers(-4, 5)))
            mask = np.roll(masks[("gt", a["id"])], shift, axis=(0, 1))
            category = int(rng.choice(list(CLASSES)))  # often the other class
            masks[("dt", len(dts))] = mask
            dts.append(
                {
                    "image_id": a["image_id"],
                    "category_id": category,
                    "segmentation": _rle(mask),
                    "bbox": _box_of(mask),
                    "score": float(np.round(rng.random(), 2)),
                    "index": len(dts),
                }
            )
    coco = _indexed_coco(images, annotations)
    return coco, annotations, dts, masks


def _best_unmatched(p, gts, used, iou_of, iou_threshold):
    best, best_iou = None, -1.0
    for g in gts:
        if g["id"] not in used:
            iou = iou_of(p, g)
            if iou > best_iou:
                best, best_iou = g, iou
    return best if best is not None and best_iou >= iou_threshold else None


def brute_force_confusion(gt_anns, results, masks, iou_type, score_threshold, iou_threshold):
    """The whole rule, both passes, with every IoU computed here: the (3, 3) confusion matrix
    (rows ground truth Caries, Tooth, background; columns predictions)."""
    index = {CARIES: 0, TOOTH: 1}
    confusion = np.zeros((3, 3), dtype=np.int64)

    def iou_of(p, g):
        if iou_type == "bbox":
            return _box_iou(p["bbox"], g["bbox"])
        return _mask_iou(masks[("dt", p["index"])], masks[("gt", g["id"])])

    for image_id in {a["image_id"] for a in gt_anns} | {r["image_id"] for r in results}:
        gts = [a for a in gt_anns if a["image_id"] == image_id and not a["iscrowd"]]
        preds = [r for r in results if r["image_id"] == image_id and r["score"] >= score_threshold]
        preds = sorted(preds, key=lambda r: -r["score"])
        used, leftovers = set(), []
        for p in preds:
            same = [g for g in gts if g["category_id"] == p["category_id"]]
            g = _best_unmatched(p, same, used, iou_of, iou_threshold)
            if g is None:
                leftovers.append(p)
            else:
                used.add(g["id"])
                confusion[index[g["category_id"]], index[p["category_id"]]] += 1
        for p in leftovers:
            other = [g for g in gts if g["category_id"] != p["category_id"]]
            g = _best_unmatched(p, other, used, iou_of, iou_threshold)
            row = 2 if g is None else index[g["category_id"]]
            if g is not None:
                used.add(g["id"])
            confusion[row, index[p["category_id"]]] += 1
        for g in gts:
            if g["id"] not in used:
                confusion[index[g["category_id"]], 2] += 1
    return confusion


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_from_coco_evals_ious_equal_brute_force(seed):
    coco, annotations, dts, masks = _random_case(seed)
    off_diagonal = 0
    for iou_type in ("bbox", "segm"):
        for score_threshold, iou_threshold in ((0.5, 0.5), (0.2, 0.7)):
            evaluation = evaluate_task(
                coco, dts, iou_type, score_threshold=score_threshold, iou_threshold=iou_threshold
            )
            m = evaluation.metrics
            expected = brute_force_confusion(
                annotations, dts, masks, iou_type, score_threshold, iou_threshold
            )
            assert m.confusion.tolist() == expected.tolist(), (iou_type, score_threshold)
            for k in range(2):
                tp = int(expected[k, k])
                fp, fn = int(expected[:, k].sum()) - tp, int(expected[k, :].sum()) - tp
                c = m.per_class[k]
                assert (c.tp, c.fp, c.fn) == (tp, fp, fn)
                assert (c.precision, c.recall, c.f1) == precision_recall_f1(tp, fp, fn)
            off_diagonal += expected[:2, :2].sum() - np.trace(expected[:2, :2])
    assert off_diagonal > 0  # the cross-class pass was exercised


def test_matching_takes_coco_evals_ious_and_computes_only_the_cross_class_ones(
    count_cross_class_ious,
):
    gt = make_gt([(1, CARIES, BOX_A), (1, TOOTH, BOX_B), (2, CARIES, BOX_B)])
    results = [det(1, CARIES, BOX_A, 0.9), det(1, CARIES, BOX_B, 0.8), det(2, CARIES, BOX_B, 0.7)]
    coco_eval = run_coco_eval(gt, results, "bbox")
    computed = count_cross_class_ious()
    images = match_predictions(gt, results, "bbox", 0.5, 0.5, coco_eval=coco_eval)
    # Only the Caries prediction on the Tooth needs an IoU COCOeval did not compute.
    assert computed == [1]
    assert [image.matched_gt.tolist() for image in images] == [[0, -1], [0]]
    assert images[0].cross_matched_gt.tolist() == [-1, 1]


def test_coco_eval_of_other_results_or_few_max_dets_gives_the_same_matches():
    coco, _, dts, _ = _random_case(3)
    expected = metrics_of(coco, dts, "segm").confusion.tolist()
    # Another COCOeval's results: COCOeval runs again on these.
    other = run_coco_eval(coco, dts[:-1], "segm")
    images = match_predictions(coco, dts, "segm", 0.5, 0.5, coco_eval=other)
    got = compute_detection_metrics(images, [CARIES, TOOTH], list(CLASSES.values()), "segm")
    assert got.confusion.tolist() == expected
    # COCOeval computes IoUs of its top maxDets detections per image and class only.
    few = run_coco_eval(coco, dts, "segm")
    few.params.maxDets = [1]
    with contextlib.redirect_stdout(io.StringIO()):
        few.evaluate()
    per_class = collections.Counter((d["image_id"], d["category_id"]) for d in dts)
    assert any(per_class[key] > len(ious) for key, ious in few.ious.items() if len(ious))
    images = match_predictions(coco, dts, "segm", 0.5, 0.5, coco_eval=few)
    got = compute_detection_metrics(images, [CARIES, TOOTH], list(CLASSES.values()), "segm")
    assert got.confusion.tolist() == expected
