"""A learning-rate schedule with warm-up whose level is cut by the ReduceLROnPlateau hook."""

import torch
from detectron2.solver.lr_scheduler import _get_warmup_factor_at_iter


class WarmupPlateauLR(torch.optim.lr_scheduler.LRScheduler):
    """Constant learning rate after detectron2-style warm-up, times a scale that only the
    `ReduceLROnPlateau` hook changes (through `reduce`).

    The scale is part of `state_dict()`, so `--resume` restores cuts already made.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer whose groups' LRs are set.
        warmup_iters (int): iterations of warm-up.
        warmup_factor (float): LR multiplier at iteration 0 of warm-up.
        warmup_method (str): "linear" or "constant", as SOLVER.WARMUP_METHOD.
        min_lr (float): cuts never take a group's LR below this.
        last_epoch (int): the last iteration done, -1 before training.
    """

    def __init__(
        self,
        optimizer,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"WarmupPlateauLR: unknown warm-up method {warmup_method!r}")
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        self.min_lr = min_lr
        self.scale = 1.0
        super().__init__(optimizer, last_epoch)

    def _scaled(self, base_lr: float) -> float:
        return max(base_lr * self.scale, min(self.min_lr, base_lr))

    def get_lr(self):
        # detectron2's WarmupMultiStepLR factor; its public WarmupParamScheduler works on a
        # fraction of training, not on the iteration this schedule is stepped with.
        warmup = _get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        return [self._scaled(base_lr) * warmup for base_lr in self.base_lrs]

    def reduce(self, factor: float) -> tuple[float, float]:
        """Multiplies the LR level by `factor` from the next iteration on.

        Args:
            factor (float): the multiplier, in (0, 1).

        Returns:
            tuple[float, float]: the first group's LR level (after warm-up) before and after.
        """
        before = self._scaled(self.base_lrs[0])
        self.scale *= factor
        after = self._scaled(self.base_lrs[0])
        return before, after
