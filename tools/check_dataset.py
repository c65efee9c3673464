"""Checks a Roboflow COCO Segmentation or a YOLO-seg export before training, split by split.

Exits 0 when every split is usable, 1 with a one-line reason otherwise. Example::

    python tools/check_dataset.py datasets/dental --render output/gt_check
"""

import sys

from dental_d2.cli import run_tool, tool_parser
from dental_d2.data.check import check_dataset, format_report
from dental_d2.visualize import render_ground_truth


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument(
        "root", help="the export's folder: COCO train/, valid/, test/, or YOLO with data.yaml"
    )
    parser.add_argument(
        "--render", metavar="OUT", help="draw the ground truth of 3 images per split into OUT"
    )
    parser.add_argument(
        "--name", default="dental", help="prefix of the registered dataset names (default dental)"
    )
    return parser.parse_args(argv)


def _run(args) -> None:
    reports = check_dataset(args.root, args.name)
    for report in reports:
        print(format_report(report) + "\n")
    if args.render:
        for report in reports:
            for path in render_ground_truth(report.dataset_name, args.render):
                print(f"drew {path}")
    print(f"{args.root}: usable ({len(reports)} splits)")


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
