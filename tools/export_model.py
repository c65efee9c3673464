"""Exports a trained dental Mask R-CNN to ONNX (or TorchScript) for ONNX Runtime and services.

    python tools/export_model.py --config-file configs/quick_schedules/dental_demo_cpu.yaml \\
        --output output/demo/export MODEL.WEIGHTS output/demo/model_final.pth

writes `model.onnx` and `model.json` (classes, input format, sizes, score threshold) to
--output. `Predictor` and `tools/visualize.py` run it with `MODEL.WEIGHTS DIR/model.onnx`.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
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


def _run(args) -> None:
    cfg = build_config(args.config_file, args.opts)
    path = export_model(cfg, args.output, args.format)
    print(path)


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
