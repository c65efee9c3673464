"""A clean stop on SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C): finish the iteration,
save a checkpoint to resume from, end the training loop."""

import contextlib
import logging
import os
import threading

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

from ..stop_signals import handling_stop_signals, signal_name

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """Raised by `StopOnSignal` once the checkpoint of the interrupted iteration is saved.

    Args:
        signal_number (int): the signal that asked training to stop.
        checkpoint (str): the checkpoint that `--resume` continues from.
    """

    def __init__(self, signal_number: int, checkpoint: str):
        super().__init__(signal_number, checkpoint)
        self.signal_number = signal_number
        self.checkpoint = checkpoint


class StopOnSignal(HookBase):
    """Ends training cleanly on SIGTERM (cloud preemption, cluster schedulers) or SIGINT (Ctrl-C).

    The signal only sets a flag; the current iteration finishes, every other hook runs its
    `after_step` (evaluation included), then `model_<iteration>.pth` is saved atomically,
    `last_checkpoint` names it and `Interrupted` ends the loop. A second signal during the save
    changes nothing (the file is written to a temporary name and renamed). Under DDP the
    processes agree at every iteration, so all stop at the same one. Register it last.

    Args:
        checkpointer (Checkpointer | None): saves the checkpoint (main process); None elsewhere.
    """

    def __init__(self, checkpointer):
        self._checkpointer = checkpointer
        # Holds the handlers from before_train to after_train.
        self._handling = contextlib.ExitStack()
        self.received = 0

    def _handle(self, signal_number, frame):
        if not self.received:
            logger.warning(
                f"Received {signal_name(signal_number)}: training stops after this "
                "iteration, once its checkpoint is saved."
            )
        self.received = self.received or signal_number

    def before_train(self):
        # Python lets only the main thread install handlers (a trainer in a thread keeps them).
        if threading.current_thread() is threading.main_thread():
            self._handling.enter_context(handling_stop_signals(self._handle))

    def after_train(self):
        self._handling.close()

    def after_step(self):
        received = self.received
        if comm.get_world_size() > 1:
            received = max(comm.all_gather(received))
        if not received:
            return
        name = f"model_{self.trainer.iter:07d}"
        if self._checkpointer is not None:
            self._checkpointer.save(name, iteration=self.trainer.iter)
        comm.synchronize()
        save_dir = self._checkpointer.save_dir if self._checkpointer is not None else ""
        raise Interrupted(received, os.path.join(save_dir, f"{name}.pth"))
