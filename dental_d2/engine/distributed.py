"""Joining a process group that a cluster launcher started: torchrun (or any launcher that sets
RANK/WORLD_SIZE/MASTER_ADDR, as Kubernetes' PyTorchJob does) and SLURM's srun.

detectron2's `launch` spawns the processes itself; under a launcher every process already
exists, so it only has to join the group and set up detectron2's per-machine group, as
detectron2's `_distributed_worker` does after spawning.
"""

import dataclasses
import datetime
import logging
import os
import re
from collections.abc import Mapping

import torch
import torch.distributed as dist
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from ..errors import DentalError

logger = logging.getLogger(__name__)

# torch.distributed's default port for env:// when MASTER_PORT is not set.
DEFAULT_MASTER_PORT = 29500
# Under srun without MASTER_PORT, every task of a job derives the same port from the job id;
# ports from here up to here + 10000 lie below the kernel's ephemeral range (32768).
SLURM_PORT_BASE = 20000


@dataclasses.dataclass(frozen=True)
class ClusterProcess:
    """This process's place in a group that a launcher started.

    Attributes:
        launcher (str): who started it: "torchrun", "srun" or "env://" (another launcher).
        rank (int): global rank.
        world_size (int): processes in all.
        local_rank (int): rank on this machine (the GPU it uses).
        local_world_size (int): processes on each machine.
        master_addr (str): the host of rank 0.
        master_port (int): the port rank 0 listens on.
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    def describe(self) -> str:
        """One log line: who started the run, this process's ranks and the group's address."""
        return (
            f"Started by {self.launcher}: rank {self.rank} of {self.world_size} (local rank "
            f"{self.local_rank} of {self.local_world_size}), rank 0 at "
            f"{self.master_addr}:{self.master_port}"
        )


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DentalError(
            f"environment variable {name}={value!r}: expected a whole number; the launcher "
            f"sets it, so start tools/train_net.py through torchrun or srun, or unset it"
        ) from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as `scontrol show hostnames` would print it first.

    "gpu[07-08,12],cpu01" -> "gpu07"; "rack[1-2]-n[3-4]" -> "rack1-n3". Hand-written: SLURM
    ships no Python API, and `scontrol` may be missing inside a container.

    Args:
        nodelist (str): SLURM_JOB_NODELIST (or SLURM_STEP_NODELIST).
    """
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    # In each bracket, the first range's first number: "[07-08,12]" -> "07".
    return re.sub(r"\[([^\]\-,]*)[^\]]*\]", r"\1", nodelist[:end].strip())


def _tasks_per_node(environ: Mapping[str, str], world_size: int) -> int:
    # SLURM_TASKS_PER_NODE reads like "4(x2)" or "4,4" or "3,1".
    counts = {
        int(part.split("(")[0])
        for part in environ.get("SLURM_TASKS_PER_NODE", "").split(",")
        if part.split("(")[0].isdigit()
    }
    if not counts:
        return _integer(environ, "SLURM_NTASKS_PER_NODE", world_size)
    if len(counts) > 1:
        raise DentalError(
            f"SLURM_TASKS_PER_NODE={environ['SLURM_TASKS_PER_NODE']}: nodes run different numbers "
            "of tasks; give every node the same number (#SBATCH --ntasks-per-node, one per GPU)"
        )
    return counts.pop()


