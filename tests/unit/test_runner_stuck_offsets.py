"""A ``send_offsets_to_transaction`` that never returns does not hang the stage.

librdkafka 2.16 can block in it for good when the consumer group's coordinator broker
is killed (issues 5456 and 5511; seen with ``kill -9`` of a node of
``deploy/kafka/cluster.sh``). The runner gives the call its timeout plus a grace period,
then replaces the producer and makes the batch's transaction again: each message is
produced once by the new producer, and the offsets are committed.
"""

from __future__ import annotations

import threading

from confluent_kafka import TopicPartition

import broker.pipeline.runner as runner_module
from broker.pipeline.runner import StageRunner
from tests.unit.test_runner_init import Echo, Producer, UnstableUntilInit


class StuckProducer(Producer):
    """``send_offsets_to_transaction`` blocks until the test ends (as librdkafka's did)."""

    def __init__(self, log, release: threading.Event) -> None:
        super().__init__(log)
        self.release = release

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
        self.log.append("stuck")
        self.release.wait()


def test_a_stuck_send_offsets_gets_a_new_producer(monkeypatch):
    monkeypatch.setattr(runner_module, "SEND_OFFSETS_GRACE_S", 0.2)
    log: list[str] = []
    release = threading.Event()
    consumer = UnstableUntilInit({("in", 0): [b"a", b"b", b"c"]}, log)
    stuck = StuckProducer(log, release)
    made: list[Producer] = []

    def factory() -> Producer:
        p = Producer(log)
        p.consumer = consumer
        made.append(p)
        return p

    runner = StageRunner(Echo(), consumer, stuck, dlq_topic="dlq", batch_size=10, poll_timeout_s=0.01,
                         transactional=True, producer_factory=factory, txn_timeout_s=0.1)
    stop = threading.Event()
    stage = threading.Thread(target=runner.run, args=(stop,), kwargs={"until_caught_up": True, "idle_s": 0},
                             daemon=True)
    stage.start()
    stage.join(20)
    hung = stage.is_alive()
    release.set()
    assert not hung, "the stage hung in send_offsets_to_transaction"
    assert log.count("stuck") == 1 and len(made) == 1
    assert made[0].produced == [b"a", b"b", b"c"] and stuck.produced == []
    assert consumer.committed([TopicPartition("in", 0)])[0].offset == 3


def test_stuck_producers_are_bounded_then_the_stage_stops_for_a_restart(monkeypatch):
    """Every new producer gets stuck too (the coordinator never comes back): the runner
    replaces them until MAX_STUCK_PRODUCERS are held by their threads, then stops with a
    BrokerError naming the cause, instead of leaking a thread and a producer per batch."""
    import pytest

    from broker.errors import BrokerError

    monkeypatch.setattr(runner_module, "SEND_OFFSETS_GRACE_S", 0.05)
    log: list[str] = []
    release = threading.Event()
    consumer = UnstableUntilInit({("in", 0): [b"a"]}, log)
    made: list[Producer] = []

    def factory() -> Producer:
        p = StuckProducer(log, release)
        p.consumer = consumer
        made.append(p)
        return p

    runner = StageRunner(Echo(), consumer, factory(), dlq_topic="dlq", batch_size=10, poll_timeout_s=0.01,
                         transactional=True, producer_factory=factory, txn_timeout_s=0.05)
    try:
        with pytest.raises(BrokerError, match="still stuck in send_offsets_to_transaction"):
            runner.run(threading.Event(), until_caught_up=True, idle_s=0)
        assert log.count("stuck") == runner_module.MAX_STUCK_PRODUCERS
        assert len(made) == runner_module.MAX_STUCK_PRODUCERS  # the first and its replacements, no more
        assert consumer.committed([TopicPartition("in", 0)])[0].offset < 1  # nothing committed
    finally:
        release.set()


def test_a_stuck_producer_that_returns_no_longer_counts(monkeypatch):
    """A given-up call that returns later frees its producer and leaves the count, so
    occasional stalls over a long run never add up to a stop. With a bound of 2: the first
    producer is stuck and given up; its call returns while the second is stuck; at the
    second give-up only one is still held, so a third producer is made and the batch goes
    through (without the pruning, two would count and the stage would stop)."""
    import time

    monkeypatch.setattr(runner_module, "SEND_OFFSETS_GRACE_S", 0.05)
    monkeypatch.setattr(runner_module, "MAX_STUCK_PRODUCERS", 2)
    log: list[str] = []
    release_first, release_second = threading.Event(), threading.Event()
    consumer = UnstableUntilInit({("in", 0): [b"a", b"b"]}, log)

    class ReturnsLate(StuckProducer):
        def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
            super().send_offsets_to_transaction(offsets, metadata, timeout)
            self.log.append("returned")

    class FreesTheFirstThenSticks(StuckProducer):
        def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
            release_first.set()
            deadline = time.monotonic() + 5
            while "returned" not in self.log and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.05)  # the first helper thread ends just after its call returned
            super().send_offsets_to_transaction(offsets, metadata, timeout)

    made: list[Producer] = []

    def factory() -> Producer:
        p = FreesTheFirstThenSticks(log, release_second) if not made else Producer(log)
        p.consumer = consumer
        made.append(p)
        return p

    runner = StageRunner(Echo(), consumer, ReturnsLate(log, release_first), dlq_topic="dlq", batch_size=10,
                         poll_timeout_s=0.01, transactional=True, producer_factory=factory, txn_timeout_s=0.05)
    try:
        runner.run(threading.Event(), until_caught_up=True, idle_s=0)
    finally:
        release_second.set()
    assert log.count("stuck") == 2 and "returned" in log and len(made) == 2
    assert made[1].produced == [b"a", b"b"]
    assert consumer.committed([TopicPartition("in", 0)])[0].offset == 2
