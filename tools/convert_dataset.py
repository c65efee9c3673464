"""Converts a dental export between Roboflow-style COCO Segmentation and YOLO-seg.

The source's layout is found by its files (train/_annotations.coco.json or data.yaml) and read
as training reads it. Examples::

    python tools/convert_dataset.py datasets/yolo_export --to coco --output datasets/dental
    python tools/convert_dataset.py datasets/dental --to yolo --output datasets/dental_yolo
"""

import sys

from dental_d2.cli import run_tool, tool_parser
from dental_d2.data.convert import FORMATS, convert_dataset


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument("source", help="a COCO export's folder, or a YOLO export's (or data.yaml)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the layout to write")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
    return parser.parse_args(argv)


def _run(args) -> None:
    written = convert_dataset(args.source, args.output, args.to)
    counts = ", ".join(f"{split} {n} images" for split, n in written.items())
    print(f"{args.output}: {args.to} export with {counts}")


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
