"""Training throughput: our trainer's step against a plain torchvision step, same batch and size.

Both train on the same batch of synthetic dental images (from `dental_d2.data.synthetic`) held
in memory, so data loading is left out of both.
"""

import itertools

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances

from dental_d2.data.synthetic import CLASS_NAMES, make_synthetic_image

from .inference import latency, memory_mib, time_calls
from .models import torchvision_inputs, torchvision_maskrcnn, zero_box_regressors


def synthetic_batch(size: int, count: int, num_classes: int, seed: int = 0) -> list[dict]:
    """`count` synthetic images of `size` px with their instances.

    Returns:
        list[dict]: `image` (BGR uint8), `boxes` (XYXY float tensor), `classes` (0-based ids,
        folded into `num_classes`), `masks` (NxHxW bool tensor).
    """
    batch = []
    for index in range(count):
        rgb, instances = make_synthetic_image(np.random.default_rng([seed, index]), size)
        masks = torch.from_numpy(np.stack([mask for _, mask in instances]).astype(bool))
        ys, xs = [], []
        for mask in masks:
            rows, cols = torch.nonzero(mask, as_tuple=True)
            ys.append((rows.min(), rows.max() + 1))
            xs.append((cols.min(), cols.max() + 1))
        boxes = torch.tensor([[x0, y0, x1, y1] for (x0, x1), (y0, y1) in zip(xs, ys)]).float()
        classes = torch.tensor([CLASS_NAMES.index(name) % num_classes for name, _ in instances])
        batch.append(
            {"image": np.ascontiguousarray(rgb[:, :, ::-1]), "boxes": boxes,
             "classes": classes, "masks": masks}
        )  # fmt: skip
    return batch


def _dental_inputs(cfg, batch: list[dict]) -> list[dict]:
    inputs = []
    for record in batch:
        image = record["image"] if cfg.INPUT.FORMAT == "BGR" else record["image"][:, :, ::-1]
        instances = Instances(image.shape[:2])
        instances.gt_boxes = Boxes(record["boxes"])
        instances.gt_classes = record["classes"]
        instances.gt_masks = BitMasks(record["masks"])
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs.append({"image": tensor, "instances": instances})
    return inputs


def _freeze_weights(optimizer) -> None:
    """LR 0 for both trainers: the step does all its work (the optimizer's included) but the
    random weights stay put. A from-scratch R50 with frozen BN has losses in the hundreds, and
    one step at the config's LR sends it to NaN, which would end the measurement."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0


def _training_batch(cfg) -> list[dict]:
    return synthetic_batch(
        cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.ROI_HEADS.NUM_CLASSES
    )


def measure_dental_training(spec: dict, _unused=None) -> dict:
    """Times `SimpleTrainer.run_step` (the step `DentalTrainer` runs) with the config's model
    and optimizer, on `SOLVER.IMS_PER_BATCH` synthetic images of `INPUT.MIN_SIZE_TRAIN[0]` px.

    Args:
        spec (dict): `cfg` (a dental config), `device`, `iters`.
    """
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from dental_d2.engine.trainer import DentalTrainer

    cfg = spec["cfg"]
    batch = _training_batch(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).train()  # DentalTrainer.build_model also logs the whole model
    # As in inference and in torchvision's model: proposals are anchors. Random box deltas on
    # a from-scratch R50's huge features would make non-finite proposals, which end training.
    zero_box_regressors(model)
    optimizer = DentalTrainer.build_optimizer(cfg, model)
    _freeze_weights(optimizer)
    trainer = SimpleTrainer(model, itertools.repeat(_dental_inputs(cfg, batch)), optimizer)
    with EventStorage(0) as trainer.storage:

        def step():
            trainer.run_step()
            trainer.storage.iter = trainer.iter = trainer.iter + 1

        trainer.iter = 0
        times = time_calls(step, spec["iters"], spec["device"])
    return {"rows": [latency(times, len(batch))], **memory_mib(spec["device"])}


def measure_torchvision_training(spec: dict, _unused=None) -> dict:
    """Times a plain torchvision training step (forward, sum of losses, backward, SGD step)
    on the same images as `measure_dental_training`.

    Args:
        spec (dict): `cfg` (a dental config: sizes, classes, LR, momentum), `device`, `iters`.
    """
    cfg, device = spec["cfg"], spec["device"]
    batch = _training_batch(cfg)
    torch.manual_seed(0)
    model = torchvision_maskrcnn(cfg, "v1", for_training=True).train().to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    _freeze_weights(optimizer)
    images = torchvision_inputs([record["image"] for record in batch], device)
    targets = [
        {"boxes": r["boxes"].to(device), "labels": r["classes"].to(device) + 1,
         "masks": r["masks"].to(device, torch.uint8)}
        for r in batch
    ]  # fmt: skip

    def step():
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    times = time_calls(step, spec["iters"], device)
    return {"rows": [latency(times, len(batch))], **memory_mib(device)}
