"""A checkpoint save that runs out of disk space (ENOSPC): the files on disk stay as they were,
training stops with one line, and --resume continues from the previous checkpoint."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import INSTANT_CONFIG as INSTANT
from support import TRAIN_NET
from torch import nn

from dental_d2.checkpoint import CheckpointDiskFull, DentalCheckpointer
from dental_d2.data.synthetic import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


class FullDisk:
    """A file whose device fills up after `room` bytes: the rest of a write raises ENOSPC, as
    a write(2) on a full file system does."""

    def __init__(self, file, room: int = 1000):
        self._file = file
        self._room = room

    def write(self, data):
        chunk = data if isinstance(data, str) else memoryview(data).cast("B")
        if len(chunk) > self._room:
            self._file.write(chunk[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(chunk)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def filling_fdopen(real_fdopen, prefix: str, room: int = 1000):
    """os.fdopen, but the files whose name starts with `prefix` fill the disk after `room`
    bytes (atomic_write opens its temporary files with os.fdopen)."""

    def fdopen(descriptor, *args, **kwargs):
        file = real_fdopen(descriptor, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}"))
        return FullDisk(file, room) if name.startswith(prefix) else file

    return fdopen


# tools/train_net.py with the disk full from the checkpoint named in argv[1] on.
TRAIN_ON_A_FILLING_DISK = f"""
import os, runpy, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_disk_full import filling_fdopen
os.fdopen = filling_fdopen(os.fdopen, "." + sys.argv.pop(1))
sys.argv[0] = {TRAIN_NET!r}
runpy.run_path({TRAIN_NET!r}, run_name="__main__")
"""


def _tiny_checkpointer(folder):
    return DentalCheckpointer(nn.Linear(64, 64), save_dir=str(folder))


def test_a_full_disk_leaves_the_previous_checkpoint_and_its_tag(tmp_path, monkeypatch):
    checkpointer = _tiny_checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    monkeypatch.setattr(os, "fdopen", filling_fdopen(os.fdopen, ".model_0000003.pth"))
    with pytest.raises(CheckpointDiskFull) as raised:
        checkpointer.save("model_0000003", iteration=3)
    message = str(raised.value)
    needed = float(re.search(r"\(([\d.]+) MB needed, [\d.]+ MB free in ", message).group(1))
    assert message.startswith(f"{tmp_path / 'model_0000003.pth'}: no space left on the device")
    assert f"free in {tmp_path})" in message and "\n" not in message
    # 64 x 64 + 64 float32 and torch.save's zip: about 17 kB, printed to 0.1 MB.
    assert needed == round(len(before) / (1 << 20), 1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before


def test_a_full_disk_while_tagging_keeps_the_old_tag(tmp_path, monkeypatch):
    checkpointer = _tiny_checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    # The checkpoint fits; its 17-byte tag does not.
    monkeypatch.setattr(os, "fdopen", filling_fdopen(os.fdopen, ".last_checkpoint", room=0))
    with pytest.raises(CheckpointDiskFull, match="model_0000003.pth: no space left"):
        checkpointer.save("model_0000003", iteration=3)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=4, num_valid=2, num_test=2, size=128, seed=5)
    return root


@pytest.mark.slow
def test_training_on_a_full_disk_stops_in_one_line_and_resumes(export, tmp_path):
    output = tmp_path / "run"
    opts = [
        "--config-file", INSTANT, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
        "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
        "TEST.VALIDATION_LOSS", "False", "DATASETS.VALIDATION", "()", "DATASETS.TEST", "()",
        "DENTAL.EVAL.NUM_VIS_IMAGES", "0",
    ]  # fmt: skip
    full = subprocess.run(
        [sys.executable, "-c", TRAIN_ON_A_FILLING_DISK, "model_0000003.pth", *opts],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    previous = output / "model_0000001.pth"
    size = f"{previous.stat().st_size / (1 << 20):.1f} MB needed"
    assert last.startswith(
        f"error: {output / 'model_0000003.pth'}: no space left on the device for this "
        f"checkpoint ({size}, "
    ), last
    assert f"free in {output}); the previous checkpoint and last_checkpoint are unchanged" in last
    assert (output / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (output / "model_0000003.pth").exists()
    assert not list(output.glob(".*.tmp")), "the temporary file of the failed save is removed"

    resumed = subprocess.run(
        [sys.executable, TRAIN_NET, "--resume", *opts],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 2" in resumed.stdout + resumed.stderr
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 5
