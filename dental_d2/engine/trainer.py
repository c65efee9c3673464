"""DentalTrainer: detectron2's DefaultTrainer plus validation loss, early stopping, plateau LR."""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from torch import nn

from ..checkpoint import DentalCheckpointer
from ..checkpoint_contents import training_checkpointables
from ..data import DentalDatasetMapper, read_image
from ..errors import DentalError, TrainingInterrupted
from ..evaluation import DentalEvaluator
from ..runtime.base import PredictorInput
from ..stop_signals import signal_name
from .accumulation import build_step_trainer
from .hooks import (
    BestCheckpointer,
    EarlyStop,
    EarlyStopping,
    EvalOnceHook,
    ReduceLROnPlateau,
    ValidationLoss,
    VisualizePredictions,
)
from .lr_scheduler import WarmupPlateauLR
from .progress import EtaWithEvaluations
from .signals import Interrupted, StopOnSignal

logger = logging.getLogger(__name__)

PLATEAU_SCHEDULER = "ReduceLROnPlateau"


def validation_datasets(cfg) -> tuple[str, ...]:
    """The datasets evaluated during training: DATASETS.VALIDATION, else DATASETS.TEST."""
    return tuple(cfg.DATASETS.VALIDATION) or tuple(cfg.DATASETS.TEST)


class RemapClasses(nn.Module):
    """Wraps a model so its predicted class ids follow a dataset whose classes are the model's
    in another order.

    Args:
        model (nn.Module): the model, predicting ids in `model_classes` order.
        model_classes (list[str]): the model's class names.
        dataset_classes (list[str]): the same names in the dataset's order.
    """

    def __init__(self, model, model_classes, dataset_classes):
        super().__init__()
        self.model = model
        index = [dataset_classes.index(name) for name in model_classes]
        self.register_buffer("index", torch.tensor(index, dtype=torch.int64), persistent=False)

    def forward(self, batched_inputs):
        outputs = self.model(batched_inputs)
        for output in outputs:
            instances = output["instances"]
            instances.pred_classes = self.index.to(instances.pred_classes.device)[
                instances.pred_classes
            ]
        return outputs


def model_for_dataset(model, model_classes, dataset_name):
    """Returns `model`, wrapped to remap class ids if the dataset orders the same classes
    differently; refuses a dataset with other classes.

    Args:
        model (nn.Module): the model.
        model_classes (list[str]): the classes it predicts; empty means "those of the data".
        dataset_name (str): a registered dataset.
    """
    dataset_classes = list(MetadataCatalog.get(dataset_name).thing_classes)
    model_classes = list(model_classes) or dataset_classes
    if model_classes == dataset_classes:
        return model
    if sorted(model_classes) == sorted(dataset_classes):
        logger.warning(
            f"{dataset_name} orders the model's classes differently; predictions are remapped "
            f"by name from {model_classes} to {dataset_classes}."
        )
        return RemapClasses(model, model_classes, dataset_classes)
    raise DentalError(
        f"the model predicts {model_classes} but {dataset_name} has {dataset_classes}: evaluate "
        "on data with the same classes, or train a model on this data"
    )


class _UserErrorInHook(BaseException):
    """Carries a DentalError from a hook (a full disk during a save, say) out of detectron2's
    training loop, which logs a traceback for every Exception, to `DentalTrainer.train`."""


