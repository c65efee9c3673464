"""The stop signals, SIGTERM and SIGINT, in one place: which they are, their names, a handler for
the length of a `with` block, and ignoring them in a worker process.

Training (`engine.signals.StopOnSignal`), the multi-process launcher and the server install their
handlers through `handling_stop_signals`; data-loader workers ignore the signals through
`ignore_stop_signals`.
"""

import contextlib
import signal

# What a scheduler, `kill` or Ctrl-C sends to ask a process to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signal_number: int) -> str:
    """ "SIGTERM" for 15, and so on."""
    return signal.Signals(signal_number).name


@contextlib.contextmanager
def handling_stop_signals(handler):
    """Installs `handler` for SIGTERM and SIGINT inside the block; the old handlers come back
    after it, also after an exception.

    The standard library's `signal` has no scoped form, and detectron2 has none either. Python
    lets only the main thread install handlers.

    Args:
        handler (Callable[[int, FrameType], None]): called with the signal number and frame.
    """
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signal_number, old in previous.items():
            signal.signal(signal_number, old)


def ignore_stop_signals():
    """Ignores SIGTERM and SIGINT in this process from now on (for worker processes whose
    parent decides when they stop)."""
    for signal_number in STOP_SIGNALS:
        signal.signal(signal_number, signal.SIG_IGN)
