#!/usr/bin/env python
"""Generate the deterministic synthetic COCO-format detection dataset (see tbd/synthetic.py).

Example (from the repo root)::

    python tools/make_synthetic_dataset.py --root datasets/tbd_synthetic
"""

import argparse
import time

from tbd.synthetic import make_synthetic_coco


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/tbd_synthetic", help="output directory")
    parser.add_argument("--num-train", type=int, default=2000, help="number of train images")
    parser.add_argument("--num-val", type=int, default=300, help="number of val images")
    parser.add_argument("--image-size", type=int, default=128, help="square image side, px")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--min-object-size", type=float, default=8.0, help="smallest object, px")
    parser.add_argument("--max-objects", type=int, default=8, help="most objects per image")
    parser.add_argument(
        "--no-clutter", action="store_true", help="plain gradient backgrounds, no distractors"
    )
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = make_synthetic_coco(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
        min_object_size=args.min_object_size,
        max_objects=args.max_objects,
        clutter=not args.no_clutter,
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - start
    status = "generated " + ", ".join(out["generated"]) if out["generated"] else "up to date"
    print(f"Synthetic dataset in {out['root']} ({status}, {elapsed:.1f} s)")
    for split in ("train", "val"):
        print(f"  {split}: {out[f'{split}_json']}  images: {out[f'{split}_dir']}")


if __name__ == "__main__":
    main()
