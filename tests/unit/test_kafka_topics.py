"""``ensure_topics`` returns only once every partition takes writes.

Regression for replayed alerts lost with a successful delivery report: Kafka answers
CreateTopics before the partition leader has created its log, an idempotent producer
that sends at once gets NOT_LEADER_OR_FOLLOWER on its first batch while a later batch
in flight is accepted as the first, and librdkafka acknowledges the refused batch
implicitly (measured with benchmarks/stress_until_caught_up.py, docs/benchmarks.md).
The fake admin client below behaves like the broker right after CreateTopics: a new
topic is absent from the metadata for a few rounds, then its partitions answer
NOT_LEADER_FOR_PARTITION for a few more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from broker.config import Settings
from broker.errors import BrokerError
from broker.kafka import ensure_topics, wait_writable


class Future:
    def __init__(self, error: int | None = None) -> None:
        self.error = error

    def result(self):
        if self.error is not None:
            raise KafkaException(KafkaError(self.error))
        return None


class TopicMeta:
    def __init__(self, partitions: int) -> None:
        self.partitions = {p: object() for p in range(partitions)}
        self.error = None


class Metadata:
    def __init__(self, topics: dict[str, TopicMeta]) -> None:
        self.topics = topics


class NewBrokerAdmin:
    """An admin client on a broker that needs ``visible_after`` metadata rounds before a
    created topic is listed, and ``online_after`` rounds before its partitions are led
    (until then ListOffsets and a produce get NOT_LEADER_FOR_PARTITION)."""

    def __init__(self, existing: dict[str, int] | None = None, *, visible_after: int = 2, online_after: int = 4,
                 error: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.topics = {name: (n, -1000) for name, n in (existing or {}).items()}  # name → (partitions, created at)
        self.rounds = 0
        self.visible_after, self.online_after, self.error = visible_after, online_after, error
        self.created: list[str] = []

    def list_topics(self, timeout=None):
        self.rounds += 1
        return Metadata({name: TopicMeta(n) for name, (n, at) in self.topics.items()
                         if self.rounds - at > self.visible_after})

    def create_topics(self, new_topics, request_timeout=None):
        for t in new_topics:
            self.topics[t.topic] = (t.num_partitions, self.rounds)
            self.created.append(t.topic)
        return {t.topic: Future() for t in new_topics}

    def writable(self, topic: str) -> bool:
        n, at = self.topics[topic]
        return self.rounds - at > self.online_after

    def list_offsets(self, request, request_timeout=None):
        return {tp: Future(None if self.writable(tp.topic) else self.error) for tp in request}


def settings() -> Settings:
    return Settings(home=Path("/nonexistent"), kafka={"bootstrap_servers": "127.0.0.1:1"})


@pytest.mark.parametrize("error", [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_LEADER_EPOCH,
                                   KafkaError._NOENT])
def test_ensure_topics_returns_only_when_every_new_partition_takes_writes(monkeypatch, error):
    monkeypatch.setattr("time.sleep", lambda s: None)
    admin = NewBrokerAdmin({"old": 4}, error=error)
    ensure_topics(settings(), ["old", "new.a", "new.b"], admin=admin)
    assert admin.created == ["new.a", "new.b"]
    # what a producer sending right now would find: every partition led
    assert all(admin.writable(t) for t in ["old", "new.a", "new.b"])
    assert admin.rounds > admin.online_after


def test_existing_writable_topics_cost_one_round_and_no_wait():
    admin = NewBrokerAdmin({"mma.events": 4, "mma.dlq": 4})
    slept = []
    wait_writable(admin, ["mma.events", "mma.dlq"], sleep=slept.append)
    assert slept == [] and admin.rounds == 1


def test_partitions_never_online_raise_a_broker_error_naming_them():
    admin = NewBrokerAdmin({}, visible_after=0, online_after=10**9)
    admin.create_topics([type("T", (), {"topic": "stuck", "num_partitions": 2})()])
    now = [0.0]

    def sleep(s):
        now[0] += s

    with pytest.raises(BrokerError, match=r"2 topic partition\(s\) still not writable after 5 s.*stuck \[0\]"):
        wait_writable(admin, ["stuck"], 5.0, clock=lambda: now[0], sleep=sleep)
    assert 4.9 <= now[0] <= 5.2


def test_a_refusal_other_than_not_yet_is_raised_at_once():
    admin = NewBrokerAdmin({"secret": 1}, error=KafkaError.TOPIC_AUTHORIZATION_FAILED, online_after=10**9)
    with pytest.raises(BrokerError, match="cannot read the end offset of secret"):
        wait_writable(admin, ["secret"], sleep=lambda s: pytest.fail("must not wait"))
