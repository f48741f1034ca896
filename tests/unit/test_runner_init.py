"""A transactional stage calls ``init_transactions`` before its first poll.

A restarted stage whose predecessor died inside a transaction holding the group's
offsets cannot fetch its committed offsets (UNSTABLE_OFFSET_COMMIT, KIP-447) until that
transaction ends; only the new producer's ``init_transactions`` (same transactional id)
ends it at once. The fake consumer here hands out its messages only once the producer
has called ``init_transactions``, as Kafka does in that case; with a lazy
``init_transactions`` (at the first batch) the stage would never get a batch.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from broker.kafka import Outgoing
from broker.pipeline.runner import BaseStage, Handled, StageRunner
from tests.unit.test_runner_rebalance import MemoryConsumer


class Producer:
    """A transactional producer that records its calls in ``log``."""

    def __init__(self, log: list[str], init_error: KafkaError | None = None) -> None:
        self.log, self.init_error, self.produced = log, init_error, []

    def init_transactions(self, timeout=None):
        self.log.append("init")
        if self.init_error is not None:
            err, self.init_error = self.init_error, None
            raise KafkaException(err)

    def begin_transaction(self):
        self.pending = []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self.pending.append(value)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
        self.offsets = offsets

    def commit_transaction(self, timeout=None):
        self.produced += self.pending
        self.consumer.commit(self.offsets)


class UnstableUntilInit(MemoryConsumer):
    """No message before the producer's ``init_transactions`` (the offsets are pending)."""

    def __init__(self, logs, log: list[str]) -> None:
        super().__init__(logs)
        self.log = log

    def consume(self, num_messages=1, timeout=-1):
        self.log.append("consume")
        return super().consume(num_messages, timeout) if "init" in self.log else []

    def poll(self, timeout=None):
        msgs = self.consume(1, timeout)
        return msgs[0] if msgs else None

    def consumer_group_metadata(self):
        return object()

    def close(self):
        pass


class Echo(BaseStage):
    name = "echo"

    def handle(self, msg):
        return Handled(msg, outputs=[Outgoing("out", None, msg.value(), [])])


def run(init_error: KafkaError | None = None) -> tuple[list[str], Producer]:
    log: list[str] = []
    producer = Producer(log, init_error)
    run_echo(producer, log)
    return log, producer


def run_echo(producer, log: list[str]) -> UnstableUntilInit:
    """Run :class:`Echo` transactionally with ``producer`` over three records until caught up
    (or 10 s); check that all three offsets were committed; return the consumer."""
    consumer = UnstableUntilInit({("in", 0): [b"a", b"b", b"c"]}, log)
    producer.consumer = consumer
    runner = StageRunner(Echo(), consumer, producer, dlq_topic="dlq", batch_size=10, poll_timeout_s=0.01,
                         transactional=True)
    stop = threading.Event()
    timer = threading.Timer(10, stop.set)  # a stage that never gets its batch stops here and fails below
    timer.start()
    try:
        runner.run(stop, until_caught_up=True, idle_s=0)
    finally:
        timer.cancel()
    assert consumer.committed([TopicPartition("in", 0)])[0].offset == 3
    return consumer


def test_init_transactions_comes_before_the_first_poll():
    log, producer = run()
    assert log[0] == "init" and log.count("init") == 1
    assert producer.produced == [b"a", b"b", b"c"]


def test_a_failed_init_at_start_is_made_again_with_the_first_batch():
    # a non-retriable error at start is logged; the lazy path (first batch) calls it again
    log, producer = run(KafkaError(KafkaError.INVALID_TRANSACTION_TIMEOUT))
    assert log[0] == "init" and log.count("init") == 2
    assert producer.produced == [b"a", b"b", b"c"]
