"""Early stopping, plateau LR and best-checkpoint hooks driven by scripted metric sequences;
the TensorBoard pictures predicted as the Predictor predicts."""

import math
import types

import pytest
import torch
from detectron2.checkpoint import Checkpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import EventStorage
from support import CLASSES, DEMO_CONFIG, RANDOM_DEMO_MODEL, REPO_ROOT, TinyModel
from torch import nn

from dental_d2.data import read_image
from dental_d2.engine.accumulation import GradientAccumulationTrainer
from dental_d2.engine.hooks import (
    BestCheckpointer,
    EarlyStop,
    EarlyStopping,
    ReduceLROnPlateau,
    VisualizePredictions,
)
from dental_d2.engine.lr_scheduler import WarmupPlateauLR
from dental_d2.predictor import Predictor
from dental_d2.runtime.base import PredictorInput

PERIOD = 2


def _data():
    while True:
        yield torch.ones(2, 3)


class _ScriptedMetric(HookBase):
    """Puts the next value of a sequence into storage at each evaluation iteration."""

    def __init__(self, name, values):
        self.name = name
        self.values = list(values)
        self.evaluations = 0

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % PERIOD == 0 and next_iter != self.trainer.max_iter:
            value = self.values[self.evaluations]
            self.evaluations += 1
            if value is not None:
                self.trainer.storage.put_scalar(self.name, value, smoothing_hint=False)


class _Record(HookBase):
    def __init__(self):
        self.after_train_iter = None

    def after_train(self):
        self.after_train_iter = self.trainer.iter


def _trainer(*hooks, lr=0.1, scheduler=False):
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = SimpleTrainer(model, _data(), optimizer)
    if scheduler:
        trainer.scheduler = WarmupPlateauLR(optimizer)
    trainer.register_hooks(list(hooks))
    return trainer


def _run(trainer, max_iter):
    try:
        trainer.train(0, max_iter)
    except EarlyStop:
        return True
    return False


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    # best 0.8 at evaluation 2; evaluations 3, 4, 5 do not improve on it -> stop at the 5th.
    metric = _ScriptedMetric("validation_loss", [1.0, 0.8, 0.85, 0.8, 0.9, 0.1, 0.1])
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=3)
    record = _Record()
    trainer = _trainer(metric, record, stopper)
    assert _run(trainer, max_iter=100)
    assert metric.evaluations == 5
    assert stopper.stopped_iter == 5 * PERIOD
    assert stopper.best_metric == pytest.approx(0.8)
    assert stopper.best_iter == 2 * PERIOD
    # after_train ran, treating the stop iteration as the last one
    assert record.after_train_iter == 5 * PERIOD - 1
    assert trainer.max_iter == 5 * PERIOD


def test_early_stopping_max_mode_and_min_delta():
    # improvements of 0.5 are below min_delta=1, so evaluations 2 and 3 count as bad.
    metric = _ScriptedMetric("segm/AP", [10.0, 10.5, 11.0, 20.0])
    stopper = EarlyStopping(PERIOD, "segm/AP", "max", patience=2, min_delta=1.0)
    trainer = _trainer(metric, stopper)
    assert _run(trainer, max_iter=100)
    assert metric.evaluations == 3
    assert stopper.best_metric == 10.0


def test_early_stopping_runs_to_the_end_while_metric_improves():
    metric = _ScriptedMetric("validation_loss", [5, 4, 3, 2, 1])
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=1)
    trainer = _trainer(metric, stopper)
    assert not _run(trainer, max_iter=5 * PERIOD + 1)
    assert stopper.stopped_iter is None
    assert trainer.iter == 5 * PERIOD + 1


def test_early_stopping_missing_metric_warns_and_never_stops(caplog):
    metric = _ScriptedMetric("validation_loss", [None] * 10)
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=1)
    trainer = _trainer(metric, stopper)
    assert not _run(trainer, max_iter=4 * PERIOD + 1)
    assert "was not computed or stored" in caplog.text


