"""Builds `datasets/dentalai_demo/`, the real photos `make demo-real` trains on, from DentalAI.

DentalAI (CC BY 4.0) is a Roboflow-style "COCO Segmentation" export. The subset keeps, per
split, the first photos by file name that show at least one lesion, copied byte for byte with
their annotations unchanged, so that the demo's pictures have lesions on them and the subset is
the same on every machine.

    python datasets/prepare_dentalai_demo.py --source ../shared/datasets/dentalai
"""

import argparse
import json
import os
import shutil
import sys

# Photos per split: about 8 MB of JPEG and annotations in all.
SPLIT_SIZES = {"train": 80, "valid": 10, "test": 20}
LESIONS = ("Caries", "Cavity", "Crack")
ANNOTATIONS = "_annotations.coco.json"

ATTRIBUTION = """\
# dentalai_demo: a subset of DentalAI

Real intraoral photos with instance masks of Caries, Cavity, Crack and Tooth, for `make
demo-real`. Licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), see LICENSE.md.

Attribution: the DentalAI dataset (Kaggle "pawanvalluri/dental-segmentation"), as redistributed
by DatasetNinja in Supervisely format, converted to a Roboflow-style "COCO Segmentation" export
(long side at most 1024 px).

Changes made here: only a subset is kept ({sizes}): in each split, the first photos by file name
that show at least one lesion. Photos are copied byte for byte; their annotations, image ids and
categories are unchanged. Made by `datasets/prepare_dentalai_demo.py`.
"""


def _subset(coco, size, split_path):
    """The first `size` images (by file name) with a lesion, and their annotations."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    with_lesion = {
        a["image_id"] for a in coco["annotations"] if names.get(a["category_id"]) in LESIONS
    }
    images = sorted(
        (im for im in coco["images"] if im["id"] in with_lesion), key=lambda im: im["file_name"]
    )
    if len(images) < size:
        raise SystemExit(f"{split_path}: {len(images)} photos with a lesion, {size} wanted")
    keep = images[:size]
    kept_ids = {im["id"] for im in keep}
    annotations = [a for a in coco["annotations"] if a["image_id"] in kept_ids]
    return {**coco, "images": keep, "annotations": annotations}


def _write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="DentalAI's export (train/valid/test)")
    parser.add_argument("--output", default=os.path.join("datasets", "dentalai_demo"))
    args = parser.parse_args(argv)
    for split, size in SPLIT_SIZES.items():
        source = os.path.join(args.source, split)
        annotations = os.path.join(source, ANNOTATIONS)
        with open(annotations) as f:
            subset = _subset(json.load(f), size, annotations)
        target = os.path.join(args.output, split)
        os.makedirs(target, exist_ok=True)
        for image in subset["images"]:
            shutil.copyfile(
                os.path.join(source, image["file_name"]), os.path.join(target, image["file_name"])
            )
        # The annotations last: a folder with its JSON is a complete split.
        _write_text(os.path.join(target, ANNOTATIONS), json.dumps(subset))
    shutil.copyfile(
        os.path.join(args.source, "LICENSE.md"), os.path.join(args.output, "LICENSE.md")
    )
    sizes = ", ".join(f"{split} {size}" for split, size in SPLIT_SIZES.items())
    _write_text(os.path.join(args.output, "README.md"), ATTRIBUTION.format(sizes=sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
