"""Checkpoints a user can trust: no code runs from weight files, every write is atomic,
`last_checkpoint` names only periodic or final checkpoints, and `--resume` skips torn files.

A pickle runs code when it is loaded. detectron2 unpickles `.pkl` files and fvcore's loader
would take any `.pth`; here a `.pth` is read with `torch.load(weights_only=True)` (tensors and
plain containers only) and a pickle is loaded only from detectron2's model zoo
(`detectron2://` URLs) or when the user sets `DENTAL.ALLOW_PICKLE True`.
"""

import errno
import io
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable

import torch
from detectron2.checkpoint import DetectionCheckpointer

# CLASS_NAMES_KEY is imported from here by the tests and benchmarks too.
from .checkpoint_contents import CLASS_NAMES_KEY, iteration_in  # noqa: F401
from .errors import DentalError
from .file_io import atomic_write
from .modeling import backbone_weights
from .weights_kind import CHECKPOINT, IMAGENET, MODEL_ZOO, PYCLS, is_local, weights_kind

logger = logging.getLogger(__name__)

# The file naming the checkpoint `--resume` starts from (fvcore's name).
LAST_CHECKPOINT = "last_checkpoint"
# Checkpoints `last_checkpoint` may name: periodic (model_0001999) and final ones. model_best
# never is: resuming from it would go back in time and could let a worse model overwrite it.
_RESUMABLE = re.compile(r"model_(\d{7}|final)\.pth")
# Temporary files of atomic_write for checkpoints and last_checkpoint.
_TEMPORARY = re.compile(r"\.(model_\w+\.pth|last_checkpoint)\.\w+\.tmp")
# URL schemes of detectron2's model zoo, whose pickles are trusted without opt-in.
TRUSTED_SCHEMES = ("detectron2",)


def checkpoint_iteration(path: str) -> int | None:
    """The training iteration stored in a `.pth` written by the trainer, else None.

    The file is memory-mapped, so only the few bytes of the iteration are read.

    Args:
        path (str): a local checkpoint; other paths (URLs, `.pkl`, exported models) give None.
    """
    if weights_kind(path) != CHECKPOINT or not is_local(path) or not os.path.isfile(path):
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a torn or foreign file: the report says no iteration, the load says why
        return None
    return iteration_in(checkpoint)


def _refuse_pickle(path: str, what: str):
    raise DentalError(
        f"{path}: {what}, and loading a pickle can run any code it contains; set "
        "DENTAL.ALLOW_PICKLE True only if you trust where this file came from"
    )


