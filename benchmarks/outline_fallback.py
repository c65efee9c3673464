"""What the outline rule for faint masks changes in an evaluation: per-class segm AP50 with the
outlines as written, and with every `mask_from_peak` outline emptied (detectron2's answer).

    python benchmarks/outline_fallback.py output/dental_lite0/eval/dental_test

The folder is one written by an evaluation (`coco_instances_results.json` and
`<dataset>_coco_format.json`, the ground truth COCOEvaluator wrote). Prints, per class, the
detections, how many had no pixel at probability 0.5, the score of those, and AP50 both ways.
"""

import argparse
import statistics
import sys

import numpy as np
from evaluation_folder import read_evaluation
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from tabulate import tabulate

from dental_d2.cli import run_tool
from dental_d2.evaluation import evaluate_task
from dental_d2.modeling.postprocessing import MASK_FROM_PEAK


def _ap50(coco_gt: COCO, results: list[dict]) -> dict[int, float]:
    """Category id -> segm AP50 in percent, as the project's evaluation scores it."""
    evaluation = evaluate_task(coco_gt, results, "segm")
    return {cat: ap["AP50"] for cat, ap in evaluation.class_ap.items()}


def _emptied(result: dict) -> dict:
    height, width = result["segmentation"]["size"]
    empty = mask_util.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return {**result, "segmentation": {"size": [height, width], "counts": empty["counts"].decode()}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", help="an evaluation's output folder")
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    coco_gt, results = read_evaluation(args.eval_dir)
    with_outlines = _ap50(coco_gt, results)
    without = _ap50(coco_gt, [_emptied(r) if r.get(MASK_FROM_PEAK) else r for r in results])
    rows = []
    for cat in sorted(coco_gt.cats):
        mine = [r for r in results if r["category_id"] == cat]
        faint = [r["score"] for r in mine if r.get(MASK_FROM_PEAK)]
        median = f"{statistics.median(faint):.2f}" if faint else "–"
        rows.append([coco_gt.cats[cat]["name"], len(mine), len(faint), median,
                     with_outlines[cat], without[cat]])  # fmt: skip
    header = ["class", "detections", "no pixel at 0.5", "their median score"]
    print(f"{args.eval_dir}: {len(results)} detections")
    print(tabulate(rows, headers=[*header, "AP50 outlined", "AP50 empty"], tablefmt="github",
                   floatfmt=".1f"))  # fmt: skip


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
