"""Writes a synthetic dental dataset (teeth, caries, cavities, cracks) in Roboflow's layout.

Example::

    python tools/make_synthetic_dataset.py --output datasets/synthetic_dental
"""

import sys

from dental_d2 import DentalError
from dental_d2.cli import run_tool, tool_parser
from dental_d2.data.synthetic import DEFAULT_COUNTS, DEFAULT_SIZE, generate_synthetic_dataset


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write into")
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(
            f"--num-{split}", type=int, default=count, help=f"images in {split}/ (default {count})"
        )
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help=f"image size (default {DEFAULT_SIZE})"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def _run(args) -> None:
    counts = generate_synthetic_dataset(
        args.output,
        num_train=args.num_train,
        num_valid=args.num_valid,
        num_test=args.num_test,
        size=args.size,
        seed=args.seed,
    )
    print(f"wrote {args.output}")
    for split, (images, annotations) in counts.items():
        print(f"  {split}: {images} images, {annotations} annotations")


def main(argv=None) -> int:
    return run_tool(
        parse_args, _run, argv, with_detectron2=False, errors=(DentalError, OSError, ValueError)
    )


if __name__ == "__main__":
    sys.exit(main())
