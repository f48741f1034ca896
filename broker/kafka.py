"""Clients for our own Kafka cluster (topics ``mma.*`` and, locally, replayed upstreams).

Thin factories over confluent-kafka that add defaults and step aside for anything the
user set in ``[kafka] config`` (the gcn-kafka idea). Credentials never pass through
here as literals: they come from settings (SecretStr) and are not logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from broker.config import Settings
from broker.errors import BrokerError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""IGWN alerts carry their sky map (up to a few MB); deploy/kafka allows 16 MiB."""


LIBRDKAFKA_LOGGER = "broker.librdkafka"
"""librdkafka's own log lines go to this Python logger (the CLI shows its warnings
only with --verbose: during start-up they are routine retries)."""


def client_config(settings: Settings, **defaults: Any) -> dict[str, Any]:
    """librdkafka config for our cluster: defaults, then the user's ``[kafka] config``."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        **defaults,
    }
    cfg.update(settings.kafka.config)
    return cfg


def make_producer(settings: Settings, **overrides: Any) -> confluent_kafka.Producer:
    """An idempotent producer (acks=all) sized for sky-map-carrying alerts."""
    cfg = client_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        },
    )
    cfg.update(overrides)
    return confluent_kafka.Producer(cfg)


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> confluent_kafka.Consumer:
    """A consumer of our cluster with manual commits (offsets follow durable output)."""
    cfg = client_config(
        settings,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "topic.metadata.refresh.interval.ms": 5000,
            "partition.assignment.strategy": "cooperative-sticky",
        },
    )
    cfg.update(overrides)
    return confluent_kafka.Consumer(cfg)


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int = 4, timeout_s: float = 30.0) -> None:
    """Create our topics if missing (idempotent; an existing topic is left as it is).

    Raises
    ------
    BrokerError
        If Kafka does not answer or refuses to create a topic.
    """
    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except confluent_kafka.KafkaException as exc:
        raise BrokerError(f"Kafka at {settings.kafka.bootstrap_servers} did not answer: {exc}") from None
    todo = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
    if not todo:
        return
    for name, fut in admin.create_topics(todo, request_timeout=timeout_s).items():
        try:
            fut.result()
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name}: {exc}") from None


class DeliveryTracker:
    """Collects produce() delivery reports so a stage knows its output is durable.

    Use :meth:`callback` as ``on_delivery``; after ``producer.flush()`` call
    :meth:`raise_if_failed` before committing input offsets.
    """

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.delivered = 0

    def callback(self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err}")
        else:
            self.delivered += 1

    def raise_if_failed(self) -> None:
        if self.failed:
            first, n = self.failed[0], len(self.failed)
            self.failed = []
            raise BrokerError(f"{n} message(s) not delivered, first: {first}")


def flush_or_raise(producer: confluent_kafka.Producer, tracker: DeliveryTracker, timeout_s: float = 60.0) -> None:
    """Wait until every produced message is acknowledged, or raise.

    Raises
    ------
    BrokerError
        On a delivery failure or when messages are still queued after ``timeout_s``.
    """
    remaining = producer.flush(timeout_s)
    if remaining:
        raise BrokerError(f"{remaining} message(s) still queued after {timeout_s:.0f} s (is Kafka up?)")
    tracker.raise_if_failed()