def test_early_stopping_counts_nan_as_no_improvement():
    metric = _ScriptedMetric("validation_loss", [1.0, math.nan, math.nan, 0.1])
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=2)
    trainer = _trainer(metric, stopper)
    assert _run(trainer, max_iter=100)
    assert metric.evaluations == 3
    assert stopper.best_metric == 1.0


def test_early_stopping_saves_final_checkpoint(tmp_path):
    metric = _ScriptedMetric("validation_loss", [1.0, 2.0])
    trainer = _trainer(metric)
    checkpointer = Checkpointer(trainer.model, str(tmp_path))
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", 1, checkpointer=checkpointer)
    trainer.register_hooks([stopper])
    assert _run(trainer, max_iter=100)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 2 * PERIOD - 1


def test_plateau_cuts_lr_after_patience_and_resets_count():
    # best 1.0; 3 bad evaluations -> cut to 0.01; 3 more -> 0.001.
    values = [1.0, 1.0, 2.0, 1.5, 0.99999, 3.0, 3.0, 3.0, 3.0]
    metric = _ScriptedMetric("validation_loss", values)
    plateau = ReduceLROnPlateau(PERIOD, "validation_loss", "min", factor=0.1, patience=3)
    trainer = _trainer(metric, plateau, scheduler=True)

    lrs = []

    class _LRStep(HookBase):
        def after_step(self):
            self.trainer.scheduler.step()
            lrs.append(self.trainer.optimizer.param_groups[0]["lr"])

    trainer.register_hooks([_LRStep()])
    trainer.train(0, len(values) * PERIOD + 1)
    # cut at evaluation 4 (iteration 8) and evaluation 7 (iteration 14); 0.99999 is within the
    # relative threshold 1e-4 of 1.0, so it is no improvement.
    assert lrs[7] == pytest.approx(0.01)
    assert lrs[6] == pytest.approx(0.1)
    assert lrs[13] == pytest.approx(0.001)
    assert lrs[12] == pytest.approx(0.01)
    assert trainer.scheduler.scale == pytest.approx(0.01)


def test_plateau_respects_min_lr():
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = WarmupPlateauLR(optimizer, min_lr=0.02)
    assert scheduler.reduce(0.1) == pytest.approx((0.1, 0.02))
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_warmup_then_constant():
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = WarmupPlateauLR(optimizer, warmup_iters=10, warmup_factor=0.1)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(12):
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(0.1)
    assert seen[5] == pytest.approx(0.55)
    assert seen[10] == pytest.approx(1.0) and seen[12] == pytest.approx(1.0)


def test_hook_state_survives_save_and_load(tmp_path):
    metric = _ScriptedMetric("validation_loss", [1.0, 0.5, 0.7, 0.8])
    stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=5)
    plateau = ReduceLROnPlateau(PERIOD, "validation_loss", "min", factor=0.5, patience=2)
    trainer = _trainer(metric, plateau, stopper, scheduler=True)
    best = BestCheckpointer(
        PERIOD, Checkpointer(trainer.model, str(tmp_path)), "validation_loss", "min"
    )
    trainer.register_hooks([best])
    trainer.train(0, 4 * PERIOD + 1)
    assert (stopper.num_bad_evals, plateau.num_bad_evals) == (2, 0)
    assert trainer.scheduler.scale == pytest.approx(0.5)
    state = trainer.state_dict()
    scheduler_state = trainer.scheduler.state_dict()

    fresh_stopper = EarlyStopping(PERIOD, "validation_loss", "min", patience=5)
    fresh_plateau = ReduceLROnPlateau(PERIOD, "validation_loss", "min", factor=0.5, patience=2)
    resumed = _trainer(fresh_plateau, fresh_stopper, scheduler=True)
    fresh_best = BestCheckpointer(
        PERIOD, Checkpointer(resumed.model, str(tmp_path)), "validation_loss", "min"
    )
    resumed.register_hooks([fresh_best])
    resumed.load_state_dict(state)
    resumed.scheduler.load_state_dict(scheduler_state)
    assert fresh_stopper.best_metric == pytest.approx(0.5)
    assert fresh_stopper.best_iter == 2 * PERIOD
    assert fresh_stopper.num_bad_evals == 2
    assert fresh_best.best_metric == pytest.approx(0.5)
    assert resumed.scheduler.scale == pytest.approx(0.5)
    assert (tmp_path / "model_best.pth").exists()


