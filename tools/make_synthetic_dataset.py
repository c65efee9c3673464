"""Writes a synthetic dental dataset (teeth, caries, cavities, cracks) in Roboflow's layout.

Example::

    python tools/make_synthetic_dataset.py --output datasets/synthetic_dental
"""

import sys

from dental_d2 import DentalError
from dental_d2.cli import setup_tool_logging, tool_parser
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


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_tool_logging(with_detectron2=False)
    try:
        counts = generate_synthetic_dataset(
            args.output,
            num_train=args.num_train,
            num_valid=args.num_valid,
            num_test=args.num_test,
            size=args.size,
            seed=args.seed,
        )
    except (DentalError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    for split, (images, annotations) in counts.items():
        print(f"  {split}: {images} images, {annotations} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
