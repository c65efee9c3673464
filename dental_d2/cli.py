"""What the scripts in tools/ share: their argument parser, config overrides and logging.

The scripts stay thin (parse, call the package, print one `error: ...` line on a DentalError);
the pieces every one of them would otherwise write again live here.
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from detectron2.utils.logger import setup_logger

from .config import build_config
from .errors import DentalError

# The help of --config-file in the tools that run a trained model.
_WEIGHTS_CONFIG_HELP = (
    "a dental YAML config; not needed for weights written by tools/train_net.py or exported, "
    "which carry their own (given, it must agree with them)"
)


def tool_parser(
    doc: str, config_help: str | None = None, weights_config: bool = False
) -> argparse.ArgumentParser:
    """An argument parser described by the first line of a tool's docstring.

    Args:
        doc (str): the tool's module docstring.
        config_help (str | None): help of a required `--config-file FILE`; None adds none.
        weights_config (bool): add an optional `--config-file FILE` instead, for a tool that
            runs a trained model, whose weights carry their config.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if weights_config:
        parser.add_argument("--config-file", metavar="FILE", help=_WEIGHTS_CONFIG_HELP)
    elif config_help is not None:
        parser.add_argument("--config-file", required=True, metavar="FILE", help=config_help)
    return parser


def add_config_overrides(parser: argparse.ArgumentParser, example: str, scope: str = "") -> None:
    """Adds the trailing `KEY VALUE` config overrides (`opts`), as on detectron2's command lines.

    Args:
        parser (argparse.ArgumentParser): the tool's parser; call this after its other options.
        example (str): an override shown in the help, e.g. "MODEL.WEIGHTS model_final.pth".
        scope (str): what they apply to, e.g. "for every fold"; empty for nothing.
    """
    scope = f", {scope}" if scope else ""
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help=f"config overrides as KEY VALUE pairs at the end{scope} (e.g. {example})",
    )


def split_overrides(inputs: Sequence[str], opts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Gives back to the overrides what a `nargs="+"` option took from them.

    In `--input dir/ MODEL.WEIGHTS w.pth` argparse hands `MODEL.WEIGHTS w.pth` to --input. The
    first item that starts with a config section (`MODEL.`, `DENTAL.`, ...) and is not an
    existing path begins the overrides.

    Args:
        inputs (Sequence[str]): what the option received.
        opts (Sequence[str]): the overrides argparse found.

    Returns:
        tuple[list[str], list[str]]: the option's own items, and all overrides.
    """
    sections = set(build_config(None).keys())
    for i, item in enumerate(inputs):
        if item.split(".")[0] in sections and not os.path.exists(item):
            return list(inputs[:i]), [*inputs[i:], *opts]
    return list(inputs), list(opts)


def setup_tool_logging(with_detectron2: bool = True) -> logging.Logger:
    """Logs the package (and detectron2, for tools that build models) to the console.

    Args:
        with_detectron2 (bool): also set up detectron2's own logger.

    Returns:
        logging.Logger: the package's logger.
    """
    # Colour codes only for a terminal: redirected to a file, they are noise.
    colour = sys.stdout.isatty()
    if with_detectron2:
        setup_logger(name="detectron2", color=colour)
    return setup_logger(name="dental_d2", abbrev_name="dental", color=colour)


def run_tool(
    parse_args: Callable,
    body: Callable,
    argv: Sequence[str] | None = None,
    with_detectron2: bool = True,
    errors: tuple[type[Exception], ...] = (DentalError,),
) -> int:
    """The `main(argv) -> int` of a tool: parse, set up logging, run, and turn an error the user
    can fix into one `error: ...` line on stderr and exit status 1.

    Args:
        parse_args (Callable): `argv -> argparse.Namespace`.
        body (Callable): `args -> int | None`, the tool's work; None counts as 0.
        argv (Sequence[str] | None): the arguments; None reads `sys.argv`.
        with_detectron2 (bool): also set up detectron2's logger.
        errors (tuple): exceptions reported as one line (bugs still raise tracebacks).
    """
    args = parse_args(argv)
    setup_tool_logging(with_detectron2)
    try:
        return body(args) or 0
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
