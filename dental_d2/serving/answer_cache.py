"""The answers the server keeps for `/results/{id}`: few, small in memory, and not for long."""

import logging
import threading
from collections.abc import Callable

import cachetools

logger = logging.getLogger(__name__)


class AnswerCache:
    """A thread-safe cache of answers, bounded by count, by bytes and by age.

    A `cachetools.TTLCache` whose size is each answer's `nbytes()`: an answer expires
    `keep_seconds` after it was added, however often it is read, and when the count or the bytes
    would exceed their bounds the least recently used answers go first.

    Args:
        max_answers (int): answers kept at most.
        max_bytes (int): their memory budget; an answer larger than all of it is not kept.
        keep_seconds (float): how long after it was added an answer is forgotten.
        clock (Callable[[], float]): seconds, for the expiry; `time.monotonic`.
    """

    def __init__(
        self, max_answers: int, max_bytes: int, keep_seconds: float, clock: Callable[[], float]
    ):
        self._answers = cachetools.TTLCache(
            max_bytes, keep_seconds, timer=clock, getsizeof=lambda answer: answer.nbytes()
        )
        self._max_answers = max_answers
        # The request threads and the batching thread share it; TTLCache has no lock of its own.
        self._lock = threading.Lock()

    def add(self, key: str, answer) -> None:
        """Keeps `answer` (which has `nbytes()`) under `key`, dropping what the bounds ask."""
        with self._lock:
            self._answers.expire()
            while len(self._answers) >= max(self._max_answers, 1):
                self._answers.popitem()
            try:
                self._answers[key] = answer
            except ValueError:  # TTLCache's "value too large": over the whole byte budget
                logger.warning(
                    f"An answer of {answer.nbytes()} bytes is over the cache's budget of "
                    f"{self._answers.maxsize} bytes: it is answered once, not kept for /results."
                )

    def get(self, key: str):
        """The answer kept under `key`.

        Raises:
            KeyError: when it was never added, has expired or has been dropped.
        """
        with self._lock:
            return self._answers[key]
