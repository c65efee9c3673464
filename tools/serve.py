"""Serves a dental model over HTTP: a web page to try it and a JSON API for programs.

    python tools/serve.py --config-file configs/quick_schedules/dental_demo_cpu.yaml \\
        MODEL.WEIGHTS output/demo/model_final.pth

then open http://127.0.0.1:8000/ or `curl -F file=@photo.jpg http://127.0.0.1:8000/predict`.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.serving import ServeSettings, run

# Options that set a ServeSettings field of the same name (defaults from ServeSettings).
OPTIONS = [
    ("--host", str, "address to listen on (default %(default)s: this machine only; 0.0.0.0 for "
     "the network, without authentication)"),
    ("--port", int, "TCP port (default %(default)s)"),
    ("--workers", int, "processes, each with its own model copy and queue (default %(default)s)"),
    ("--threads", int, "PyTorch threads per worker (default 0: PyTorch's, one per core)"),
    ("--max-upload-mb", float, "larger uploads are refused with 413 (default %(default)s)"),
    ("--max-queue", int, "requests admitted at once per worker; more get 503 and Retry-After "
     "(default %(default)s)"),
    ("--max-megapixels", float, "larger images are refused before decoding (default %(default)s)"),
    ("--confidence-threshold", float, "default threshold of answers and of the page's slider "
     "(default %(default)s)"),
    ("--min-score", float, "lowest score the model keeps, the bottom of the slider "
     "(default %(default)s)"),
    ("--device", str, "cpu, cuda, cuda:1...; default MODEL.DEVICE"),
]  # fmt: skip


def parse_args(argv=None):
    defaults = ServeSettings(config_file="")
    parser = tool_parser(__doc__, config_help="a dental config")
    for flag, kind, help_text in OPTIONS:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    add_config_overrides(parser, "MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def _run(args) -> None:
    options = {flag[2:].replace("-", "_") for flag, _, _ in OPTIONS}
    settings = ServeSettings(
        config_file=args.config_file,
        opts=args.opts,
        **{name: value for name, value in vars(args).items() if name in options},
    )
    run(settings)


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
