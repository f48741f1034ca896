"""A transaction fenced by a rebalance that leaves the partitions with this consumer
(cooperative-sticky) must not lose its batch, and ``--until-caught-up`` must not stop
before the batch is handled.

An in-memory consumer (position, seek, committed offsets, high watermarks) and a
transactional producer whose offsets reach the consumer's group only when the
transaction commits stand in for Kafka.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from broker.kafka import Outgoing
from broker.pipeline.runner import BaseStage, Handled, StageRunner


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return None

    def headers(self):
        return []

    def error(self):
        return None


class MemoryConsumer:
    """One consumer of a group on in-memory partitions; ``consume`` moves the position."""

    def __init__(self, logs: dict[tuple[str, int], list[bytes]], batch: int = 2) -> None:
        self.logs, self.batch = logs, batch
        self.pos = {k: 0 for k in logs}
        self.group: dict[tuple[str, int], int] = {}
        self.owned = set(logs)
        self.seeks: list[tuple[str, int, int]] = []

    def assignment(self):
        return [TopicPartition(t, p) for t, p in sorted(self.owned)]

    def consume(self, num_messages=1, timeout=-1):
        out = []
        for (t, p) in sorted(self.owned):
            while self.pos[(t, p)] < len(self.logs[(t, p)]) and len(out) < min(num_messages, self.batch):
                o = self.pos[(t, p)]
                out.append(Msg(t, p, o, self.logs[(t, p)][o]))
                self.pos[(t, p)] = o + 1
        return out

    def position(self, tps):
        return [TopicPartition(tp.topic, tp.partition, self.pos[(tp.topic, tp.partition)]) for tp in tps]

    def committed(self, tps, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.group.get((tp.topic, tp.partition), -1001)) for tp in tps]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, len(self.logs[(tp.topic, tp.partition)])

    def commit(self, offsets=None, asynchronous=True):
        for tp in offsets:
            self.group[(tp.topic, tp.partition)] = tp.offset

    def seek(self, tp):
        if (tp.topic, tp.partition) not in self.owned:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.seeks.append((tp.topic, tp.partition, tp.offset))
        self.pos[(tp.topic, tp.partition)] = tp.offset

    def consumer_group_metadata(self):
        return object()

    def close(self):
        pass


class TxnProducer:
    """Transactional producer: outputs and offsets count only when the transaction commits.
    ``fence`` errors are raised by the next ``send_offsets_to_transaction`` calls, each
    after ``on_fence`` (what the rebalance does to the consumer)."""

    def __init__(self, consumer: MemoryConsumer, fence: list[int], on_fence=lambda: None) -> None:
        self.consumer, self.fence, self.on_fence = consumer, list(fence), on_fence
        self.topic: list[bytes] = []
        self._pending: list[bytes] = []
        self._offsets: list = []

    def init_transactions(self, timeout=None):
        pass

    def begin_transaction(self):
        self._pending, self._offsets = [], []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self._pending.append(value)
        if on_delivery:
            on_delivery(None, None)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0

    def send_offsets_to_transaction(self, tps, meta, timeout=None):
        if self.fence:
            self.on_fence()
            raise KafkaException(KafkaError(self.fence.pop(0)))
        self._offsets = tps

    def commit_transaction(self, timeout=None):
        self.topic += self._pending
        self.consumer.commit(self._offsets)

    def abort_transaction(self, timeout=None):
        self._pending, self._offsets = [], []


class Echo(BaseStage):
    name = "echo"

    def __init__(self) -> None:
        self.done: list[tuple[str, int, int]] = []

    def handle(self, msg):
        return Handled(msg, [Outgoing("out", None, msg.value(), [])])

    def committed(self, batch, dead):
        self.done += [(h.msg.topic(), h.msg.partition(), h.msg.offset()) for h in batch]


def run_until_caught_up(consumer, producer, stage) -> None:
    runner = StageRunner(stage, consumer, producer, dlq_topic="dlq", batch_size=2, transactional=True)
    stop = threading.Event()
    guard = threading.Timer(20, stop.set)  # a runner that never gets caught up fails, not hangs
    guard.start()
    try:
        runner.run(stop, until_caught_up=True, idle_s=0.0)
    finally:
        guard.cancel()
    assert not stop.is_set(), "the runner never got caught up"


def test_batch_fenced_by_a_rebalance_that_kept_the_partition_is_handled_again():
    logs = {("raw", 0): [b"a", b"b", b"c"], ("raw", 1): [b"d"]}
    consumer = MemoryConsumer(logs)
    producer = TxnProducer(consumer, fence=[KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION])
    stage = Echo()
    run_until_caught_up(consumer, producer, stage)
    every = [(t, p, o) for (t, p), vals in logs.items() for o in range(len(vals))]
    assert sorted(stage.done) == sorted(every)  # each handled and committed exactly once
    assert sorted(producer.topic) == [b"a", b"b", b"c", b"d"]
    assert consumer.group == {("raw", 0): 3, ("raw", 1): 1}
    assert consumer.seeks[0] == ("raw", 0, 0)


def test_a_partition_that_really_moved_is_left_to_its_new_owner():
    logs = {("raw", 0): [b"a", b"b"], ("raw", 1): [b"c"]}
    consumer = MemoryConsumer(logs, batch=3)
    producer = TxnProducer(consumer, fence=[KafkaError.ILLEGAL_GENERATION],
                           on_fence=lambda: consumer.owned.discard(("raw", 1)))
    stage = Echo()
    run_until_caught_up(consumer, producer, stage)
    assert ("raw", 1, 0) not in {s[:2] + (s[2],) for s in consumer.seeks}
    assert sorted(stage.done) == [("raw", 0, 0), ("raw", 0, 1)]
    assert consumer.group == {("raw", 0): 2}  # partition 1 is committed by its new owner
