"""The commands a training run suggests at its end name the Python that ran, as a user types it."""

import sys
from pathlib import Path

from dental_d2.engine.progress import suggested_command

ROOT = Path(__file__).resolve().parents[1]


def test_commands_name_the_interpreter_that_ran(tmp_path, monkeypatch):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tensorboard").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    # Inside the working directory: relative, as the README's `.venv/bin/python`.
    monkeypatch.chdir(tmp_path)
    assert suggested_command("tools/visualize.py", "--output", "out dir") == (
        f".venv/bin/python {ROOT / 'tools' / 'visualize.py'} --output 'out dir'"
    )
    assert suggested_command("tensorboard", "--logdir", "run") == (
        ".venv/bin/tensorboard --logdir run"
    )
    # Elsewhere: the full path; a program not installed beside it: its bare name.
    monkeypatch.chdir(ROOT)
    assert suggested_command("tools/visualize.py") == f"{bin_dir / 'python'} tools/visualize.py"
    (bin_dir / "tensorboard").unlink()
    assert suggested_command("tensorboard", "--logdir", "run") == "tensorboard --logdir run"
