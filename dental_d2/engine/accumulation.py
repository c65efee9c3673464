"""The training step: detectron2's SimpleTrainer summing gradients over batches, with mixed
precision on a CUDA GPU or a CPU."""

import contextlib
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch.nn.parallel import DistributedDataParallel


class GradientAccumulationTrainer(SimpleTrainer):
    """SimpleTrainer that sums the gradients of several batches before each optimizer step.

    One iteration reads `accumulation_steps` batches, so the effective batch is
    `SOLVER.IMS_PER_BATCH * accumulation_steps` at the memory cost of one batch.

    Args:
        model (nn.Module): the model, possibly wrapped in DistributedDataParallel.
        data_loader (Iterable): the training data.
        optimizer (torch.optim.Optimizer): the optimizer.
        accumulation_steps (int): batches per optimizer step.
        amp (bool): autocast the forward pass: float16 with a gradient scaler on CUDA,
            bfloat16 on the CPU (its exponent is float32's, so gradients need no scaling).
        device_type (str): "cuda" or "cpu", where the model runs.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        accumulation_steps: int,
        amp: bool = False,
        device_type: str = "cuda",
    ):
        super().__init__(model, data_loader, optimizer)
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.device_type = device_type
        self.autocast_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
        scaled = amp and device_type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if scaled else None

    def run_step(self):
        assert self.model.training, "[GradientAccumulationTrainer] model is in eval mode"
        self.optimizer.zero_grad()
        summed, data_time = {}, 0.0
        for step in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            # DDP averages gradients across processes only on the last backward of a step.
            last = step == self.accumulation_steps - 1
            no_sync = isinstance(self.model, DistributedDataParallel) and not last
            with (
                self.model.no_sync() if no_sync else contextlib.nullcontext(),
                torch.autocast(self.device_type, self.autocast_dtype, enabled=self.amp),
            ):
                loss_dict = self.model(data)
                loss = sum(loss_dict.values()) / self.accumulation_steps
            (self.grad_scaler.scale(loss) if self.grad_scaler else loss).backward()
            for name, value in loss_dict.items():
                summed[name] = summed.get(name, 0.0) + value.detach() / self.accumulation_steps
        self.after_backward()
        self._write_metrics(summed, data_time)
        if self.grad_scaler:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def build_step_trainer(cfg, model, data_loader, optimizer) -> SimpleTrainer:
    """The trainer that runs one iteration for `cfg`: detectron2's `SimpleTrainer`, or its
    `AMPTrainer` for CUDA mixed precision, or `GradientAccumulationTrainer` for accumulation
    and for bfloat16 on the CPU (detectron2's `AMPTrainer` autocasts on CUDA only).

    Args:
        cfg (CfgNode): SOLVER.ACCUMULATION_STEPS, SOLVER.AMP.ENABLED and MODEL.DEVICE.
        model (nn.Module): the model, possibly wrapped in DistributedDataParallel.
        data_loader (Iterable): the training data.
        optimizer (torch.optim.Optimizer): the optimizer.
    """
    amp = cfg.SOLVER.AMP.ENABLED
    device_type = "cuda" if cfg.MODEL.DEVICE.startswith("cuda") else "cpu"
    if cfg.SOLVER.ACCUMULATION_STEPS > 1 or (amp and device_type == "cpu"):
        return GradientAccumulationTrainer(
            model,
            data_loader,
            optimizer,
            cfg.SOLVER.ACCUMULATION_STEPS,
            amp=amp,
            device_type=device_type,
        )
    return (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
