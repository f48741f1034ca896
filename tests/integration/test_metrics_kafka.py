"""Consumer lag from a real confluent_kafka consumer on the real Kafka: produce N
messages to a new topic, consume k, and ``mma_broker_consumer_lag`` says N − k, on the
registry and in a real scrape of /metrics."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import Metrics

pytestmark = pytest.mark.integration

N, K = 40, 13


def test_lag_of_a_real_consumer(kafka_bootstrap):
    topic = f"test-metrics-lag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=60)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(N):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"test-metrics-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    metrics = Metrics()
    st = metrics.stage("lagtest")
    try:
        consumer.subscribe([topic])
        assert st.lag(consumer) == {}  # nothing assigned yet
        got = 0
        deadline = time.monotonic() + 60
        while got < K and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=K - got, timeout=1.0)
            st.polled()
            got += sum(1 for m in msgs if m.error() is None)
        assert got == K
        assert st.lag(consumer) == {(topic, 0): N - K}
        labels = {"stage": "lagtest", "topic": topic, "partition": "0"}
        assert metrics.registry.get_sample_value("mma_broker_consumer_lag", labels) == N - K

        with metrics.serve("127.0.0.1", 0) as server:
            with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
        scraped = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == "mma_broker_consumer_lag" and s.labels == labels]
        assert scraped == [N - K]
    finally:
        consumer.close()
        admin.delete_topics([topic])
