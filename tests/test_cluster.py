"""tools/train_net.py under cluster launchers on CPU (gloo, 2 processes): torchrun trains and
resumes as --num-gpus does, SIGTERM to torchrun stops both ranks with a checkpoint, and srun's
environment joins one group; plus how the launchers' variables are read."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import INSTANT_CONFIG as INSTANT
from support import NO_EVAL as FAST
from support import TRAIN_NET, tool_error_lines

from dental_d2.data.synthetic import generate_synthetic_dataset
from dental_d2.engine.distributed import ClusterProcess, cluster_process, first_host
from dental_d2.errors import DentalError

ROOT = Path(__file__).resolve().parents[1]
# A log line per iteration, no pictures, no test split, no evaluation: seconds per run.
# One intra-op thread per process: the same arithmetic whichever launcher started it.
ENV = {"OMP_NUM_THREADS": "1"}
# What launchers set, removed from the tests' own environment (a CI job may run under one).
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_PROCID",
    "SLURM_STEP_ID",
)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(str(root), num_train=8, num_valid=2, num_test=2, size=128, seed=5)
    return root


def _environment(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return env | ENV | extra


def _train_net(*args):
    return [TRAIN_NET, "--config-file", INSTANT, *args]


def _torchrun(*args):
    # torchrun is `python -m torch.distributed.run`; --standalone picks a free port itself.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *_train_net(*args)]  # fmt: skip


def _run(command, env=None):
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env or _environment()
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, different[:5]


def _train_and_resume(launch, export, output):
    """4 iterations with a checkpoint every 2, then --resume to 6; the weights after each."""
    opts = [*FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
            "SOLVER.CHECKPOINT_PERIOD", "2"]  # fmt: skip
    first = launch(*opts, "SOLVER.MAX_ITER", "4")
    after_four = _weights(output / "model_final.pth")
    assert (output / "last_checkpoint").read_text() == "model_final.pth"
    resumed = launch("--resume", *opts, "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 4" in resumed
    return first, resumed, after_four, _weights(output / "model_final.pth")


@pytest.fixture(scope="module")
def spawned(export, tmp_path_factory):
    """The reference: --num-gpus 2, detectron2's launch spawning both processes."""
    output = tmp_path_factory.mktemp("spawned")

    def launch(*opts):
        # A free port: detectron2's default --dist-url is one fixed port per user, which
        # another run on this machine may hold.
        return _run([sys.executable, *_train_net("--num-gpus", "2", "--dist-url", "auto", *opts)])

    return _train_and_resume(launch, export, output)


@pytest.mark.slow
def test_torchrun_trains_and_resumes_as_num_gpus_does(export, spawned, tmp_path):
    output = tmp_path / "torchrun"
    first, resumed, after_four, final = _train_and_resume(
        lambda *opts: _run(_torchrun(*opts)), export, output
    )
    assert "Started by torchrun: rank 0 of 2 (local rank 0 of 2)" in first
    assert "World size: 2" in first and "World size: 1" not in first
    # One training, not two: rank 1 logs to its own file, only rank 0 writes checkpoints.
    assert (output / "log.txt.rank1").is_file()
    _, _, spawned_after_four, spawned_final = spawned
    _assert_same_weights(after_four, spawned_after_four)
    _assert_same_weights(final, spawned_final)
    assert not torch.equal(next(iter(final.values())), next(iter(after_four.values())))


