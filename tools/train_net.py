#!/usr/bin/env python
"""Trains Mask R-CNN on a dental dataset, or evaluates a checkpoint with --eval-only.

tools/train_net.py --config-file configs/dental_r50.yaml DENTAL.DATA_ROOT /path/to/export
tools/train_net.py --eval-only MODEL.WEIGHTS output/.../model_final.pth OUTPUT_DIR output/eval

Every checkpoint holds the config it was trained with, so --eval-only needs no --config-file
(given, it must agree with the checkpoint's).
"""

import sys

from torch.multiprocessing import ProcessExitedException

from dental_d2 import DentalError
from dental_d2.engine.launch import argument_parser, launch_from_args

# A process that exits with 128 + N was stopped by signal N (a shell's convention).
_SIGNALLED = 128


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        launch_from_args(args)
    except DentalError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except ProcessExitedException as e:
        if e.exit_code > _SIGNALLED:
            print(
                "error: training stopped by a signal after saving a checkpoint; continue with "
                "the same command and --resume",
                file=sys.stderr,
            )
            return e.exit_code
        print(f"error: a training process failed ({e}); see its log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
