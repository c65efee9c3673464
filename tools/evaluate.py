"""Evaluates a COCO results file against COCO ground truth: AP, P/R/F1, plots and a report.

No model is needed::

    python tools/evaluate.py --gt datasets/dental/test/_annotations.coco.json \\
        --predictions output/dental_r50/eval/dental_test/coco_instances_results.json \\
        --images datasets/dental/test --output output/eval_test

Writes metrics.json, <task>_pr_curves.png, <task>_confusion_matrix.png and report.html.
"""

import os
import sys

from dental_d2.cli import run_tool, tool_parser
from dental_d2.config import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from dental_d2.evaluation import evaluate_files


def parse_args(argv=None):
    parser = tool_parser(__doc__)
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
        default=DEFAULT_SCORE_THRESHOLD,
        help="predictions scoring below this are not counted by P/R/F1 (default %(default)s)",
    )
    parser.add_argument(
        "--iou-threshold",
        type=float,
        default=DEFAULT_IOU_THRESHOLD,
        help="least IoU of a prediction matching a ground truth (default %(default)s)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=("bbox", "segm"),
        help="what to evaluate (default: bbox, and segm when the results have masks)",
    )
    return parser.parse_args(argv)


def _run(args) -> None:
    metrics = evaluate_files(
        args.gt,
        args.predictions,
        args.output,
        image_root=args.images,
        tasks=tuple(args.tasks) if args.tasks else None,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
    )
    for task, result in metrics.items():
        pooled = result["pooled"]
        print(
            f"{task}: AP {_number(result['coco'].get('AP'), 1)}, precision "
            f"{_number(pooled['precision'])}, recall {_number(pooled['recall'])}, "
            f"F1 {_number(pooled['f1'])}"
        )
    print(f"report: {os.path.join(args.output, 'report.html')}")


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


def _number(value, digits: int = 3) -> str:
    # metrics.json holds null where a value is undefined (no ground truth, no predictions).
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
