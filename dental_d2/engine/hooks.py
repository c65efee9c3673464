"""Training hooks: validation loss, early stopping, plateau LR cuts, best checkpoint, TB images."""

import contextlib
import logging
import math
import operator
import time

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

from ..config import DEFAULT_SCORE_THRESHOLD
from ..visualize import draw_instances, side_by_side
from .progress import iterations_done

logger = logging.getLogger(__name__)


def _is_eval_iteration(trainer, period: int) -> bool:
    """Same condition as detectron2's EvalHook.after_step, so metric hooks see fresh metrics."""
    next_iter = trainer.iter + 1
    return period > 0 and next_iter % period == 0 and next_iter != trainer.max_iter


@contextlib.contextmanager
def _model_in_mode(model, training: bool):
    """Yields the module inside DistributedDataParallel (these hooks synchronise no gradients)
    in train or eval mode, and puts the mode back afterwards, also after an exception."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


class EarlyStop(BaseException):
    """Raised by `EarlyStopping` to end detectron2's training loop.

    It derives from BaseException so that the loop's `except Exception` does not log it as a
    crash; the loop's `finally` still runs every hook's `after_train` (final checkpoint, final
    evaluation). `DentalTrainer.train` catches it.
    """


class EvalOnceHook(hooks.EvalHook):
    """detectron2's EvalHook that never runs twice for one iteration.

    After an early stop, the iteration just evaluated in `after_step` becomes the last one and
    `after_train` would evaluate it again; this hook skips that second pass (its results are
    already in the storage). Subclasses compute in `_evaluate` instead of passing a function.
    `last_seconds` is how long the last evaluation took (None before the first), for the ETA.

    Args:
        eval_period (int): run every `eval_period` iterations and after training.
        eval_function (Callable | None): returns a nested dict of metrics; None means
            `self._evaluate`.
    """

    def __init__(self, eval_period: int, eval_function=None):
        super().__init__(eval_period, eval_function or self._evaluate)
        self._last_eval_iter = None
        self.last_seconds = None

    def _evaluate(self):
        raise NotImplementedError

    def _do_eval(self):
        if self._last_eval_iter == self.trainer.iter:
            return
        self._last_eval_iter = self.trainer.iter
        start = time.perf_counter()
        super()._do_eval()
        self.last_seconds = time.perf_counter() - start


class ValidationLoss(EvalOnceHook):
    """Computes the training losses on validation data, without gradients, at each evaluation.

    The model runs in training mode (so it returns losses) under `torch.no_grad()`; the losses
    are averaged over all images and processes and stored as `validation_loss` (the sum) and
    `validation/<loss name>`. Models with BatchNorm in training mode would update its running
    statistics here: the dental configs use FrozenBN or GroupNorm, which have none.
    Run it before the hooks that monitor `validation_loss`.

    Args:
        period (int): run every `period` iterations (the evaluation period) and after training.
        data_loader (Iterable): yields batches of validation data in the training format
            (with `instances`), e.g. `build_detection_test_loader` with a training mapper.
    """

    def __init__(self, period: int, data_loader):
        super().__init__(period)
        self._data_loader = data_loader

    def _evaluate(self):
        totals, num_batches = {}, 0
        # A private storage keeps the heads' training statistics (accuracy, fg counts) of
        # validation batches out of the training curves.
        with (
            _model_in_mode(self.trainer.model, training=True) as model,
            torch.no_grad(),
            EventStorage(self.trainer.iter),
        ):
            for batch in self._data_loader:
                for name, value in model(batch).items():
                    totals[name] = totals.get(name, 0.0) + float(value)
                num_batches += 1
        gathered = comm.all_gather((totals, num_batches))
        count = sum(n for _, n in gathered)
        if count == 0:
            logger.warning("ValidationLoss: the validation data is empty; nothing computed.")
            return None
        names = sorted({name for part, _ in gathered for name in part})
        means = {name: sum(part.get(name, 0.0) for part, _ in gathered) / count for name in names}
        total = sum(means.values())
        logger.info(
            f"Validation loss at iteration {iterations_done(self.trainer)}: {total:.4f} ("
            + ", ".join(f"{name}: {value:.4f}" for name, value in means.items())
            + ")"
        )
        return {"validation_loss": total, "validation": means}


class _MetricPatienceHook(HookBase):
    """Watches a stored metric at each evaluation and acts after `patience` evaluations without
    improvement. The main process reads the metric and every process applies the same decision.
    """

    def __init__(
        self,
        eval_period: int,
        metric: str,
        mode: str,
        patience: int,
        min_delta: float = 0.0,
        rel_threshold: float = 0.0,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'min' or 'max', got {mode!r}")
        self._period = eval_period
        self._metric = metric
        self._mode = mode
        self._compare = operator.lt if mode == "min" else operator.gt
        self._patience = patience
        self._min_delta = abs(min_delta)
        self._rel_threshold = abs(rel_threshold)
        self.best_metric = None
        self.best_iter = None
        self.num_bad_evals = 0

    def _read_metric(self):
        value = None
        if comm.is_main_process():
            latest = self.trainer.storage.latest().get(self._metric)
            if latest is None:
                logger.warning(
                    f"{type(self).__name__}: metric {self._metric!r} was not computed or stored;"
                    " nothing is done at this evaluation. Check its name in metrics.json."
                )
            else:
                value = float(latest[0])
        # The evaluators put their results in the main process's storage only.
        return comm.all_gather(value)[0]

    def _improved(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        margin = self._min_delta + self._rel_threshold * abs(self.best_metric)
        target = self.best_metric - margin if self._mode == "min" else self.best_metric + margin
        return self._compare(value, target)

    def _check(self):
        value = self._read_metric()
        if value is None:
            return
        if math.isnan(value) or math.isinf(value):
            logger.warning(f"{type(self).__name__}: {self._metric} is {value}; counted as no gain.")
            self.num_bad_evals += 1
        elif self._improved(value):
            self.best_metric, self.best_iter = value, self.trainer.iter + 1
            self.num_bad_evals = 0
        else:
            self.num_bad_evals += 1
        if self.num_bad_evals >= self._patience:
            self._on_patience_exhausted(value)

    def _on_patience_exhausted(self, value: float):
        raise NotImplementedError

    def after_step(self):
        if _is_eval_iteration(self.trainer, self._period):
            self._check()

    def state_dict(self):
        return {
            "best_metric": self.best_metric,
            "best_iter": self.best_iter,
            "num_bad_evals": self.num_bad_evals,
        }

    def load_state_dict(self, state):
        self.best_metric = state["best_metric"]
        self.best_iter = state["best_iter"]
        self.num_bad_evals = state["num_bad_evals"]


class EarlyStopping(_MetricPatienceHook):
    """Ends training when a metric has not improved for `patience` evaluations.

    Training ends cleanly: `model_final` is written, the current iteration becomes the last
    one so every hook's `after_train` runs as at a normal end, and the caller exits 0. Put it
    after the hooks that produce the metric. The hooks after it (in `DentalTrainer`: the best
    checkpoint, the periodic checkpoint, the writers and the signal hook) skip `after_step` at
    the stopping iteration, which costs nothing: it stops only on an evaluation that set no new
    best, and the writers log that iteration in their `after_train`.

    Args:
        eval_period (int): the period of the evaluation that produces the metric.
        metric (str): a key of the trainer's storage, e.g. "validation_loss" or "segm/AP".
        mode (str): "min" if lower is better, "max" if higher is better.
        patience (int): evaluations without improvement before training stops.
        min_delta (float): an improvement smaller than this does not count.
        checkpointer (Checkpointer | None): saves `model_final` at the stop (main process);
            None where no checkpoint is written.
    """

    def __init__(self, eval_period, metric, mode, patience, min_delta=0.0, checkpointer=None):
        super().__init__(eval_period, metric, mode, patience, min_delta=min_delta)
        self._checkpointer = checkpointer
        self.stopped_iter = None

    def _on_patience_exhausted(self, value: float):
        self.stopped_iter = self.trainer.iter + 1
        logger.info(
            f"Early stopping at iteration {self.stopped_iter}: {self._metric} = {value:.5f} has "
            f"not improved on {self.best_metric:.5f} (iteration {self.best_iter}) for "
            f"{self.num_bad_evals} evaluations."
        )
        if self._checkpointer is not None:
            self._checkpointer.save("model_final", iteration=self.trainer.iter)
        # Let after_train treat this iteration as the last one.
        self.trainer.max_iter = self.trainer.iter + 1
        raise EarlyStop(self.stopped_iter)


class ReduceLROnPlateau(_MetricPatienceHook):
    """Multiplies the learning rate by `factor` when a metric stops improving.

    detectron2's LRScheduler hook steps every iteration and never sees a metric, so this hook
    acts at evaluations instead, on the trainer's `WarmupPlateauLR` scheduler (which keeps
    applying warm-up). Put it after the hooks that produce the metric.

    Args:
        eval_period (int): the period of the evaluation that produces the metric.
        metric (str): a key of the trainer's storage, e.g. "validation_loss" or "segm/AP".
        mode (str): "min" if lower is better, "max" if higher is better.
        factor (float): the multiplier applied at each cut, in (0, 1).
        patience (int): evaluations without improvement before a cut.
        threshold (float): relative improvement that counts, as torch's threshold_mode "rel".
    """

    def __init__(
        self,
        eval_period: int,
        metric: str,
        mode: str,
        factor: float,
        patience: int,
        threshold: float = 1e-4,
    ):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        super().__init__(eval_period, metric, mode, patience, rel_threshold=threshold)
        self._factor = factor

    def _on_patience_exhausted(self, value: float):
        old_lr, new_lr = self.trainer.scheduler.reduce(self._factor)
        logger.info(
            f"ReduceLROnPlateau at iteration {self.trainer.iter + 1}: {self._metric} = "
            f"{value:.5f} has not improved on {self.best_metric:.5f} for {self.num_bad_evals} "
            f"evaluations; learning rate {old_lr:.3g} -> {new_lr:.3g}."
        )
        self.num_bad_evals = 0


class BestCheckpointer(hooks.BestCheckpointer):
    """detectron2's BestCheckpointer that records a new best before saving it, so
    `model_best.pth` holds the state after counting its own evaluation, and whose best value
    survives `--resume`. Put it after every hook that counts evaluations (plateau, early stop).

    Args:
        eval_period (int): the period of the evaluation that produces the metric.
        checkpointer (Checkpointer): the trainer's checkpointer.
        val_metric (str): a key of the trainer's storage, e.g. "validation_loss".
        mode (str): "min" or "max".
        file_prefix (str): name of the checkpoint file, without extension.
    """

    def _best_checking(self):
        latest = self.trainer.storage.latest().get(self._val_metric)
        if latest is None:
            logger.warning(
                f"BestCheckpointer: metric {self._val_metric!r} was not computed or stored; "
                "no best checkpoint at this evaluation. Check its name in metrics.json."
            )
            return
        value = latest[0]
        # The iterations completed, as every message counts them (not the storage's iteration,
        # which after training is one more than the last iteration's index).
        done = iterations_done(self.trainer)
        previous, previous_iter = self.best_metric, self.best_iter
        if previous is not None and not self._compare(value, previous):
            logger.info(
                f"Not saving {self._file_prefix}: {self._val_metric} = {value:.5f} is not better "
                f"than {previous:.5f} (iteration {previous_iter})."
            )
            return
        if not self._update_best(value, done):  # NaN or Inf is never a best
            return
        # A checkpoint stores detectron2's index of its last iteration, as model_final does.
        self._checkpointer.save(self._file_prefix, iteration=done - 1)
        logger.info(
            f"Saved {self._file_prefix}: {self._val_metric} = {value:.5f} at iteration "
            f"{done}" + ("" if previous is None else f" (was {previous:.5f})")
        )

    def state_dict(self):
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state):
        self.best_metric = state["best_metric"]
        self.best_iter = state["best_iter"]


class VisualizePredictions(EvalOnceHook):
    """Writes a few validation images with predictions next to ground truth to TensorBoard.

    The model sees each image as `Predictor` and evaluation do (`PredictorInput`: converted to
    `INPUT.FORMAT`, resized to `INPUT.MIN_SIZE_TEST`), so the pictures show what is scored.
    Register it in every process (EvalOnceHook synchronises them); only the main one draws.

    Args:
        period (int): run every `period` iterations (the evaluation period) and after training.
        dataset_dicts (list[dict]): the images to draw, in detectron2's dataset format.
        dataset_name (str): the registered dataset, for class names and colours.
        model_input (Callable[[np.ndarray], dict]): makes the model's input from a BGR image;
            `dental_d2.runtime.base.PredictorInput(cfg)`.
        read_image (Callable[[str], np.ndarray]): loads an image file as RGB uint8.
        score_threshold (float): predictions below this score are not drawn.
    """

    def __init__(
        self,
        period,
        dataset_dicts,
        dataset_name,
        model_input,
        read_image,
        score_threshold=DEFAULT_SCORE_THRESHOLD,
    ):
        super().__init__(period)
        self._dicts = dataset_dicts
        self._metadata = MetadataCatalog.get(dataset_name)
        self._model_input = model_input
        self._read_image = read_image
        self._score_threshold = score_threshold

    def _evaluate(self):
        if comm.is_main_process():
            self._draw()

    def _draw(self):
        with _model_in_mode(self.trainer.model, training=False) as model:
            for index, record in enumerate(self._dicts):
                image = self._read_image(record["file_name"])
                with torch.no_grad():
                    outputs = model([self._model_input(image[:, :, ::-1])])
                instances = outputs[0]["instances"].to("cpu")
                instances = instances[instances.scores >= self._score_threshold]
                truth = annotations_to_instances(
                    record.get("annotations", []), image.shape[:2], mask_format="bitmask"
                )
                # Drawn as tools/visualize.py draws: the same colour for a class in every picture.
                pair = side_by_side(
                    draw_instances(image, truth, self._metadata),
                    draw_instances(image, instances, self._metadata),
                )
                self.trainer.storage.put_image(
                    f"val_predictions/{index}_truth_vs_predicted", pair.transpose(2, 0, 1)
                )
