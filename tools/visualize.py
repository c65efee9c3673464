"""Draws dental predictions: runs a model on images, or renders saved predictions beside GT.

Predict images (overlays, predictions.coco.json, findings.json); the weights carry the config
they were trained with, so no --config-file is needed (given, it must agree with them)::

    python tools/visualize.py --input xrays/ a.png --output vis/ \\
        MODEL.WEIGHTS output/dental_r50/model_final.pth

Run a model exported by tools/export_model.py with ONNX Runtime::

    python tools/visualize.py --input xrays/ --output vis/ MODEL.WEIGHTS export/model.onnx

Render an evaluation's saved predictions beside the ground truth::

    python tools/visualize.py --config-file configs/dental_r50.yaml --dataset dental_test \\
        --predictions output/dental_r50/eval/dental_test/coco_instances_results.json --output vis/
"""

import logging
import os
import sys

from dental_d2.cli import (
    add_config_overrides,
    run_tool,
    split_overrides,
    tool_parser,
)
from dental_d2.config import DEFAULT_SCORE_THRESHOLD, build_config
from dental_d2.data.image_files import collect_images
from dental_d2.file_io import check_output_outside
from dental_d2.inference import predict_images
from dental_d2.predictor import Predictor
from dental_d2.visualize import render_saved_predictions

logger = logging.getLogger("dental_d2")


def parse_args(argv=None):
    parser = tool_parser(__doc__, weights_config=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image files (JPEG, PNG, TIFF, DICOM, ...), directories or glob patterns",
    )
    source.add_argument(
        "--predictions",
        metavar="FILE",
        help="a coco_instances_results.json to draw beside the ground truth of --dataset",
    )
    parser.add_argument("--dataset", help="registered dataset of --predictions, e.g. dental_test")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the results")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help="predictions scoring below this are not drawn or saved (default %(default)s)",
    )
    add_config_overrides(parser, "MODEL.DEVICE cpu")
    args = parser.parse_args(argv)
    if args.input:
        args.input, args.opts = split_overrides(args.input, args.opts)
        if not args.input:
            parser.error("--input needs at least one image, directory or glob pattern")
    elif not args.dataset:
        parser.error("--predictions needs --dataset")
    return args


def _run(args) -> int:
    if args.input:
        images, failures = collect_images(args.input)
        folders = [p for p in args.input if os.path.isdir(p)]
        check_output_outside(args.output, folders, images)
        predictor = Predictor(
            args.config_file,
            opts=args.opts,
            confidence_threshold=args.confidence_threshold,
            require_weights="visualizing",
        )
        failures += predict_images(predictor, images, args.output)
    else:
        failures = render_saved_predictions(
            build_config(args.config_file, args.opts),
            args.predictions,
            args.dataset,
            args.output,
            confidence_threshold=args.confidence_threshold,
        )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        inputs = f"{len(failures)} input" + ("" if len(failures) == 1 else "s")
        logger.info(f"{inputs} failed, see the error lines")
    return 1 if failures else 0


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
