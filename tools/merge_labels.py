#!/usr/bin/env python
"""Adds images labelled in CVAT or Roboflow (a COCO export) to a split of a Roboflow export.

tools/merge_labels.py --coco corrected.json --images unlabelled/ --into datasets/dental/train

The images are copied into the split folder and their annotations appended to its
_annotations.coco.json with fresh ids, classes matched by name. Check the result with
tools/check_dataset.py before training.
"""

import os
import sys

from dental_d2.cli import run_tool, tool_parser
from dental_d2.data.merge import merge_labelled


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument("--coco", required=True, metavar="FILE", help="the corrected COCO file")
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder its file_names are relative to"
    )
    parser.add_argument(
        "--into", required=True, metavar="DIR", help="split folder to add to, e.g. export/train"
    )
    return parser.parse_args(argv)


def _run(args) -> None:
    added = merge_labelled(args.coco, args.images, args.into)
    check = f"tools/check_dataset.py {os.path.dirname(args.into)}"
    print(f"added {added} images to {args.into}\ncheck the export before training: {check}")


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