def load_weights_file(path: str, allow_pickle: bool = False, data: bytes | None = None) -> dict:
    """Reads a local `.pth` checkpoint without running code from it.

    Args:
        path (str): a local file written by `torch.save`.
        allow_pickle (bool): when the file holds more than tensors and plain containers, load
            it with full unpickling instead of refusing it.
        data (bytes | None): the file's bytes, when the caller has read them; `path` then only
            names the file in messages.

    Raises:
        DentalError: the file is torn or not a checkpoint, or needs unpickling not allowed.
    """

    def source():
        return path if data is None else io.BytesIO(data)

    try:
        return torch.load(source(), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            _refuse_pickle(path, "this checkpoint holds Python objects besides tensors")
        logger.warning(f"{path}: loading Python objects from it (DENTAL.ALLOW_PICKLE True)")
        # The user chose to trust this file with DENTAL.ALLOW_PICKLE: full unpickling.
        try:
            return torch.load(source(), map_location="cpu", weights_only=False)
        except Exception as inner:
            raise _unreadable(path, inner) from e
    except Exception as e:  # a truncated or foreign file: name it instead of a traceback
        raise _unreadable(path, e) from e


class UnreadableCheckpoint(DentalError):
    """A checkpoint file that is torn (e.g. a kill during a save by another tool) or foreign."""


def _unreadable(path: str, error: Exception) -> DentalError:
    return UnreadableCheckpoint(
        f"{path}: cannot be read as a PyTorch checkpoint ({error}); the file may be truncated; "
        "point MODEL.WEIGHTS at a model_*.pth written by tools/train_net.py"
    )


def check_finite(state_dict: dict, name: str):
    """Refuses to save weights with NaN or Inf: such a checkpoint would poison every resume.

    Raises:
        FloatingPointError: naming the first non-finite tensor (the trainer reports it as a
            divergence).
    """
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            raise FloatingPointError(f"{key} is not finite; {name}.pth was not saved")


class CheckpointDiskFull(DentalError):
    """A checkpoint could not be saved for lack of space; the files on disk are as they were."""


class _ByteCounter:
    """A write-only file that only counts what is written to it (the size of a torch.save)."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        written = len(memoryview(data))
        self.size += written
        return written

    def flush(self):
        pass


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


def _is_disk_full(error: BaseException | None) -> bool:
    # torch.save turns the file's OSError into a RuntimeError ("unexpected pos ..."), raised
    # while handling it: ENOSPC is found down the chain.
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: str, data: dict) -> CheckpointDiskFull:
    """The one line for a checkpoint that did not fit: how much it needs, how much is free.

    Args:
        path (str): the checkpoint that was being saved.
        data (dict): what it holds; serialised once more to count its bytes, into nothing.
    """
    counter = _ByteCounter()
    torch.save(data, counter)
    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free
    return CheckpointDiskFull(
        f"{path}: no space left on the device for this checkpoint ({_megabytes(counter.size)} "
        f"needed, {_megabytes(free)} free in {folder}); the previous checkpoint and "
        f"{LAST_CHECKPOINT} are unchanged; free space there or move OUTPUT_DIR to a larger "
        "disk, then continue with the same command and --resume"
    )


class DentalCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that loads no code, writes atomically and resumes past torn files.

    - A `.pth` is read with `weights_only=True`; a pickle (`.pkl`, or a `.pth` needing more than
      tensors) only from a `detectron2://` URL or with `allow_pickle`.
    - `save` writes to a temporary file in `save_dir`, fsyncs and renames it; weights with NaN
      or Inf are refused. Only periodic and final checkpoints move `last_checkpoint`. A full
      disk (ENOSPC) removes the temporary file and raises `CheckpointDiskFull`.
    - `resume_or_load(resume=True)` falls back from a checkpoint that does not load to the
      newest one that does.

    Args:
        model (nn.Module): the model.
        save_dir (str): where checkpoints are written and resumed from.
        allow_pickle (bool): DENTAL.ALLOW_PICKLE, the user's trust in pickled weight files.
        read (dict[str, dict] | None): checkpoints already read, by local path
            (`dental_d2.weights.read_weights`): `load` takes them from memory.
        on_incomplete (Callable | None): called with fvcore's incompatible keys (missing,
            unexpected, of another shape) after each load, before they are logged; it may raise
            to refuse the weights (`dental_d2.loading.load_model` does, for inference).
        **kwargs: as DetectionCheckpointer (save_to_disk, checkpointables).
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_pickle: bool = False,
        read: dict[str, dict] | None = None,
        on_incomplete: Callable | None = None,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = allow_pickle
        self.read = dict(read or {})
        self.on_incomplete = on_incomplete

    def _source(self, filename: str) -> str:
        """What `load` was given (a URL or a path) for the local file it is reading."""
        parsed = self._parsed_url_during_load
        return parsed.geturl() if parsed is not None and parsed.geturl() else filename

    def _load_file(self, filename):
        source = self._source(filename)
        kind = weights_kind(source)
        if kind == IMAGENET:
            # A plain ImageNet classifier state dict, renamed onto the timm backbone.
            state = load_weights_file(filename, allow_pickle=False)
            return {"model": backbone_weights(self.model, state, source)}
        if kind == MODEL_ZOO:
            scheme = self._parsed_url_during_load.scheme if self._parsed_url_during_load else ""
            if scheme not in TRUSTED_SCHEMES and not self.allow_pickle:
                _refuse_pickle(source, "a .pkl file is a Python pickle from outside the model zoo")
        elif kind == PYCLS:
            _refuse_pickle(filename, "pycls .pyth files are not supported")
        return super()._load_file(filename)

    def _log_incompatible_keys(self, incompatible):
        if self.on_incomplete is not None:
            # Called before detectron2 logs a line per parameter: it may refuse the weights.
            self.on_incomplete(incompatible)
        super()._log_incompatible_keys(incompatible)
        source = self._source("")
        kind = weights_kind(source)
        unloaded = incompatible.missing_keys or incompatible.incorrect_shapes
        if unloaded and kind in (IMAGENET, MODEL_ZOO, PYCLS):
            logger.info(
                f"The parameters listed above as missing or skipped are expected with {source} "
                f"({kind}): it holds no trained dental heads, and training starts them from "
                "random values"
            )

    def _torch_load(self, f):
        if f in self.read:
            # fvcore pops "model" and edits the state dict while loading: give it copies.
            checkpoint = dict(self.read[f])
            if isinstance(checkpoint.get("model"), dict):
                checkpoint["model"] = dict(checkpoint["model"])
            return checkpoint
        return load_weights_file(f, self.allow_pickle)

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        check_finite(data["model"], name)
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            # atomic_write removes its temporary file when the write fails.
            with atomic_write(path, "wb") as f:
                torch.save(data, f)
            if _RESUMABLE.fullmatch(basename):
                self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as e:
            if not _is_disk_full(e):
                raise
            raise disk_full_error(path, data) from e

    def remove_stale_temporaries(self):
        """Deletes what saves killed part-way left (temporary files, never a checkpoint)."""
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return
        for name in os.listdir(self.save_dir):
            if _TEMPORARY.fullmatch(name):
                os.remove(os.path.join(self.save_dir, name))
                logger.info(f"Removed {name}, left by a save that was interrupted")

    def tag_last_checkpoint(self, last_filename_basename: str):
        with atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), "w") as f:
            f.write(last_filename_basename)

    def resumable_checkpoints(self) -> list[str]:
        """Periodic and final checkpoints in `save_dir`: the tagged one first, then newest first."""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        found = [
            os.path.join(self.save_dir, name)
            for name in os.listdir(self.save_dir)
            if _RESUMABLE.fullmatch(name)
        ]
        found.sort(key=os.path.getmtime, reverse=True)
        return ([tagged] if tagged else []) + [path for path in found if path != tagged]

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates, failure = self.resumable_checkpoints(), None
        for index, candidate in enumerate(candidates):
            try:
                return self.load(candidate)
            except (UnreadableCheckpoint, FileNotFoundError, AssertionError) as e:
                # fvcore asserts that the file exists; the load failed before changing anything.
                self._parsed_url_during_load = None
                failure = e
                if index + 1 < len(candidates):
                    logger.warning(
                        f"Cannot resume from {candidate} ({e}); resuming from "
                        f"{candidates[index + 1]} instead"
                    )
        raise DentalError(
            f"{self.save_dir}: no checkpoint there can be loaded to resume from "
            f"({', '.join(os.path.basename(p) for p in candidates)}; last error: {failure}); "
            "start without --resume or in a new OUTPUT_DIR"
        )
