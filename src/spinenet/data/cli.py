"""``spinenet synth``: write a synthetic COCO-format shapes dataset (see :mod:`spinenet.data.synthetic`)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  spinenet synth --output data/shapes --num_train 2000 --num_val 200
  spinenet synth --output /tmp/tiny --num_train 16 --num_val 8 --image_size 256 --seed 1 --overwrite

Writes OUTPUT/train/*.jpg, OUTPUT/val/*.jpg, OUTPUT/annotations/instances_{train,val}.json (COCO boxes
[x, y, w, h]) and OUTPUT/labels.csv (id:name, as the reference's label map). Classes: 1 circle, 2 square,
3 triangle, 4 star, 5 cross; colour is random, so only the shape tells the class. About 10% of the images
have odd sizes (e.g. 480x640, 640x427, 333x777 at --image_size 640) so letterboxing gets exercised.
The same --seed gives byte-identical files.
"""


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_synth_parser(subparsers) -> None:
    """Register ``synth`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("synth", help="write a synthetic COCO-format shapes dataset",
                              description="Write a deterministic synthetic detection dataset of drawn shapes "
                                          "in COCO format, for smoke tests and tiny training runs.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write into (must be empty or new)")
    p.add_argument("--num_train", type=_non_negative_int, default=1000, help="training images (default: 1000)")
    p.add_argument("--num_val", type=_non_negative_int, default=100, help="validation images (default: 100)")
    p.add_argument("--image_size", type=int, default=640,
                   help="side of the square images; odd-sized ones scale with it (default: 640)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same files (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing train/, val/, the annotation files and "
                        "labels.csv there (other files are left alone)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from spinenet.data.synthetic import make_synthetic_dataset

    result = make_synthetic_dataset(args.output, args.num_train, args.num_val, image_size=args.image_size,
                                    seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    print(result.summary())
    return 0
