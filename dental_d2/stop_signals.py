"""A handler for SIGTERM and SIGINT for the length of a `with` block, the old ones restored."""

import contextlib
import signal

# What a scheduler, `kill` or Ctrl-C sends to ask a process to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def handling_stop_signals(handler):
    """Installs `handler` for SIGTERM and SIGINT inside the block.

    The standard library's `signal` has no scoped form, and detectron2 has none either.

    Args:
        handler (Callable[[int, FrameType], None]): called with the signal number and frame.
    """
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signal_number, old in previous.items():
            signal.signal(signal_number, old)