def _free_port_below_ephemeral() -> int:
    """A free port in 20000-29999, where srun's tasks derive theirs from the job id."""
    for port in random.Random().sample(range(20000, 30000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 20000 and 29999")


@pytest.mark.slow
def test_srun_tasks_join_one_group_and_train_as_num_gpus_does(export, spawned, tmp_path):
    output = tmp_path / "srun"
    opts = [*FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITER", "4"]  # fmt: skip
    # What srun sets for `srun --ntasks 2` on one node; rank 0's port comes from the job id.
    port = _free_port_below_ephemeral()
    slurm = {"SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": str(port - 20000),
             "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "2"}  # fmt: skip
    tasks = [
        subprocess.Popen(
            [sys.executable, *_train_net(*opts)],
            cwd=ROOT,
            env=_environment(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert (
        f"Started by srun: rank 0 of 2 (local rank 0 of 2), rank 0 at localhost:{port}" in (logs[0])
    )
    assert "World size: 2" in logs[0]
    _assert_same_weights(_weights(output / "model_final.pth"), spawned[2])


def _wait_for(predicate, process, seconds=300):
    deadline = time.time() + seconds
    while not predicate():
        assert process.poll() is None, "training ended before the moment to interrupt it"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_with_a_checkpoint(export, tmp_path):
    output = tmp_path / "preempted"
    opts = [*FAST, "DENTAL.DATA_ROOT", str(export), "OUTPUT_DIR", str(output),
            "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000"]  # fmt: skip
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            _torchrun(*opts), cwd=ROOT, env=_environment(), stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    metrics = output / "metrics.json"
    try:
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, process)
        # Only torchrun is signalled; it passes SIGTERM on to both ranks.
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log_path.read_text()
    saved = (output / "last_checkpoint").read_text()
    iteration = int(saved.removeprefix("model_").removesuffix(".pth"))
    assert f"error: training stopped by SIGTERM after {iteration + 1} iterations;" in text, text[
        -3000:
    ]
    # Rank 1 got the signal, agreed on the iteration and exited by itself (no kill after 30 s).
    rank1 = (output / "log.txt.rank1").read_text()
    assert "Received SIGTERM: training stops after this iteration" in rank1
    assert "Traceback" not in rank1 and "SIGKILL" not in text
    assert torch.load(output / saved, map_location="cpu", weights_only=True)["iteration"] == (
        iteration
    )
    opts[opts.index("SOLVER.MAX_ITER") + 1] = str(iteration + 3)
    resumed = _run(_torchrun("--resume", *opts))
    assert f"Starting training from iteration {iteration + 1}" in resumed
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == iteration + 2


def test_launch_variables_are_read_as_torchrun_and_srun_set_them():
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node1",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "x",
    }
    assert cluster_process(torchrun) == ClusterProcess("torchrun", 3, 8, 1, 4, "node1", 29400)
    # One process per pod: no LOCAL_RANK, no torchrun agent.
    pod = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "trainer-0"}
    assert cluster_process(pod) == ClusterProcess("env://", 1, 2, 0, 1, "trainer-0", 29500)
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_TASKS_PER_NODE": "4(x2)"}  # fmt: skip
    assert cluster_process(srun) == ClusterProcess("srun", 5, 8, 1, 4, "gpu07", 23456)
    # The sbatch script's own shell, a single task, and no launcher at all: no group to join.
    assert cluster_process({k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}) is None
    assert cluster_process(srun | {"SLURM_NTASKS": "1"}) is None
    assert cluster_process({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert cluster_process({}) is None
    with pytest.raises(DentalError, match="SLURM_TASKS_PER_NODE=3,1: nodes run different"):
        cluster_process(srun | {"SLURM_TASKS_PER_NODE": "3,1"})
    with pytest.raises(DentalError, match="MASTER_ADDR is not"):
        cluster_process({"RANK": "0", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("gpu[07-08,12],cpu01", "gpu07"), ("rack[1-2]-n[3-4]", "rack1-n3"), ("a1,b2", "a1"),
     ("node5", "node5"), ("n[001-004]", "n001")],
)  # fmt: skip
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_num_gpus_under_torchrun_is_one_line_error(monkeypatch, load_tool, capsys, restore_loggers):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "TORCHELASTIC_RUN_ID": "t"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    tool = load_tool("train_net")
    assert tool.main(["--config-file", INSTANT, "--num-gpus", "2"]) == 1
    lines = tool_error_lines(capsys.readouterr().err)
    assert lines == [
        "error: torchrun started 2 processes already; --num-gpus and --num-machines would spawn "
        "more from each: drop them (one process per GPU comes from --nproc_per_node, --nnodes, "
        "or srun's --ntasks-per-node)"
    ]
