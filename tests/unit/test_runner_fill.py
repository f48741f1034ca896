"""StageRunner's ``fill_s``: a lone message on an idle input is not held for ``poll_timeout_s``.

librdkafka's ``consume(num_messages, timeout)`` returns only when it has ``num_messages``
messages or at its timeout, so a notice that arrives while a stage waits for a batch
of 500 waited up to ``poll_timeout_s`` (0.5 s) per hop. The fake consumer below keeps
that contract (it blocks until the batch is full or the timeout passes).
"""

from __future__ import annotations

import threading
import time

import pytest

from broker.pipeline.runner import BaseStage, StageRunner


class BlockingConsumer:
    """``consume`` as librdkafka does it: up to ``num_messages``, returning early only when full."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.cond = threading.Condition()
        self.calls: list[float] = []  # timeouts asked for

    def put(self, msg: str) -> None:
        with self.cond:
            self.queue.append(msg)
            self.cond.notify_all()

    def poll(self, timeout: float = -1) -> str | None:
        """One message as soon as there is one (librdkafka's poll)."""
        self.calls.append(("poll", timeout))
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.queue.pop(0)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[str]:
        self.calls.append(timeout)
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.queue) < num_messages:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
            return out


def _runner(consumer: BlockingConsumer, fill_s: float | None, poll_timeout_s: float = 2.0,
            batch_size: int = 500) -> StageRunner:
    return StageRunner(BaseStage(), consumer, producer=None, dlq_topic="dlq", batch_size=batch_size,
                       poll_timeout_s=poll_timeout_s, fill_s=fill_s)


def _time_lone_message(fill_s: float | None) -> tuple[list[str], float, BlockingConsumer]:
    consumer = BlockingConsumer()
    runner = _runner(consumer, fill_s)
    threading.Timer(0.05, consumer.put, args=("notice",)).start()
    t0 = time.monotonic()
    got = runner._consume(threading.Event())
    return got, time.monotonic() - t0, consumer


def test_a_lone_message_waits_one_fill_window_not_the_poll_timeout():
    got, took, consumer = _time_lone_message(0.02)
    assert got == ["notice"]
    assert took < 1.0  # ~0.06 s here; the poll timeout is 2 s
    assert set(consumer.calls) == {0.02}


def test_without_fill_s_the_batch_waits_the_whole_poll_timeout():
    """The behaviour fill_s replaces (and the default, for stages that do not set it)."""
    got, took, consumer = _time_lone_message(None)
    assert got == ["notice"]
    assert took >= 1.9
    assert consumer.calls == [2.0]


def test_fill_s_zero_hands_a_lone_message_over_on_arrival():
    got, took, consumer = _time_lone_message(0.0)
    assert got == ["notice"]
    assert took < 1.0
    assert consumer.calls == [("poll", 2.0), 0]  # then only what had arrived with it


@pytest.mark.parametrize("fill_s", [0.02, 0.0])
def test_a_backlog_still_gives_full_batches(fill_s):
    consumer = BlockingConsumer()
    for i in range(1200):
        consumer.put(f"m{i}")
    runner = _runner(consumer, fill_s)
    batches = [runner._consume(threading.Event()) for _ in range(3)]
    assert [len(b) for b in batches] == [500, 500, 200]
    assert [m for b in batches for m in b] == [f"m{i}" for i in range(1200)]  # in order, none lost


def test_idle_input_returns_empty_after_the_poll_timeout_and_stop_ends_the_wait():
    consumer = BlockingConsumer()
    runner = _runner(consumer, 0.05, poll_timeout_s=0.3)
    t0 = time.monotonic()
    assert runner._consume(threading.Event()) == []
    took = time.monotonic() - t0
    assert 0.2 <= took < 1.5 and len(consumer.calls) >= 4
    stop = threading.Event()
    stop.set()
    consumer.calls.clear()
    assert runner._consume(stop) == [] and len(consumer.calls) == 1


@pytest.mark.parametrize("fill_s, expected", [(None, 2.0), (0.02, 0.02), (0.0, 0.0), (5.0, 2.0)])
def test_fill_s_is_bounded_by_the_poll_timeout(fill_s, expected):
    assert _runner(BlockingConsumer(), fill_s).fill_s == expected
