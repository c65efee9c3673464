"""DentalCheckpointer: no code from weight files, atomic saves, last_checkpoint rules, resume
past torn files, finite weights only, and model_best holding the state of its evaluation."""

import os

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.engine.train_loop import HookBase
from support import TinyModel, write_evil_pth, write_pkl
from torch import nn

from dental_d2.checkpoint import DentalCheckpointer, load_weights_file
from dental_d2.engine.hooks import (
    BestCheckpointer,
    EarlyStopping,
    ReduceLROnPlateau,
)
from dental_d2.engine.lr_scheduler import WarmupPlateauLR
from dental_d2.errors import DentalError


def _model():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_pth_with_code_is_refused_and_runs_nothing(tmp_path):
    evil, marker = tmp_path / "model_final.pth", tmp_path / "pwned"
    write_evil_pth(evil, marker)
    with pytest.raises(DentalError, match="DENTAL.ALLOW_PICKLE True"):
        load_weights_file(str(evil))
    with pytest.raises(DentalError, match="Python objects besides tensors"):
        DentalCheckpointer(_model()).load(str(evil))
    assert not marker.exists()


def test_local_pkl_is_refused_unless_allowed(tmp_path):
    model = _model()
    pkl, marker = tmp_path / "weights.pkl", tmp_path / "pwned"
    write_pkl(pkl, {k: v + 1 for k, v in model.state_dict().items()}, marker)
    with pytest.raises(DentalError, match="a .pkl file is a Python pickle"):
        DentalCheckpointer(model).load(str(pkl))
    assert not marker.exists()
    # The user's explicit trust loads it (and so runs what it holds).
    DentalCheckpointer(model, allow_pickle=True).load(str(pkl))
    assert marker.exists()
    assert torch.equal(model.bias, _model().bias + 1)


def test_model_zoo_url_needs_no_opt_in(tmp_path, monkeypatch):
    # detectron2:// resolves to the model zoo's address; a file in the download cache at that
    # place is used as is, so no network is needed to exercise the real loading path.
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "detectron2" / "COCO" / "tiny.pkl"
    cached.parent.mkdir(parents=True)
    model = _model()
    write_pkl(cached, {k: v * 0 + 7 for k, v in model.state_dict().items()})
    DentalCheckpointer(model).load("detectron2://COCO/tiny.pkl")
    assert torch.all(model.weight == 7)


def test_own_checkpoint_loads_with_weights_only(tmp_path):
    model = _model()
    DentalCheckpointer(model, str(tmp_path)).save("model_0000009", iteration=9)
    fresh = nn.Linear(3, 2)
    assert DentalCheckpointer(fresh).load(str(tmp_path / "model_0000009.pth"))["iteration"] == 9
    assert torch.equal(fresh.weight, model.weight)


def test_best_checkpoint_never_becomes_last_checkpoint(tmp_path):
    checkpointer = DentalCheckpointer(_model(), str(tmp_path))
    checkpointer.save("model_0000004")
    checkpointer.save("model_best")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    checkpointer.save("model_final")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    checkpointer = DentalCheckpointer(_model(), str(tmp_path))
    checkpointer.save("model_best", iteration=1)
    before = (tmp_path / "model_best.pth").read_bytes()

    def torn_save(data, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        checkpointer.save("model_best", iteration=2)
    assert (tmp_path / "model_best.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth"]


def test_non_finite_weights_are_never_saved(tmp_path):
    model = _model()
    checkpointer = DentalCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="bias is not finite"):
        checkpointer.save("model_0000002")
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_resume_falls_back_from_a_torn_checkpoint(tmp_path, caplog):
    model = _model()
    checkpointer = DentalCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    expected = model.weight.detach().clone()
    with torch.no_grad():
        model.weight += 1
    checkpointer.save("model_0000009", iteration=9)
    newest = tmp_path / "model_0000009.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # torn by something outside our control

    fresh = nn.Linear(3, 2)
    loaded = DentalCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 4
    assert torch.equal(fresh.weight, expected)
    assert "model_0000009.pth" in caplog.text and "resuming from" in caplog.text
    assert str(tmp_path / "model_0000004.pth") in caplog.text


