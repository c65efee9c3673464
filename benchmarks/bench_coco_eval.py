"""Times pycocotools' COCOeval (segm + bbox) against dental_d2's P/R/F1 matching, which runs on
the IoUs of the COCOeval timed before it, as `DentalEvaluator` matches.

Builds a synthetic COCO ground truth (polygons, 4 classes) and perturbed RLE predictions in a
temporary folder, then prints seconds per step and per 100 images::

    python benchmarks/bench_coco_eval.py --images 150

With `faster-coco-eval` installed, it is timed too and its numbers are compared to pycocotools'.
"""

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from dental_d2.evaluation import compute_detection_metrics, match_predictions, run_coco_eval

CLASSES = ["Caries", "Cavity", "Crack", "Tooth"]


def _ellipse(rng, cx, cy, rx, ry, points=24):
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    wobble = rng.uniform(0.9, 1.1, points)
    xs = cx + rx * wobble * np.cos(angles)
    ys = cy + ry * wobble * np.sin(angles)
    return np.stack([xs, ys], axis=1).ravel().round(2).tolist()


def _box(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def build_dataset(num_images: int, seed: int, size: int = 640):
    """A COCO ground truth dict and COCO results with misses, jitter, flips and false alarms."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": size, "width": size}
        )
        for _ in range(rng.integers(10, 30)):
            category = int(rng.integers(1, len(CLASSES) + 1))
            big = category == len(CLASSES)  # teeth are big, lesions small
            rx, ry = rng.uniform(25, 60, 2) if big else rng.uniform(6, 25, 2)
            cx, cy = rng.uniform(70, size - 70, 2)
            polygon = _ellipse(rng, cx, cy, rx, ry)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": [polygon],
                    "bbox": _box(polygon),
                    "area": float(np.pi * rx * ry),
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.25, 2) * (rx, ry)
            predicted = _ellipse(rng, cx + jitter[0], cy + jitter[1], rx, ry)
            if rng.random() < 0.1:
                category = int(rng.integers(1, len(CLASSES) + 1))  # maybe the wrong class
            results.append((image_id, category, predicted, float(rng.uniform(0.3, 1.0))))
        for _ in range(rng.integers(5, 25)):  # false alarms, mostly low scores
            polygon = _ellipse(rng, *rng.uniform(40, size - 40, 2), *rng.uniform(6, 30, 2))
            category = int(rng.integers(1, len(CLASSES) + 1))
            results.append((image_id, category, polygon, float(rng.beta(1, 4))))
    coco_results = []
    for image_id, category, polygon, score in results:
        rle = mask_util.merge(mask_util.frPyObjects([polygon], size, size))
        rle["counts"] = rle["counts"].decode("ascii")
        coco_results.append(
            {
                "image_id": image_id,
                "category_id": category,
                "segmentation": rle,
                "bbox": mask_util.toBbox(rle).tolist(),
                "score": score,
            }
        )
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES, start=1)],
    }
    return gt, coco_results


def _timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def _faster_coco_eval(gt_path: str, results: list[dict], iou_type: str):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    results = [dict(r) for r in results]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = FasterCOCO(gt_path)
        coco_eval = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, results = build_dataset(args.images, args.seed)
    per_100 = 100 / args.images
    print(f"{args.images} images, {len(gt['annotations'])} ground truths, {len(results)} results")
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = os.path.join(tmp, "gt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt_path)
        category_ids = sorted(coco_gt.getCatIds())

        rows, stats = [], {}
        for iou_type in ("segm", "bbox"):
            coco_eval, seconds = _timed(run_coco_eval, coco_gt, results, iou_type)
            stats[iou_type] = coco_eval
            rows.append((f"pycocotools COCOeval {iou_type}", seconds))
        for iou_type in ("segm", "bbox"):
            start = time.perf_counter()
            images = match_predictions(coco_gt, results, iou_type, coco_eval=stats[iou_type])
            metrics = compute_detection_metrics(
                images, category_ids, CLASSES, iou_type, score_threshold=0.5, iou_threshold=0.5
            )
            rows.append((f"dental_d2 P/R/F1 {iou_type}", time.perf_counter() - start))
            pooled = metrics.pooled
            print(
                f"  {iou_type}: AP {stats[iou_type].stats[0] * 100:.2f}, "
                f"P {pooled.precision:.3f} R {pooled.recall:.3f} F1 {pooled.f1:.3f}"
            )
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            print("faster-coco-eval is not installed: not compared")
        else:
            for iou_type in ("segm", "bbox"):
                fast, seconds = _timed(_faster_coco_eval, gt_path, results, iou_type)
                rows.append((f"faster-coco-eval {iou_type}", seconds))
                reference = stats[iou_type]
                same_stats = np.allclose(fast.stats[:12], reference.stats[:12], atol=1e-9)
                same_precision = np.allclose(
                    fast.eval["precision"], reference.eval["precision"], atol=1e-9
                )
                print(
                    f"  faster-coco-eval {iou_type}: stats identical {same_stats}, "
                    f"per-class precision identical {same_precision}, max stats difference "
                    f"{np.abs(np.asarray(fast.stats[:12]) - reference.stats[:12]).max():.2e}"
                )
    print(f"{'step':<32} {'seconds':>8} {'s/100 images':>13}")
    for name, seconds in rows:
        print(f"{name:<32} {seconds:>8.2f} {seconds * per_100:>13.2f}")


if __name__ == "__main__":
    main()
