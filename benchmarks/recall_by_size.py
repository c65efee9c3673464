"""Which lesions a model misses, by their size: per class and ground-truth size, the share found
(at any score and at the report's threshold) and AP50, re-scored from an evaluation's folder.

    python benchmarks/recall_by_size.py output/run_f/eval/dental_test --sides 16,32,64

Sizes are the square root of an object's area in the photo's own pixels (the ground truth's
coordinates), so a 13 px caries of a 1024 px photo is 26 px in its 2048 px copy. pycocotools'
COCOeval does the matching, with its area ranges set to the bins: a ground-truth object
outside a bin is ignored there, and so is a detection outside it that matches nothing.
"""

import argparse
import sys

import numpy as np
from evaluation_folder import read_evaluation
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from dental_d2 import DentalError
from dental_d2.cli import run_tool
from dental_d2.config import DEFAULT_SCORE_THRESHOLD


def _bins(sides: list[int]) -> tuple[list[list[float]], list[str]]:
    """COCOeval area ranges (squared sides) and their labels, from the bins' upper sides."""
    edges = [0, *sides, 1e5]
    ranges = [[float(low**2), float(high**2)] for low, high in zip(edges, edges[1:])]
    labels = [f"< {sides[0]}", *(f"{a}-{b}" for a, b in zip(sides, sides[1:])), f">= {sides[-1]}"]
    return ranges, labels


def score_by_size(coco_gt: COCO, results: list[dict], sides: list[int], iou_type: str) -> dict:
    """(category id, bin label) -> recall (any score, up to 100 per photo) and AP50, percent.

    Args:
        coco_gt (COCO): the ground truth.
        results (list[dict]): COCO detections of the ground truth's images.
        sides (list[int]): the bins' upper sides in pixels, increasing.
        iou_type (str): "segm" or "bbox".
    """
    ranges, labels = _bins(sides)
    evaluation = COCOeval(coco_gt, coco_gt.loadRes(results) if results else COCO(), iou_type)
    evaluation.params.areaRng, evaluation.params.areaRngLbl = ranges, labels
    evaluation.evaluate()
    evaluation.accumulate()
    # IoU 0.5, every class and bin, 100 detections per photo; -1 where a bin has no object.
    recall = evaluation.eval["recall"][0, :, :, -1]
    precision = evaluation.eval["precision"][0, :, :, :, -1]
    scores = {}
    for k, cat in enumerate(evaluation.params.catIds):
        for a, label in enumerate(labels):
            curve = precision[:, k, a]
            has_objects = recall[k, a] > -1
            scores[cat, label] = {
                "recall": float(recall[k, a] * 100) if has_objects else float("nan"),
                "ap50": float(np.mean(curve[curve > -1]) * 100) if has_objects else float("nan"),
            }
    return scores


def count_by_size(coco_gt: COCO, sides: list[int]) -> dict:
    """(category id, bin label) -> ground-truth objects (not crowd) in that bin."""
    ranges, labels = _bins(sides)
    counts = {(cat, label): 0 for cat in coco_gt.cats for label in labels}
    for annotation in coco_gt.dataset["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        for (low, high), label in zip(ranges, labels):
            if low <= annotation["area"] < high:
                counts[annotation["category_id"], label] += 1
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", help="an evaluation's output folder")
    parser.add_argument("--sides", default="16,32,64", help="bins' upper sides in pixels")
    parser.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    parser.add_argument("--score", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help="the threshold of the second recall column")  # fmt: skip
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    try:
        sides = [int(side) for side in args.sides.split(",")]
    except ValueError:
        sides = []
    if not sides or sides != sorted(set(sides)) or sides[0] <= 0:
        raise DentalError(f"--sides {args.sides}: give increasing positive sizes in pixels")
    coco_gt, results = read_evaluation(args.eval_dir)
    counts = count_by_size(coco_gt, sides)
    anywhere = score_by_size(coco_gt, results, sides, args.iou_type)
    confident = score_by_size(
        coco_gt, [r for r in results if r["score"] >= args.score], sides, args.iou_type
    )
    rows = [
        [coco_gt.cats[cat]["name"], label, count, f"{anywhere[cat, label]['recall']:.0f}%",
         f"{confident[cat, label]['recall']:.0f}%", anywhere[cat, label]["ap50"]]
        for (cat, label), count in counts.items() if count
    ]  # fmt: skip
    header = ["class", "size", "objects", "found, any score", f"found, score >= {args.score}"]
    print(f"{args.eval_dir}: {args.iou_type}, IoU >= 0.5, sizes in photo pixels")
    print(tabulate(rows, headers=[*header, "AP50"], tablefmt="github", floatfmt=".1f"))


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
