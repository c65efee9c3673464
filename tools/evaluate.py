"""Evaluates a COCO results file against COCO ground truth: AP, P/R/F1, plots and a report.

No model is needed::

    python tools/evaluate.py --gt datasets/dental/test/_annotations.coco.json \\
        --predictions output/inference/coco_instances_results.json \\
        --images datasets/dental/test --output output/eval_test

Writes metrics.json, <task>_pr_curves.png, <task>_confusion_matrix.png and report.html.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from dental_d2 import DentalError
from dental_d2.evaluation import evaluate_files


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, metavar="FILE", help="COCO annotations JSON")
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="FILE",
        help="COCO results JSON, category ids as in --gt",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the outputs")
    parser.add_argument(
        "--images", metavar="DIR", help="folder of the images, to draw the best and worst ones"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="predictions scoring below this are not counted by P/R/F1 (default 0.5)",
    )
    parser.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        help="least IoU of a prediction matching a ground truth (default 0.5)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=("bbox", "segm"),
        help="what to evaluate (default: bbox, and segm when the results have masks)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="dental_d2")
    try:
        evaluate_files(
            args.gt,
            args.predictions,
            args.output,
            image_root=args.images,
            tasks=tuple(args.tasks) if args.tasks else None,
            score_threshold=args.score_threshold,
            iou_threshold=args.iou_threshold,
        )
    except DentalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