def test_gradient_accumulation_steps_once_with_the_mean_gradient():
    # With SGD at lr 1, one iteration over batches x1, x2 moves the weight by -(g1 + g2) / 2.
    torch.manual_seed(0)
    batches = [torch.randn(4, 3), torch.randn(4, 3)]

    class _Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1, bias=False)

        def forward(self, x):
            return {"loss": self.layer(x).pow(2).mean()}

    model = _Linear()
    start = model.layer.weight.detach().clone()
    expected = torch.zeros_like(start)
    for x in batches:
        weight = start.clone().requires_grad_(True)
        (x @ weight.t()).pow(2).mean().backward()
        expected += weight.grad / len(batches)

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = GradientAccumulationTrainer(model, iter(batches), optimizer, accumulation_steps=2)
    trainer.register_hooks([])
    trainer.train(0, 1)
    assert torch.allclose(model.layer.weight.detach(), start - expected, atol=1e-6)


def test_scheduler_choice_follows_config():
    from detectron2.solver.lr_scheduler import LRMultiplier

    from dental_d2.config import build_config
    from dental_d2.engine.trainer import DentalTrainer

    optimizer = torch.optim.SGD(TinyModel().parameters(), lr=0.1)
    plateau = build_config(None, ["SOLVER.LR_SCHEDULER_NAME", "ReduceLROnPlateau"])
    cosine = build_config(None, ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    assert isinstance(DentalTrainer.build_lr_scheduler(plateau, optimizer), WarmupPlateauLR)
    assert isinstance(DentalTrainer.build_lr_scheduler(cosine, optimizer), LRMultiplier)


class _RecordingModel(nn.Module):
    """A model that keeps the outputs it returned."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.outputs = []

    def forward(self, batched_inputs):
        outputs = self.model(batched_inputs)
        self.outputs.append(outputs)
        return outputs


def test_tensorboard_pictures_are_predicted_as_the_predictor_predicts():
    # An RGB model at 128 px, and a 266x270 photo: the input must be converted and resized.
    opts = [*RANDOM_DEMO_MODEL, "INPUT.FORMAT", "RGB", "DENTAL.CLASS_NAMES", str(CLASSES)]
    opts += ["TEST.DETECTIONS_PER_IMAGE", "5"]  # fewer masks to paste: faster
    torch.manual_seed(0)
    predictor = Predictor(DEMO_CONFIG, opts=opts, confidence_threshold=0.0)
    photo = next(REPO_ROOT.glob("datasets/dentalai_demo/valid/1040_jpg.*.jpg"))
    expected = predictor.predict(str(photo))
    assert len(expected) > 0 and expected.image_size == (270, 266)

    name = "test_hooks_pictures"
    MetadataCatalog.get(name).thing_classes = CLASSES
    record = {"file_name": str(photo), "height": 270, "width": 266, "annotations": []}
    hook = VisualizePredictions(
        1,
        [record],
        name,
        PredictorInput(predictor.cfg),
        lambda path: read_image(path, format="RGB"),
        score_threshold=0.0,
    )
    model = _RecordingModel(predictor.model).eval()
    hook.trainer = types.SimpleNamespace(model=model, iter=0, max_iter=1)
    try:
        with EventStorage(0) as storage:
            hook.trainer.storage = storage
            hook.after_train()
    finally:
        MetadataCatalog.remove(name)
    (outputs,) = model.outputs
    drawn = outputs[0]["instances"].to("cpu")
    assert drawn.image_size == expected.image_size
    for field in ("scores", "pred_classes", "pred_masks"):
        assert torch.equal(drawn.get(field), expected.get(field)), field
    assert torch.equal(drawn.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert "val_predictions/0_truth_vs_predicted" in [entry[0] for entry in storage._vis_data]
