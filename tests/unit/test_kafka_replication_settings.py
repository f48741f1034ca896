"""``[kafka] replication_factor`` reaches the topics a stage creates, and a settings
``repr`` does not show the SASL password of ``[kafka] config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import Settings, SettingsError, load_settings
from broker.kafka import ensure_topics
from tests.unit.test_kafka_topics import NewBrokerAdmin

SECRET = "s3cr3t-Pa55word-for-the-test"


class RecordingAdmin(NewBrokerAdmin):
    def create_topics(self, new_topics, request_timeout=None):
        self.replicas = {t.topic: t.replication_factor for t in new_topics}
        return super().create_topics(new_topics, request_timeout)


@pytest.mark.parametrize("factor", [1, 3])
def test_new_topics_get_the_configured_replication_factor(monkeypatch, factor):
    monkeypatch.setattr("time.sleep", lambda s: None)
    s = Settings(home=Path("/nonexistent"), kafka={"bootstrap_servers": "127.0.0.1:1", "replication_factor": factor})
    admin = RecordingAdmin({"mma.dlq": 4})
    ensure_topics(s, ["mma.events", "mma.dlq"], admin=admin)
    assert admin.replicas == {"mma.events": factor}  # an existing topic keeps its own


def test_replication_factor_zero_is_a_settings_error():
    with pytest.raises(SettingsError, match=r"kafka\.replication_factor"):
        Settings(home=Path("/nonexistent"), kafka={"replication_factor": 0})


def test_settings_repr_hides_the_sasl_password(monkeypatch, tmp_path):
    for key in [k for k in __import__("os").environ if k.startswith("MMA_BROKER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MMA_BROKER_HOME", str(tmp_path))
    monkeypatch.setenv("MMA_BROKER_KAFKA__CONFIG__SASL.PASSWORD", SECRET)
    monkeypatch.setenv("MMA_BROKER_KAFKA__CONFIG__SASL.USERNAME", "partner")
    s = load_settings()
    assert s.kafka.config["sasl.password"] == SECRET  # librdkafka still gets it
    for text in (repr(s), str(s), repr(s.kafka), str(s.kafka)):
        assert SECRET not in text and "partner" in text
