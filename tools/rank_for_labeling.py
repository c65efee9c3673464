#!/usr/bin/env python
"""Ranks unlabelled images by how much labelling them would teach the model; writes pre-labels.

tools/rank_for_labeling.py --input unlabelled/ --output rank/ranking.csv --top 50 \\
    MODEL.WEIGHTS output/dental_r50/model_final.pth

Writes the CSV (rank, image, score, signals, reasons) and, beside it, prelabels.coco.json: the
first --top images' predictions, to import into CVAT or Roboflow and correct.
"""

import os
import sys

from dental_d2 import DentalError
from dental_d2.active_learning import rank_images, write_ranking
from dental_d2.cli import add_config_overrides, run_tool, split_overrides, tool_parser
from dental_d2.config import DEFAULT_SCORE_THRESHOLD
from dental_d2.data.image_files import collect_images, relative_names
from dental_d2.predictor import Predictor

PRELABELS_FILE = "prelabels.coco.json"


def parse_args(argv=None):
    parser = tool_parser(__doc__, weights_config=True)
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="PATH", help="images, folders or globs"
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the ranking CSV to write")
    parser.add_argument(
        "--top", type=int, default=20, help="images whose predictions become pre-labels (20)"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help="score at which findings are reported and pre-labelled (default %(default)s)",
    )
    parser.add_argument(
        "--band", type=float, default=0.2, help="a score this close to the threshold is uncertain"
    )
    add_config_overrides(parser, "MODEL.WEIGHTS model_final.pth")
    args = parser.parse_args(argv)
    args.input, args.opts = split_overrides(args.input, args.opts)
    return args


def _check(args) -> None:
    if not args.input:
        raise DentalError("--input needs at least one image, folder or glob pattern")
    if args.top < 1:
        raise DentalError(f"--top {args.top}: must be at least 1")
    if not 0 < args.band < args.confidence_threshold <= 1:
        raise DentalError(
            f"--band {args.band:g} and --confidence-threshold {args.confidence_threshold:g}: need "
            "0 < band < threshold <= 1"
        )
    if not args.output.lower().endswith(".csv"):
        raise DentalError(f"--output {args.output}: give a .csv file name")


def _run(args) -> int:
    _check(args)
    images, failures = collect_images(args.input)
    floor = args.confidence_threshold - args.band
    predictor = Predictor(
        args.config_file, opts=args.opts, confidence_threshold=floor, require_weights="ranking"
    )
    ranked, unread = rank_images(predictor, images, args.confidence_threshold, args.band)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    write_ranking(
        args.output,
        os.path.join(folder, PRELABELS_FILE),
        ranked,
        dict(zip(images, relative_names(images))),
        predictor.class_names,
        args.top,
        args.confidence_threshold,
    )
    for failure in failures + unread:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures or unread else 0


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
