"""Serves a dental model over HTTP: a web page to try it and a JSON API for programs.

    python tools/serve.py MODEL.WEIGHTS output/demo/model_final.pth

then open http://127.0.0.1:8000/ or `curl -F file=@photo.jpg http://127.0.0.1:8000/predict`.
Beyond this machine (--host 0.0.0.0) it needs --token-file (or $DENTAL_D2_TOKEN); see
docs/private_serving.md.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.serving import ServeSettings, run

# Options that set a ServeSettings field of the same name (defaults from ServeSettings).
OPTIONS = [
    ("--host", str, "address to listen on (default %(default)s: this machine only; 0.0.0.0 for "
     "the network, which needs --token-file or --insecure-no-auth)"),
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
    ("--keep-minutes", float, "answers kept for re-filtering are forgotten this long after they "
     "were made (default %(default)s; at most the last 32 are kept)"),
    ("--token-file", str, "a file whose first line is the token every request but /health must "
     "send as Authorization: Bearer <token> (default: $DENTAL_D2_TOKEN, else none)"),
    ("--ssl-certfile", str, "TLS certificate (PEM): serve https"),
    ("--ssl-keyfile", str, "the certificate's private key (PEM)"),
]  # fmt: skip
# On/off options that set a ServeSettings field of the same name.
FLAGS = [
    ("--insecure-no-auth", "serve beyond this machine without a token: anyone who reaches the "
     "port can send and see images"),
]  # fmt: skip


def parse_args(argv=None):
    defaults = ServeSettings(config_file=None)
    parser = tool_parser(__doc__, weights_config=True)
    for flag, kind, help_text in OPTIONS:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    for flag, help_text in FLAGS:
        parser.add_argument(flag, action="store_true", help=help_text)
    add_config_overrides(parser, "MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def _run(args) -> None:
    options = {flag[2:].replace("-", "_") for flag, *_ in OPTIONS + FLAGS}
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
