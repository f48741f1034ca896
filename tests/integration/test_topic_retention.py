"""``[kafka] retention_ms`` is applied by ensure_topics on the real Kafka: at creation,
and to an existing topic whose value differs (a second call changes nothing)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from broker.config import Settings, SettingsError
from broker.kafka import apply_retention, ensure_topics
from tests.conftest import delete_topics

pytestmark = pytest.mark.integration


def _retention(admin: AdminClient, topic: str) -> str:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([res])[res].result()["retention.ms"].value


def test_retention_set_at_creation_and_on_an_existing_topic(kafka_bootstrap, tmp_path: Path):
    prefix = f"r{uuid.uuid4().hex[:8]}."
    base = dict(home=tmp_path, kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        s = Settings(**base)
        ensure_topics(s, [s.topic("mma.dlq"), s.topic("mma.events")], partitions=1)
        default = _retention(admin, s.topic("mma.events"))
        s = Settings(**{**base, "kafka": {**base["kafka"], "retention_ms": {"mma.events": 3_600_000,
                                                                            "mma.coincidences": -1}}})
        ensure_topics(s, [s.topic("mma.events"), s.topic("mma.coincidences"), s.topic("mma.dlq")], partitions=1)
        assert _retention(admin, s.topic("mma.events")) == "3600000"  # existing: changed
        assert _retention(admin, s.topic("mma.coincidences")) == "-1"  # created with it
        assert _retention(admin, s.topic("mma.dlq")) == default  # not named: left alone
        assert apply_retention(admin, {s.topic("mma.events"): 3_600_000}) == []  # already so: no change
    finally:
        delete_topics(kafka_bootstrap, prefix)


def test_retention_setting_is_validated():
    with pytest.raises(SettingsError, match="kafka.retention_ms: retention.ms must be -1"):
        Settings(home=Path("/nonexistent"), kafka={"retention_ms": {"mma.events": 0}})
