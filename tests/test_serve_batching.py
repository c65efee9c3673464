"""The bounded batching queue: capacity, batch sizes, errors, cancelled requests."""

import threading

import pytest

from dental_d2.serving.batching import BatchQueue, QueueFull


class GatedForward:
    """Doubles its inputs, records batch sizes, and blocks until `gate` is set."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes = []

    def __call__(self, items):
        self.entered.set()
        assert self.gate.wait(10)
        self.sizes.append(len(items))
        return [2 * item for item in items]


@pytest.fixture
def forward():
    forward = GatedForward()
    yield forward
    forward.gate.set()


def test_items_waiting_are_batched_up_to_batch_size(forward):
    batches = BatchQueue(forward, batch_size=2, capacity=8)
    slots = [batches.reserve() for _ in range(5)]
    futures = [slots[0].submit(0)]
    assert forward.entered.wait(10)  # the first item is in the model alone
    futures += [slot.submit(k) for k, slot in enumerate(slots[1:], start=1)]
    forward.gate.set()
    assert [f.result(10) for f in futures] == [0, 2, 4, 6, 8]
    assert forward.sizes == [1, 2, 2]
    for slot in slots:
        slot.release()
    stats = batches.stats()
    assert (stats["batches"], stats["mean_batch_size"], stats["in_use"]) == (3, 1.667, 0)
    batches.close()


def test_capacity_refuses_with_retry_after_and_frees_on_release(forward):
    forward.gate.set()
    batches = BatchQueue(forward, batch_size=1, capacity=2)
    first, second = batches.reserve(), batches.reserve()
    with pytest.raises(QueueFull) as refused:
        batches.reserve()
    assert refused.value.retry_after >= 1
    first.release()
    first.release()  # a second release gives nothing back twice
    third = batches.reserve()
    with pytest.raises(QueueFull):
        batches.reserve()
    assert batches.stats()["rejected"] == 2
    second.release()
    third.release()
    assert batches.stats()["in_use"] == 0
    batches.close()


def test_a_slot_whose_item_is_still_running_stays_taken(forward):
    batches = BatchQueue(forward, batch_size=1, capacity=1)
    slot = batches.reserve()
    future = slot.submit(3)
    assert forward.entered.wait(10)
    slot.release()  # the client went away, the model still holds its image
    with pytest.raises(QueueFull):
        batches.reserve()
    forward.gate.set()
    assert future.result(10) == 6
    batches.reserve().release()
    batches.close()


def test_a_failing_forward_fails_its_batch_and_the_worker_goes_on():
    calls = []

    def forward(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return [item + 1 for item in items]

    batches = BatchQueue(forward, batch_size=4, capacity=4)
    with batches.reserve() as slot, pytest.raises(RuntimeError, match="out of memory"):
        slot.submit(1).result(10)
    with batches.reserve() as slot:
        assert slot.submit(1).result(10) == 2
    batches.close()


def test_cancelled_requests_are_skipped(forward):
    batches = BatchQueue(forward, batch_size=4, capacity=4)
    with batches.reserve() as blocker, batches.reserve() as gone, batches.reserve() as kept:
        running = blocker.submit(1)
        assert forward.entered.wait(10)
        cancelled, waiting = gone.submit(2), kept.submit(3)
        assert cancelled.cancel()
        forward.gate.set()
        assert (running.result(10), waiting.result(10)) == (2, 6)
    assert forward.sizes == [1, 1]
    assert batches.stats()["in_use"] == 0
    batches.close()
