"""Times training iterations and inference of a config's model on random data: s/iter on CPU.

.venv/bin/python benchmarks/bench_train_step.py --config-file CONFIG [KEY VALUE ...]
"""

import argparse
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from dental_d2.config import add_dental_config


def _random_batch(cfg, size, instances_per_image, generator):
    batch = []
    for _ in range(cfg.SOLVER.IMS_PER_BATCH):
        image = torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=generator)
        xy = torch.randint(0, size // 2, (instances_per_image, 2), generator=generator).float()
        wh = torch.randint(16, size // 2, (instances_per_image, 2), generator=generator).float()
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(instances_per_image, size, size, dtype=torch.bool)
        for index, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[index, y0:y1, x0:x1] = True
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(
            0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (instances_per_image,), generator=generator
        )
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--instances", type=int, default=10, help="instances per image")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    cfg = get_cfg()
    add_dental_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    size = cfg.INPUT.MIN_SIZE_TRAIN[0]
    generator = torch.Generator().manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    batch = _random_batch(cfg, size, args.instances, generator)

    model.train()
    times = []
    with EventStorage(0):
        for _ in range(args.iters + 1):
            start = time.perf_counter()
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model([{k: v for k, v in record.items() if k != "instances"} for record in batch])
    infer = (time.perf_counter() - start) / len(batch)
    train = sum(times[1:]) / args.iters
    print(
        f"{args.config_file}: {params:.1f}M parameters, {size}px, {cfg.SOLVER.IMS_PER_BATCH} images"
        f"/batch, threads {torch.get_num_threads()}: train {train:.2f} s/iter, "
        f"inference {infer:.3f} s/image"
    )


if __name__ == "__main__":
    main()
