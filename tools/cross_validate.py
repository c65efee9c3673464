#!/usr/bin/env python
"""K-fold cross-validation: trains one model per fold of the pooled train and valid splits.

tools/cross_validate.py --config-file configs/dental_r50.yaml --folds 5 DENTAL.DATA_ROOT export/

Each fold is scored with the weights chosen on a part of the other folds. Writes
OUTPUT_DIR/cv/summary.json and summary.md (per fold, the weights scored; mean and standard
deviation of segm/bbox AP, AP50 and per-class P/R/F1). Run the same command again to resume.
"""

import sys

from dental_d2.cli import add_config_overrides, run_tool, tool_parser
from dental_d2.cross_validation import cross_validate


def parse_args(argv=None):
    parser = tool_parser(__doc__, config_help="training config")
    parser.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold split (default 0)")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per fold, as train_net.py (default 1)"
    )
    add_config_overrides(parser, "DENTAL.DATA_ROOT DIR", scope="for every fold")
    return parser.parse_args(argv)


def _run(args) -> None:
    summary = cross_validate(
        args.config_file, args.folds, seed=args.seed, opts=args.opts, num_gpus=args.num_gpus
    )
    mean, std = summary["mean"], summary["std"]
    for key in ("segm/AP", "bbox/AP"):
        if mean.get(key) is not None:
            spread = f" ± {std[key]:.1f}" if std.get(key) is not None else ""
            print(f"{key}: {mean[key]:.1f}{spread} over {summary['num_folds']} folds")


def main(argv=None) -> int:
    return run_tool(parse_args, _run, argv, with_detectron2=False)


if __name__ == "__main__":
    sys.exit(main())
