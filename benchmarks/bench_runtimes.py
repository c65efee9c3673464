"""Inference and training speed of a dental config: PyTorch eager, ONNX Runtime, torchvision.

    python tools/benchmark.py --config-file configs/dental_r50.yaml \\
        --images ../shared/datasets/calculus-segment-v10/test TEST.IMS_PER_BATCH 2

Random weights with both box regressors zeroed and thresholds at 0, so every model keeps 1000
proposals and 100 detections per image. Prints one table and writes it as JSON (--output).
`--only pytorch,training` times only a config's eager inference and training step (and
torchvision's step). `--weights model_final.pth` times the trained model too, as trained: its
own detections at `--confidence-threshold` (0.5) on the photos of `--images`, eager and in
ONNX Runtime. `--calibration DIR` (training photos) adds the trained model's int8 export
(tools/export_model.py --int8) beside its float one. `--stages` prints, for the trained model's
eager, ONNX float and (with --calibration) int8 paths, the milliseconds per photo of --images
in each stage, from the photo file to COCO annotations:

    python tools/benchmark.py --config-file configs/dental_lite0.yaml --only pytorch \
        --weights model_final.pth --images datasets/dentalai/test --stages \
        --calibration datasets/dentalai/train INPUT.MIN_SIZE_TEST 640 INPUT.MAX_SIZE_TEST 640

The measuring code is the `equal_work` package beside this script (a script's folder is on its
import path).
"""

import sys

from equal_work import TARGETS, format_table, run_benchmark
from equal_work.runner import format_stage_report, run_stages

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.config import DEFAULT_SCORE_THRESHOLD


def parse_args(argv=None):
    parser = tool_parser(__doc__, config_help="a dental config")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--images", metavar="DIR", help="photos to time (default: synthetic)")
    parser.add_argument(
        "--output", default="output/benchmark/benchmark.json", metavar="FILE", help="the JSON"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--train-iters", type=int, default=3, help="timed training steps")
    parser.add_argument(
        "--weights",
        metavar="PTH",
        help="a trained model, timed too as trained: its own detections at --confidence-threshold",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help=f"the least score the trained model keeps (default {DEFAULT_SCORE_THRESHOLD})",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="training photos: the trained model's int8 export is timed too",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time each stage of the trained model (--weights) on photos of --images",
    )
    parser.add_argument(
        "--stage-photos", type=int, default=8, help="photos of --images timed by --stages"
    )
    parser.add_argument(
        "--only",
        default=",".join(TARGETS),
        help=f"what to measure, comma-separated (default {','.join(TARGETS)})",
    )
    add_config_overrides(parser, "TEST.IMS_PER_BATCH 2")
    args = parser.parse_args(argv)
    args.only = [target.strip() for target in args.only.split(",") if target.strip()]
    unknown = sorted(set(args.only) - set(TARGETS))
    if unknown or not (args.only or args.stages):
        parser.error(f"--only: unknown {unknown}; choose from {','.join(TARGETS)}")
    return args


def _run(args) -> None:
    names = ("device", "images", "repeats", "train_iters", "weights")
    options = {name: getattr(args, name) for name in names}
    options["confidence"] = args.confidence_threshold
    options["calibration"] = args.calibration
    exports = {}
    if args.only:  # `--stages --only ""` times the stages alone
        report = run_benchmark(
            args.config_file, args.opts, args.output, targets=tuple(args.only), **options
        )
        print(format_table(report))
        print(f"written to {args.output}")
        exports = report["exports"]
    if args.stages:
        stages = run_stages(
            args.config_file,
            args.opts,
            args.output,
            weights=args.weights,
            images=args.images,
            photos=args.stage_photos,
            repeats=args.repeats,
            confidence=args.confidence_threshold,
            calibration=args.calibration,
            exports=exports,
        )
        print(format_stage_report(stages))


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
