"""gcn-notice channel on the real Kafka: one record per send, found again by its key."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import confluent_kafka
import pytest

from broker.sinks.gcn import GcnNoticeChannel, validate_notice

pytestmark = pytest.mark.integration

EXAMPLE = {  # a notice as followup.reports.gcn.gcn_notice makes them (no-data form, small)
    "$schema": "https://mma-broker.org/schemas/gcn/notices/integral/spiacs_followup.schema.json",
    "mission": "INTEGRAL", "instrument": "SPI-ACS", "messenger": "EM",
    "alert_datetime": "2025-05-20T10:09:00.000Z", "alert_tense": "current", "alert_type": "initial",
    "event_name": "SVOM ECLAIRs trigger sb25052005", "id": "6517e8839d5543cfb88bd65f3ff661e2",
    "followup_id": "6517e8839d5543cfb88bd65f3ff661e2", "status": "no_data",
    "trigger_time": "2025-05-20T10:07:36.473Z", "ref_ID": "sb25052005",
    "no_data": {"kind": "outside_mission", "reason": "after the end of INTEGRAL science operations"},
}


def test_send_then_recover_by_key(kafka_bootstrap):
    validate_notice(EXAMPLE)
    topic = f"test.gcn.notices.{uuid.uuid4().hex[:8]}"
    channel = GcnNoticeChannel(topic, {"bootstrap.servers": kafka_bootstrap}, timeout_s=20)
    now = datetime.now(timezone.utc)
    entry = SimpleNamespace(key=f"gcn-notice:followup:{uuid.uuid4().hex}", payload=EXAMPLE, created_at=now)
    other = SimpleNamespace(key="gcn-notice:followup:never-sent", payload=EXAMPLE, created_at=now)
    assert channel.recover(entry) is None  # no topic yet: demonstrably not sent
    receipt = channel.send(entry)
    channel.close()
    assert receipt["topic"] == topic and receipt["offset"] >= 0
    found = channel.recover(entry)
    assert found["partition"] == receipt["partition"] and found["offset"] == receipt["offset"]
    assert channel.recover(other) is None
    consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex,
                                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    consumer.assign([confluent_kafka.TopicPartition(topic, receipt["partition"], confluent_kafka.OFFSET_BEGINNING)])
    got = []
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "topic not read to its end in 10 s"
            if msg.error() is not None:
                assert msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF, msg.error()
                break
            got.append(msg)
    finally:
        consumer.close()
    assert len(got) == 1 and got[0].key() == entry.key.encode()
    assert json.loads(got[0].value()) == EXAMPLE
