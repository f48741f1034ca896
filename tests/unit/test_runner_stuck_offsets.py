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