def test_resume_with_no_loadable_checkpoint_is_one_error(tmp_path):
    checkpointer = DentalCheckpointer(_model(), str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    (tmp_path / "model_0000004.pth").write_bytes(b"torn")
    with pytest.raises(DentalError, match="no checkpoint there can be loaded to resume from"):
        DentalCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)


class _Scripted(HookBase):
    """Stores the next value of a sequence as validation_loss at every second iteration."""

    def __init__(self, values):
        self.values = list(values)

    def after_step(self):
        if (self.trainer.iter + 1) % 2 == 0 and self.values:
            value = self.values.pop(0)
            self.trainer.storage.put_scalar("validation_loss", value, smoothing_hint=False)


def test_best_checkpoint_holds_the_state_after_its_own_evaluation(tmp_path):
    # Evaluations at iterations 1, 3, 5: 2.0, then 3.0 (worse), then 1.0 (best).
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, iter(lambda: torch.ones(2, 3), None), optimizer)
    trainer.scheduler = WarmupPlateauLR(optimizer)
    checkpointer = DentalCheckpointer(model, str(tmp_path), trainer=trainer)
    # The trainer's hook order: evaluation, plateau, early stopping, then the best checkpoint.
    trainer.register_hooks(
        [
            _Scripted([2.0, 3.0, 1.0]),
            ReduceLROnPlateau(2, "validation_loss", "min", factor=0.5, patience=5),
            EarlyStopping(2, "validation_loss", "min", patience=5),
            BestCheckpointer(2, checkpointer, "validation_loss", "min"),
        ]
    )
    trainer.train(0, 7)
    saved = torch.load(tmp_path / "model_best.pth", weights_only=True)
    # detectron2's index of the last iteration is stored; every hook counts iterations done
    assert saved["iteration"] == 5
    state = saved["trainer"]["hooks"]
    assert state["BestCheckpointer"] == {"best_metric": 1.0, "best_iter": 6}
    for name in ("EarlyStopping", "ReduceLROnPlateau"):
        assert state[name] == {"best_metric": 1.0, "best_iter": 6, "num_bad_evals": 0}, name


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    checkpointer = DentalCheckpointer(_model(), str(tmp_path))
    checkpointer.save("model_0000001")
    (tmp_path / ".model_0000003.pth.k2j_x9.tmp").write_bytes(b"half")
    (tmp_path / ".last_checkpoint.a1b2c3.tmp").write_text("model_00")
    (tmp_path / ".notes.tmp").write_text("not ours")
    checkpointer.remove_stale_temporaries()
    assert sorted(os.listdir(tmp_path)) == [".notes.tmp", "last_checkpoint", "model_0000001.pth"]


def test_signal_stops_after_the_iteration_and_a_second_one_tears_nothing(tmp_path, monkeypatch):
    import signal

    from dental_d2.engine.signals import Interrupted, StopOnSignal

    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, iter(lambda: torch.ones(2, 3), None), optimizer)
    checkpointer = DentalCheckpointer(model, str(tmp_path), trainer=trainer)

    class _Preempt(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    real_save = torch.save

    def save_hit_by_ctrl_c(data, f):
        os.kill(os.getpid(), signal.SIGINT)  # a second signal, in the middle of the save
        real_save(data, f)

    monkeypatch.setattr(torch, "save", save_hit_by_ctrl_c)
    stop = StopOnSignal(checkpointer)
    trainer.register_hooks([_Preempt(), stop])
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as raised:
        trainer.train(0, 100)
    assert raised.value.signal_number == signal.SIGTERM
    assert raised.value.checkpoint == str(tmp_path / "model_0000002.pth")
    assert torch.load(raised.value.checkpoint, weights_only=True)["iteration"] == 2
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored after training
