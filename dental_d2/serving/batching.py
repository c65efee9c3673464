"""A bounded queue in front of the model: requests are admitted up to a capacity and batched.

Each request first takes a slot (`BatchQueue.reserve`); when every slot is taken the caller is
told to come back later (HTTP 503 with Retry-After) instead of waiting in an unbounded line. A
slot is held from before the upload is decoded until its answer is built, so decoded images,
model inputs and outputs in memory never exceed `capacity` requests. One worker thread runs the
model on whatever is waiting when it frees up, up to `batch_size` images per forward pass.
"""

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

logger = logging.getLogger(__name__)

# Put on the work queue to stop the worker thread.
_STOP = object()


class QueueFull(Exception):
    """Every slot is taken; retry after `retry_after` seconds.

    Attributes:
        retry_after (int): seconds after which a slot is likely free (at least 1).
    """

    def __init__(self, retry_after: int):
        super().__init__(f"the prediction queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Reservation:
    """One request's slot in a `BatchQueue`; a context manager that gives the slot back.

    The slot is given back when the `with` block ends, or, if the request's forward pass is
    still running then (the client went away), when that pass finishes, so the bound holds.
    """

    def __init__(self, owner: "BatchQueue"):
        self._owner = owner
        self._future: Future | None = None
        self._released = False
        self._lock = threading.Lock()

    def submit(self, item) -> Future:
        """Queues one item for the model.

        Args:
            item: one input of the forward function (e.g. an HxWx3 BGR image).

        Returns:
            Future: resolves to the forward function's output for this item, or to its
            exception.
        """
        if self._future is not None:
            raise RuntimeError("a reservation holds one item")
        self._future = Future()
        self._owner._work.put((item, self._future))
        return self._future

    def release(self):
        """Gives the slot back, now or when the submitted item's forward pass ends."""
        if self._future is not None and not self._future.done():
            self._future.add_done_callback(lambda _: self._release_now())
        else:
            self._release_now()

    def _release_now(self):
        with self._lock:
            if self._released:
                return
            self._released = True
        self._owner._give_back()

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc_info):
        self.release()


class BatchQueue:
    """Admits at most `capacity` requests and runs the model on them in batches.

    Example::

        batches = BatchQueue(predictor.predict_batch, batch_size=4, capacity=16)
        with batches.reserve() as slot:      # raises QueueFull when all 16 are taken
            instances = slot.submit(image_bgr).result()

    Args:
        forward (Callable[[list], Sequence]): maps a list of items to one output per item.
        batch_size (int): the most items per forward call.
        capacity (int): the most requests admitted at once (queued, running or being answered).
    """

    def __init__(self, forward: Callable[[list], Sequence], batch_size: int, capacity: int):
        if batch_size < 1 or capacity < 1:
            raise ValueError(f"batch_size and capacity must be >= 1, got {batch_size}, {capacity}")
        self.forward = forward
        self.batch_size = batch_size
        self.capacity = capacity
        self._slots = threading.BoundedSemaphore(capacity)
        self._work = queue.Queue()
        self._stats_lock = threading.Lock()
        self._admitted = 0
        self._in_use = 0
        self._rejected = 0
        self._batches = 0
        self._items = 0
        self._forward_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="dental-batcher", daemon=True)
        self._thread.start()

    def reserve(self) -> Reservation:
        """Takes a slot without waiting.

        Raises:
            QueueFull: when `capacity` requests are already admitted.
        """
        if not self._slots.acquire(blocking=False):
            with self._stats_lock:
                self._rejected += 1
            raise QueueFull(self.retry_after())
        with self._stats_lock:
            self._admitted += 1
            self._in_use += 1
        return Reservation(self)

    def _give_back(self):
        with self._stats_lock:
            self._in_use -= 1
        self._slots.release()

    def retry_after(self) -> int:
        """Seconds to drain a full queue at the mean forward time so far (at least 1)."""
        with self._stats_lock:
            per_batch = self._forward_seconds / self._batches if self._batches else 1.0
        return max(1, math.ceil(per_batch * math.ceil(self.capacity / self.batch_size)))

    def stats(self) -> dict:
        """Returns counters: admitted, rejected, batches, mean batch size and forward time."""
        with self._stats_lock:
            batches = self._batches
            return {
                "capacity": self.capacity,
                "in_use": self._in_use,
                "admitted": self._admitted,
                "rejected": self._rejected,
                "batches": batches,
                "mean_batch_size": round(self._items / batches, 3) if batches else 0.0,
                "mean_forward_s": round(self._forward_seconds / batches, 4) if batches else 0.0,
            }

    def close(self, timeout: float = 10.0):
        """Stops the worker after the items already queued."""
        self._work.put(_STOP)
        self._thread.join(timeout)

    def _next_batch(self) -> list | None:
        first = self._work.get()
        if first is _STOP:
            return None
        batch = [first]
        # No waiting for stragglers: under load, items pile up while the model runs.
        while len(batch) < self.batch_size:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._work.put(_STOP)
                break
            batch.append(item)
        return batch

    def _run(self):
        while (batch := self._next_batch()) is not None:
            # A request whose client went away is cancelled (asyncio.wrap_future passes the
            # cancellation on) and skipped.
            batch = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            start = time.perf_counter()
            try:
                outputs = list(self.forward(items))
                if len(outputs) != len(items):
                    raise RuntimeError(f"forward returned {len(outputs)} outputs for {len(items)}")
            except Exception as e:  # the error goes to each request; the worker keeps going
                logger.exception("forward pass failed for a batch of %d", len(items))
                for _, future in batch:
                    future.set_exception(e)
                continue
            elapsed = time.perf_counter() - start
            with self._stats_lock:
                self._batches += 1
                self._items += len(items)
                self._forward_seconds += elapsed
            for (_, future), output in zip(batch, outputs):
                future.set_result(output)
