"""Exports a trained dental Mask R-CNN to ONNX (or TorchScript) for ONNX Runtime and services.

    python tools/export_model.py --output output/demo/export \\
        MODEL.WEIGHTS output/demo/model_final.pth

writes `model.onnx` and `model.json` (classes, input format, sizes, score threshold) to
--output. The checkpoint holds the config it was trained with; --config-file is needed only for
a checkpoint that does not (and must agree with one that does). `Predictor` and
`tools/visualize.py` run the export with `MODEL.WEIGHTS DIR/model.onnx`.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.export import MODEL_FILES, export_model
from dental_d2.loading import config_for_weights


def parse_args(argv=None):
    parser = tool_parser(__doc__, weights_config=True)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument(
        "--format", choices=sorted(MODEL_FILES), default="onnx", help="default: onnx"
    )
    add_config_overrides(parser, "MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


def _run(args) -> None:
    cfg, weights = config_for_weights(
        args.config_file, args.opts, doing="exporting", allow_empty=True
    )
    path = export_model(cfg, args.output, args.format, weights)
    print(path)


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