def cluster_process(environ: Mapping[str, str] | None = None) -> ClusterProcess | None:
    """This process's place in a launcher's group, or None when nothing launched a group.

    torchrun and other env:// launchers set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT. srun sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
    SLURM_JOB_NODELIST; rank 0 runs on the list's first host. An sbatch script's own shell has
    SLURM_PROCID and SLURM_NTASKS too but no SLURM_STEP_ID, so only srun's tasks join. A group
    of one process is no group: None.

    Args:
        environ (Mapping[str, str] | None): the environment; None reads `os.environ`.

    Raises:
        DentalError: a variable is not a number, or a launcher's group cannot be described.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        world_size = _integer(environ, "WORLD_SIZE")
        if world_size <= 1:
            return None
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in environ else "env://"
        if "MASTER_ADDR" not in environ:
            raise DentalError(
                f"RANK and WORLD_SIZE={world_size} are set but MASTER_ADDR is not: set "
                "MASTER_ADDR (and MASTER_PORT) to rank 0's host, or start through torchrun"
            )
        # One process per pod (Kubernetes) sets neither: one process per machine.
        one_per_machine = "LOCAL_RANK" not in environ
        return ClusterProcess(
            launcher=launcher,
            rank=_integer(environ, "RANK"),
            world_size=world_size,
            local_rank=0 if one_per_machine else _integer(environ, "LOCAL_RANK"),
            local_world_size=1 if one_per_machine else _integer(environ, "LOCAL_WORLD_SIZE"),
            master_addr=environ["MASTER_ADDR"],
            master_port=_integer(environ, "MASTER_PORT", DEFAULT_MASTER_PORT),
        )
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        world_size = _integer(environ, "SLURM_NTASKS", 1)
        if world_size <= 1:
            return None
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
        if not nodelist:
            raise DentalError(
                "SLURM_PROCID is set but SLURM_JOB_NODELIST is not: start the tasks with srun "
                "inside an allocation (sbatch or salloc)"
            )
        job_port = SLURM_PORT_BASE + _integer(environ, "SLURM_JOB_ID", 0) % 10000
        return ClusterProcess(
            launcher="srun",
            rank=_integer(environ, "SLURM_PROCID"),
            world_size=world_size,
            local_rank=_integer(environ, "SLURM_LOCALID", 0),
            local_world_size=_tasks_per_node(environ, world_size),
            master_addr=environ.get("MASTER_ADDR") or first_host(nodelist),
            master_port=_integer(environ, "MASTER_PORT", job_port),
        )
    return None


def _check_shape(process: ClusterProcess) -> None:
    if not 0 <= process.rank < process.world_size:
        raise DentalError(
            f"{process.launcher} gave rank {process.rank} of {process.world_size} processes: "
            "check the launcher's settings"
        )
    local = process.local_world_size
    if local < 1 or process.world_size % local or not 0 <= process.local_rank < local:
        raise DentalError(
            f"{process.launcher}: {process.world_size} processes cannot be split into machines "
            f"of {local} (local rank {process.local_rank}); start the same number of processes "
            "on every machine"
        )
    if torch.cuda.is_available() and local > torch.cuda.device_count():
        raise DentalError(
            f"{process.launcher} starts {local} processes per machine, but this machine has "
            f"{torch.cuda.device_count()} GPUs: start one process per GPU (--nproc_per_node, "
            "--ntasks-per-node)"
        )


def join_process_group(process: ClusterProcess, timeout: datetime.timedelta = DEFAULT_TIMEOUT):
    """Joins the launcher's group as detectron2's `launch` sets up the ones it spawns: NCCL on
    GPUs (one per local rank), gloo on CPUs, and the per-machine group `comm` needs.

    Args:
        process (ClusterProcess): this process's place, from `cluster_process`.
        timeout (datetime.timedelta): how long a collective may wait for the others.
    """
    _check_shape(process)
    has_gpu = torch.cuda.is_available()
    # torchrun's agent already holds a store at MASTER_PORT, which env:// reuses; srun starts
    # no store, so rank 0 opens one at tcp://MASTER_ADDR:MASTER_PORT.
    init_method = (
        "env://"
        if process.launcher != "srun"
        else f"tcp://{process.master_addr}:{process.master_port}"
    )
    dist.init_process_group(
        backend="nccl" if has_gpu else "gloo",
        init_method=init_method,
        world_size=process.world_size,
        rank=process.rank,
        timeout=timeout,
    )
    comm.create_local_process_group(process.local_world_size)
    if has_gpu:
        torch.cuda.set_device(process.local_rank)
    comm.synchronize()


def leave_process_group() -> None:
    """Destroys the group `join_process_group` joined (torch warns about one left open)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
