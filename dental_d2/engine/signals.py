"""A clean stop on SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C): finish the iteration,
save a checkpoint to resume from, end the training loop."""

import logging
import os
import signal
import threading

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

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
        signals (tuple[int, ...]): the signals that stop training.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM, signal.SIGINT)):
        self._checkpointer = checkpointer
        self._signals = signals
        self._previous_handlers = {}
        self.received = 0

    def _handle(self, signal_number, frame):
        if not self.received:
            logger.warning(
                f"Received {signal.Signals(signal_number).name}: training stops after this "
                "iteration, once its checkpoint is saved."
            )
        self.received = self.received or signal_number

    def before_train(self):
        # Python lets only the main thread install handlers (a trainer in a thread keeps them).
        if threading.current_thread() is threading.main_thread():
            for signal_number in self._signals:
                self._previous_handlers[signal_number] = signal.signal(signal_number, self._handle)

    def after_train(self):
        for signal_number, handler in self._previous_handlers.items():
            signal.signal(signal_number, handler)
        self._previous_handlers = {}

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
