"""Training iterations per minute of a dental config, variant against variant, in one process.

    python benchmarks/bench_train_step.py --config-file configs/dental_lite0.yaml \\
        --variants fp32,channels_last,bf16 DENTAL.DATA_ROOT ../shared/datasets/dentalai

Each variant is the config plus a few overrides (VARIANTS below). Every variant gets its own
model, built from the same seed and the config's MODEL.WEIGHTS, and its own optimizer; they
then take turns, a few steps each per round, on the same real training batches, made once by
the training data loader and held in memory. Taking turns spreads any load on the machine over
all variants alike. The table gives seconds per step (median over all rounds), iterations per
minute against the first variant, and the mean training loss of the last round, to show that a
faster variant learns the same (same batches, same order, same starting weights). The time the
data loader takes per batch, in this process, is printed too: in training it runs in a worker
beside the steps.
"""

import argparse
import statistics
import sys
import time

import torch
from detectron2.utils.events import EventStorage

from dental_d2.checkpoint import DentalCheckpointer
from dental_d2.config import build_config
from dental_d2.data import register_from_config
from dental_d2.engine.accumulation import build_step_trainer
from dental_d2.engine.trainer import DentalTrainer

# name -> config overrides on top of --config-file. "fp32" is the reference: NCHW, float32.
VARIANTS = {
    "fp32": ["MODEL.CHANNELS_LAST", "False", "SOLVER.AMP.ENABLED", "False"],
    "channels_last": ["MODEL.CHANNELS_LAST", "True", "SOLVER.AMP.ENABLED", "False"],
    "bf16": ["MODEL.CHANNELS_LAST", "False", "SOLVER.AMP.ENABLED", "True"],
    "channels_last+bf16": ["MODEL.CHANNELS_LAST", "True", "SOLVER.AMP.ENABLED", "True"],
    "channels_last+freeze2": [
        "MODEL.CHANNELS_LAST", "True", "SOLVER.AMP.ENABLED", "False", "MODEL.TIMM.FREEZE_AT", "2",
    ],
    "channels_last+freeze3": [
        "MODEL.CHANNELS_LAST", "True", "SOLVER.AMP.ENABLED", "False", "MODEL.TIMM.FREEZE_AT", "3",
    ],
}  # fmt: skip


def _batches(cfg, count: int) -> tuple[list, float]:
    """`count` training batches from the config's own loader, in this process; seconds each."""
    loader = iter(DentalTrainer.build_train_loader(cfg))
    batches, start = [], time.perf_counter()
    for _ in range(count):
        batches.append(next(loader))
    return batches, (time.perf_counter() - start) / count


def _variant(config_file: str, opts: list[str], batches: list) -> dict:
    """A model, optimizer and step trainer for one variant, at the config's starting weights."""
    cfg = build_config(config_file, opts)
    register_from_config(cfg)
    torch.manual_seed(cfg.SEED)
    model = DentalTrainer.build_model(cfg).train()
    DentalCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    optimizer = DentalTrainer.build_optimizer(cfg, model)
    scheduler = DentalTrainer.build_lr_scheduler(cfg, optimizer)
    feed = _Feed(batches)
    trainer = build_step_trainer(cfg, model, feed, optimizer)
    trainer.iter = 0
    trainer.storage = EventStorage(0)
    return {"trainer": trainer, "scheduler": scheduler, "times": [], "cpu": [], "losses": []}


class _Feed:
    """The held batches, in order, again and again: every variant sees the same sequence."""

    def __init__(self, batches):
        self.batches, self.index = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch


def _steps(variant: dict, count: int) -> None:
    trainer = variant["trainer"]
    losses = []
    with trainer.storage:
        for _ in range(count):
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.run_step()
            variant["times"].append(time.perf_counter() - start)
            variant["cpu"].append(time.process_time() - cpu_start)
            variant["scheduler"].step()
            losses.append(trainer.storage.history("total_loss").latest())
            trainer.iter += 1
            trainer.storage.iter = trainer.iter
    variant["losses"] = losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/dental_lite0.yaml")
    parser.add_argument("--variants", default="fp32,channels_last,bf16,channels_last+bf16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--batches", type=int, default=12, help="distinct batches held")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    cfg = build_config(args.config_file, [*args.opts, "DATALOADER.NUM_WORKERS", "0"])
    register_from_config(cfg)
    batches, data_seconds = _batches(cfg, args.batches)
    variants = {name: _variant(args.config_file, [*args.opts, *VARIANTS[name]], batches)
                for name in names}  # fmt: skip
    for _ in range(args.rounds):
        for name in names:
            _steps(variants[name], args.steps)
    # The first round warms up oneDNN's kernels and the allocator: not counted.
    medians = {name: statistics.median(v["times"][args.steps :]) for name, v in variants.items()}
    cpu = {name: statistics.median(v["cpu"][args.steps :]) for name, v in variants.items()}
    reference = medians[names[0]]
    print(
        f"{args.config_file}, {cfg.SOLVER.IMS_PER_BATCH} images per step, "
        f"{torch.get_num_threads()} threads; data loader {data_seconds:.2f} s per batch"
    )
    print(
        f"| variant | s/step | iterations/min | vs {names[0]} | CPU s/step | vs {names[0]} "
        "| loss, last round |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        loss = statistics.mean(variants[name]["losses"])
        print(
            f"| {name} | {medians[name]:.2f} | {60 / medians[name]:.1f} | "
            f"{reference / medians[name]:.2f}x | {cpu[name]:.2f} | "
            f"{cpu[names[0]] / cpu[name]:.2f}x | {loss:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
