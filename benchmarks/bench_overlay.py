"""Times one overlay, as the service and tools/visualize.py draw it, for 10 and 50 instances on
a real DentalAI photo, and detectron2's plain `Visualizer.overlay_instances` as a reference.

The instances are the photo's ground-truth masks (27 on the default photo), taken as
predictions with made-up scores; for more instances than the photo has, copies shifted right
and down by 12 px per round are added. Findings are computed outside the timing, as
`dental_d2.inference` hands them to the drawing.

.venv/bin/python benchmarks/bench_overlay.py [--counts 10 50] [--repeats 5]
"""

import argparse
import json
import os
import time

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer

from dental_d2.data import read_image
from dental_d2.drawing import class_colors
from dental_d2.findings import findings_from_instances, summarize
from dental_d2.visualize import build_metadata, draw_instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = os.path.join(ROOT, "datasets", "dentalai_demo", "test")
# 1024x682 px, 27 annotated instances: the demo test split's most crowded photo.
PHOTO = "123_jpg.rf.a0c4bae8c2c6c62bd55b71654048f9ae.jpg"
CLASSES = ["Caries", "Cavity", "Crack", "Tooth"]
SHIFT = 12


def photo_instances(split: str, photo: str, count: int) -> tuple[np.ndarray, Instances]:
    """The photo (RGB) and `count` instances made from its ground-truth masks."""
    with open(os.path.join(split, "_annotations.coco.json")) as f:
        coco = json.load(f)
    image_info = next(i for i in coco["images"] if i["file_name"] == photo)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    image = read_image(os.path.join(split, photo), format="RGB")
    height, width = image.shape[:2]
    masks, classes = [], []
    for a in coco["annotations"]:
        if a["image_id"] == image_info["id"] and names[a["category_id"]] in CLASSES:
            rles = mask_util.frPyObjects(a["segmentation"], height, width)
            masks.append(mask_util.decode(mask_util.merge(rles)).astype(bool))
            classes.append(CLASSES.index(names[a["category_id"]]))
    base = len(masks)
    for k in range(count - base):
        shift = SHIFT * (k // base + 1)
        masks.append(np.roll(masks[k % base], (shift, shift), axis=(0, 1)))
        classes.append(classes[k % base])
    masks, classes = np.stack(masks[:count]), classes[:count]
    instances = Instances((height, width))
    instances.pred_masks = torch.from_numpy(masks)
    boxes = [
        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        for ys, xs in (np.nonzero(m) for m in masks)
    ]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.pred_classes = torch.tensor(classes)
    instances.scores = torch.linspace(0.99, 0.5, count)
    return image, instances


def seconds(draw, repeats: int) -> float:
    """The median of `repeats` timings of `draw()`, after one untimed call."""
    draw()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--split", default=SPLIT)
    parser.add_argument("--photo", default=PHOTO)
    args = parser.parse_args()
    metadata = build_metadata(CLASSES)
    palette = class_colors(CLASSES)
    print(f"{args.photo}; median of {args.repeats} runs; load: {os.getloadavg()[0]:.2f}")
    print("| instances | dental_d2 overlay (s) | detectron2 Visualizer.overlay_instances (s) |")
    print("|---|---|---|")
    for count in args.counts:
        image, instances = photo_instances(args.split, args.photo, count)
        findings = findings_from_instances(instances, CLASSES)
        summary = summarize(findings, 0.5)
        masks = instances.pred_masks.numpy()
        labels = [CLASSES[c] for c in instances.pred_classes.tolist()]
        colors = [palette[c] for c in instances.pred_classes.tolist()]

        def ours(image=image, instances=instances, findings=findings, summary=summary):
            draw_instances(image, instances, metadata, findings=findings, summary=summary)

        def reference(image=image, masks=masks, labels=labels, colors=colors):
            visualizer = Visualizer(image)
            visualizer.overlay_instances(
                masks=masks, labels=labels, assigned_colors=colors, alpha=0.35
            ).get_image()

        print(
            f"| {count} | {seconds(ours, args.repeats):.3f} "
            f"| {seconds(reference, args.repeats):.3f} |"
        )


if __name__ == "__main__":
    main()
