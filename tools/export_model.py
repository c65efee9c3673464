"""Exports a trained dental Mask R-CNN to ONNX (or TorchScript) for ONNX Runtime and services.

    python tools/export_model.py --output output/demo/export \\
        MODEL.WEIGHTS output/demo/model_final.pth

writes `model.onnx` and `model.json` (classes, input format, sizes, score threshold) to
--output. The checkpoint holds the config it was trained with; --config-file is needed only for
a checkpoint that does not (and must agree with one that does). `Predictor` and
`tools/visualize.py` run the export with `MODEL.WEIGHTS DIR/model.onnx`.

    python tools/export_model.py --output export_int8 \
        --int8 --calibration datasets/dentalai/train MODEL.WEIGHTS model_final.pth

writes an int8 `model.onnx` instead (ONNX Runtime's static quantization, calibrated on
--calibration-count photos of --calibration, prepared as the runtime prepares them); its
`model.json` says it is int8 and names the calibration photos. It runs like any export.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.export import MODEL_FILES, export_model
from dental_d2.export.quantize import DEFAULT_CALIBRATION_COUNT, export_int8
from dental_d2.loading import config_for_weights
from dental_d2.runtime import Backend


def parse_args(argv=None):
    parser = tool_parser(__doc__, weights_config=True)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument(
        "--format", choices=sorted(MODEL_FILES), default="onnx", help="default: onnx"
    )
    parser.add_argument(
        "--int8", action="store_true", help="an int8 ONNX model, calibrated on --calibration"
    )
    parser.add_argument(
        "--calibration", metavar="DIR", help="with --int8: a folder of training photos"
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=DEFAULT_CALIBRATION_COUNT,
        metavar="N",
        help="with --int8: photos of --calibration used, spread over it; 0 for all "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--reduce-range",
        action="store_true",
        help="with --int8: 7-bit weights, for x86 CPUs without VNNI whose int8 kernels saturate",
    )
    add_config_overrides(parser, "MODEL.WEIGHTS model_final.pth")
    args = parser.parse_args(argv)
    if args.int8 and (args.format != "onnx" or not args.calibration):
        parser.error("--int8 needs --calibration DIR and writes ONNX (no --format torchscript)")
    if args.calibration and not args.int8:
        parser.error("--calibration is for --int8")
    return args


def _run(args) -> None:
    cfg, weights = config_for_weights(
        args.config_file, args.opts, doing="exporting", allow_empty=True
    )
    if args.int8:
        # Calibration photos are prepared exactly as the runtime prepares a photo.
        path = export_int8(
            cfg,
            args.output,
            args.calibration,
            Backend(cfg).model_input,
            count=args.calibration_count,
            reduce_range=args.reduce_range,
        )
    else:
        path = export_model(cfg, args.output, args.format, weights)
    print(path)


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