class DentalTrainer(DefaultTrainer):
    """DefaultTrainer with the dental data pipeline, evaluation on the validation split,
    validation loss, early stopping, plateau LR, the best checkpoint and TensorBoard images.
    """

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DentalDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg,
            dataset_name,
            mapper=DentalDatasetMapper(cfg, is_train=False),
            batch_size=cfg.TEST.IMS_PER_BATCH,
        )

    @classmethod
    def build_validation_loss_loader(cls, cfg, dataset_name):
        """Validation data with annotations, resized as at test time, without random flips."""
        mapper_args = DentalDatasetMapper.from_config(cfg, is_train=True)
        mapper_args["augmentations"] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        ]
        return build_detection_test_loader(
            cfg,
            dataset_name,
            mapper=DentalDatasetMapper(**mapper_args),
            batch_size=cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size() or 1,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, iteration=None):
        """`DentalEvaluator` of `dataset_name`; `iteration` is that of the weights scored (from
        the caller, which has read them), for the report."""
        return DentalEvaluator(cfg, dataset_name, output_dir=output_folder, iteration=iteration)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME != PLATEAU_SCHEDULER:
            return super().build_lr_scheduler(cfg, optimizer)
        return WarmupPlateauLR(
            optimizer,
            warmup_iters=cfg.SOLVER.WARMUP_ITERS,
            warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
            warmup_method=cfg.SOLVER.WARMUP_METHOD,
            min_lr=cfg.SOLVER.PLATEAU.MIN_LR,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates each of DATASETS.TEST, remapping class ids by name where needed."""
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            single = cfg.clone()
            single.defrost()
            single.DATASETS.TEST = (dataset_name,)
            mapped = model_for_dataset(model, cfg.DENTAL.CLASS_NAMES, dataset_name)
            chosen = None if evaluators is None else [evaluators[index]]
            results[dataset_name] = super().test(single, mapped, chosen)
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    @classmethod
    def test_with_TTA(cls, cfg, model, folder=None, iteration=None):
        """Evaluates DATASETS.TEST with test-time augmentation (TEST.AUG.*: flips and sizes),
        as detectron2's tools/train_net.py does; results go to `<folder>/<dataset>`.

        Args:
            cfg (CfgNode): the config; TEST.AUG.MIN_SIZES, MAX_SIZE and FLIP pick the views.
            model (GeneralizedRCNN): the model to wrap in detectron2's GeneralizedRCNNWithTTA.
            folder (str | None): where the reports go; None means OUTPUT_DIR/eval_TTA.
            iteration (int | None): the iteration of the weights scored, for the report.
        """
        logger.info(
            f"Evaluating with test-time augmentation: sizes {tuple(cfg.TEST.AUG.MIN_SIZES)}, "
            f"max {cfg.TEST.AUG.MAX_SIZE}, flip {cfg.TEST.AUG.FLIP}"
        )
        tta_model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg,
                name,
                os.path.join(folder or os.path.join(cfg.OUTPUT_DIR, "eval_TTA"), name),
                iteration=iteration,
            )
            for name in cfg.DATASETS.TEST
        ]
        return cls.test(cfg, tta_model, evaluators)

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with two changes it has no hook for: DistributedDataParallel
        # gets device_ids=None on CPU processes (gloo), which refuse a device id, and
        # the step's trainer follows SOLVER.ACCUMULATION_STEPS and SOLVER.AMP on this device.
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = not cfg.MODEL.DEVICE.startswith("cuda")
        device_ids = None if on_cpu else [comm.get_local_rank()]
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DentalCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_pickle=cfg.DENTAL.ALLOW_PICKLE,
            trainer=weakref.proxy(self),
            # Every checkpoint carries the class names the model predicts and the config it is
            # trained with, so that the weights alone make a predictor.
            **training_checkpointables(cfg),
        )
        self.checkpointer.remove_stale_temporaries()
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Trains to SOLVER.MAX_ITER or an early stop; returns the last test results.

        Raises:
            TrainingInterrupted: SIGTERM or SIGINT stopped training after saving a checkpoint.
            DentalError: a hook met a problem the user can fix (e.g. CheckpointDiskFull).
        """
        try:
            return super().train()
        except _UserErrorInHook as carried:
            raise carried.args[0] from None
        except EarlyStop as stop:
            logger.info(f"Training ended early at iteration {stop.args[0]}; see the log above.")
            return None
        except Interrupted as stop:
            # detectron2 counts iterations from 0 and names the checkpoint after that index;
            # the message counts the iterations done, as every other one does.
            raise TrainingInterrupted(
                f"training stopped by {signal_name(stop.signal_number)} after "
                f"{self.iter + 1} iterations; {stop.checkpoint} is saved; continue with the same "
                "command and --resume",
                stop.signal_number,
            ) from None

    def after_step(self):
        try:
            super().after_step()
        except DentalError as e:
            raise _UserErrorInHook(e) from None

    def build_hooks(self):
        """Timing and LR, then evaluation, then the hooks that count evaluations, then the
        checkpoints (so each holds the counts of the evaluation it follows), then the writers.
        """
        cfg = self.cfg
        is_main = comm.is_main_process()
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        # Kept for the ETA of build_writers, which counts the evaluations still to come.
        self._timed_evaluations = self._evaluation_hooks()
        ret += self._timed_evaluations
        ret += self._metric_hooks()
        if is_main:
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.DENTAL.LOG_PERIOD))
        # Last: it saves the state every other hook has reached at the interrupted iteration.
        ret.append(StopOnSignal(self.checkpointer if is_main else None))
        return ret

    def build_writers(self):
        """detectron2's default writers, the console's ETA counting the evaluations to come."""
        writers = super().build_writers()
        logger.info(
            "The ETA in the log lines counts the training iterations and the evaluations still "
            "to come, each as long as the last one (before the first: '+ N evaluations'); not "
            "the test-split evaluation after training."
        )
        return [
            EtaWithEvaluations(self.max_iter, self._timed_evaluations, self.cfg.TEST.EVAL_PERIOD)
            if type(writer) is CommonMetricPrinter
            else writer
            for writer in writers
        ]

    def _evaluation_hooks(self):
        """Validation loss, COCO evaluation of the validation split, TensorBoard pictures."""
        cfg = self.cfg
        period = cfg.TEST.EVAL_PERIOD
        validation = validation_datasets(cfg)
        ret = []
        if cfg.TEST.VALIDATION_LOSS and validation:
            loader = self.build_validation_loss_loader(cfg, validation[0])
            ret.append(ValidationLoss(period, loader))
        validation_cfg = cfg.clone()
        validation_cfg.defrost()
        validation_cfg.DATASETS.TEST = validation
        ret.append(EvalOnceHook(period, lambda: self.test(validation_cfg, self.model)))
        if validation and cfg.DENTAL.EVAL.NUM_VIS_IMAGES > 0:
            records = DatasetCatalog.get(validation[0])[: cfg.DENTAL.EVAL.NUM_VIS_IMAGES]
            ret.append(
                VisualizePredictions(
                    period,
                    records,
                    validation[0],
                    PredictorInput(cfg),
                    lambda path: read_image(path, format="RGB"),
                    cfg.DENTAL.EVAL.SCORE_THRESHOLD,
                )
            )
        return ret

    def _metric_hooks(self):
        """Plateau LR cuts, early stopping and the best checkpoint, in the order that lets the
        best checkpoint hold the other two's state after counting its evaluation."""
        cfg = self.cfg
        period = cfg.TEST.EVAL_PERIOD
        early = cfg.SOLVER.EARLY_STOPPING
        ret = []
        if cfg.SOLVER.LR_SCHEDULER_NAME == PLATEAU_SCHEDULER:
            plateau = cfg.SOLVER.PLATEAU
            ret.append(
                ReduceLROnPlateau(
                    period,
                    plateau.METRIC,
                    plateau.MODE,
                    plateau.FACTOR,
                    plateau.PATIENCE,
                    plateau.THRESHOLD,
                )
            )
        if early.ENABLED:
            checkpointer = self.checkpointer if comm.is_main_process() else None
            ret.append(
                EarlyStopping(
                    period, early.METRIC, early.MODE, early.PATIENCE, early.MIN_DELTA, checkpointer
                )
            )
        if comm.is_main_process():
            ret.append(BestCheckpointer(period, self.checkpointer, early.METRIC, early.MODE))
        return ret
