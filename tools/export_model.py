"""Exports a trained dental Mask R-CNN to ONNX (or TorchScript) for ONNX Runtime and services.

    python tools/export_model.py --config-file configs/quick_schedules/dental_demo_cpu.yaml \\
        --output output/demo/export MODEL.WEIGHTS output/demo/model_final.pth

writes `model.onnx` and `model.json` (classes, input format, sizes, score threshold) to
--output. `Predictor` and `tools/visualize.py` run it with `MODEL.WEIGHTS DIR/model.onnx`.
"""

import sys

from dental_d2 import DentalError
from dental_d2.cli import add_config_overrides, setup_tool_logging, tool_parser
from dental_d2.config import build_config
from dental_d2.export import MODEL_FILES, export_model


def parse_args(argv=None):
    parser = tool_parser(__doc__, config_help="a dental config")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument(
        "--format", choices=sorted(MODEL_FILES), default="onnx", help="default: onnx"
    )
    add_config_overrides(parser, "MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_tool_logging()
    try:
        cfg = build_config(args.config_file, args.opts)
        path = export_model(cfg, args.output, args.format)
    except DentalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
