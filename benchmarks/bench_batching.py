"""Times prediction of a folder of photos in batches with DentalRCNN (each image padded as it
is alone) and with detectron2's GeneralizedRCNN (one padded batch), same weights, and prints
seconds per photo and how many photos' detections changed with their batch.

.venv/bin/python benchmarks/bench_batching.py --config-file CONFIG --weights model_final.pth \
    --images DIR [--batch-size 4] [--count 16] [KEY VALUE ...]
"""

import argparse
import os
import time

import torch

from dental_d2.data import read_image
from dental_d2.predictor import Predictor


def predict(config, weights, opts, images, architecture, batch_size):
    predictor = Predictor(
        config,
        weights,
        opts=[*opts, "MODEL.META_ARCHITECTURE", architecture, "TEST.IMS_PER_BATCH",
              str(batch_size)],
    )  # fmt: skip
    predictor.predict_batch(images[:batch_size])  # warm-up
    start = time.perf_counter()
    outputs = predictor.predict_batch(images)
    return outputs, (time.perf_counter() - start) / len(images), predictor


def changed(batched, alone) -> int:
    """Photos whose detections differ from their predictions alone (count, class, 1 px)."""
    count = 0
    for a, b in zip(batched, alone):
        same = len(a) == len(b) and a.pred_classes.tolist() == b.pred_classes.tolist()
        same = same and torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1.0)
        count += not same
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".jpg", ".png")))
    images = [read_image(os.path.join(args.images, n)) for n in names[: args.count]]
    print(
        f"{len(images)} photos of {len({i.shape for i in images})} sizes, batch {args.batch_size}"
    )
    rows = {}
    for architecture in ("DentalRCNN", "GeneralizedRCNN"):
        outputs, seconds, predictor = predict(
            args.config_file, args.weights, args.opts, images, architecture, args.batch_size
        )
        alone = [predictor.predict(image) for image in images]
        rows[architecture] = (seconds, changed(outputs, alone))
    for architecture, (seconds, count) in rows.items():
        print(f"{architecture:16s} {seconds:.3f} s/photo  {count} photos changed by their batch")


if __name__ == "__main__":
    main()
