"""Topics made by ``ensure_topics`` take writes at once, on the real Kafka.

Kafka answers CreateTopics before the partition leader has created its logs; a
produce in between is refused with NOT_LEADER_OR_FOLLOWER, and an idempotent producer
with several requests in flight can then lose its first batch with a successful
delivery report (see :func:`broker.kafka.ensure_topics`). Measured on the local broker
with 8,000 partitions: right after CreateTopics of 20 topics, 70 to 80 of their 80
partitions were not writable, for up to 3 s; ``mma-broker replay`` lost 1-2 alerts in
about one run in twenty (benchmarks/stress_until_caught_up.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_every_partition_of_new_topics_is_led_when_ensure_topics_returns(kafka_bootstrap, tmp_path: Path):
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    from broker.config import Settings
    from broker.kafka import DeliveryTracker, ensure_topics, flush_or_raise, make_producer

    tag = uuid.uuid4().hex[:8]
    s = Settings(home=tmp_path, kafka={"bootstrap_servers": kafka_bootstrap})
    names = [f"nt{tag}.t{i}" for i in range(20)]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        ensure_topics(s, names)
        # a client that has never seen these topics, asking every partition's leader at once
        futures = admin.list_offsets({TopicPartition(n, p): OffsetSpec.latest() for n in names for p in range(4)},
                                     request_timeout=10)
        refused = []
        for tp, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                refused.append(f"{tp.topic}[{tp.partition}]: {exc.args[0].name()}")
        assert refused == []

        # and an idempotent producer's messages are all where its delivery reports say
        producer, tracker = make_producer(s), DeliveryTracker()
        offsets = []

        def report(err, msg):
            tracker.callback(err, msg)
            offsets.append(msg.offset())

        for n in names:
            for p in range(4):
                producer.produce(n, value=b"x" * 1000, partition=p, on_delivery=report)
        flush_or_raise(producer, tracker)
        assert len(offsets) == 80 and None not in offsets
        ends = admin.list_offsets({TopicPartition(n, p): OffsetSpec.latest() for n in names for p in range(4)},
                                  request_timeout=10)
        assert sum(f.result().offset for f in ends.values()) == 80
    finally:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result()
            except KafkaException:
                pass
