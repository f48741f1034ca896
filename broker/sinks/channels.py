"""Channels: what sends an outbox entry somewhere (a Kafka topic, SMTP, an HTTP API).

A channel is any object with the methods of :class:`Channel`. The sender stage never
imports one: :func:`broker.sinks.build.build_channels` makes them, by name, from the
settings — the built-in channels and those of installed packages through the
entry-point group ``mma_broker.channels`` (name → ``factory(settings) -> Channel | None``;
None when the channel is disabled), extra ones through ``[publish] channels``.

Contract (what the sender relies on):

``validate(payload)``
    Raise ``ValueError`` naming what is wrong and where (a JSON path) for a message
    the other side would refuse; the sender marks it ``failed`` without sending.
``send(entry) -> dict``
    Send ``entry.payload`` once and return the receipt (JSON-ready: Kafka
    topic/partition/offset, SMTP Message-ID, TNS report id, ``pending: true`` when a
    reply is to be polled). Raise :class:`ChannelError` on failure: ``retryable=True``
    when trying again may work (network, 5xx, throttling), False when it cannot (4xx,
    refused content). Anything else raised counts as retryable.
    Kafka channels put the entry's key in the header :data:`OUTBOX_KEY_HEADER` of the
    record, so :meth:`recover` can find it.
``recover(entry) -> dict | None``
    For an entry a crashed sender left in ``sending``: the receipt if it demonstrably
    went out, None if it demonstrably did not; raise ``ChannelError(retryable=False)``
    when it cannot be known (SMTP, TNS: the entry becomes ``unknown``), or
    ``ChannelError(retryable=True)`` to be asked again later (the other side away).
``poll(entry) -> dict | None``
    For a sent entry whose receipt says ``pending: true``: the new receipt when the
    reply changed, None when nothing changed yet.

:class:`KafkaChannel` implements the contract for a JSON message produced to one Kafka
topic (confluent-kafka, idempotent producer, acks=all); :func:`find_key_on_topic` is the
recovery it uses, for other Kafka-based channels (hop-client) to reuse.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, runtime_checkable

from broker.errors import BrokerError
from broker.sinks.outbox import OutboxEntry
from broker.text import one_line

log = logging.getLogger(__name__)

OUTBOX_KEY_HEADER = "mma_outbox_key"
"""Kafka header holding the outbox key of a record a channel produced (UTF-8)."""

RECOVER_MARGIN_S = 300.0
"""Recovery searches the topic from this long before the entry was claimed, s (clock skew)."""


class ChannelError(BrokerError):
    """A send (or recovery, or poll) failed.

    Parameters
    ----------
    message : str
        One line, no secrets (the sender scrubs it again).
    retryable : bool
        True when trying again later may succeed.
    """

    def __init__(self, message: object = "", *, retryable: bool = True) -> None:
        super().__init__(one_line(message, 2000))
        self.retryable = retryable


@runtime_checkable
class Channel(Protocol):
    """What the sender needs of a channel (see the module docstring)."""

    name: str

    def validate(self, payload: dict) -> None:
        """Raise ValueError naming what and where (JSON path) if the message is invalid."""

    def send(self, entry: OutboxEntry) -> dict:
        """Send once; return the receipt. Raise ChannelError."""

    def recover(self, entry: OutboxEntry) -> dict | None:
        """Receipt if it went out, None if not; ChannelError(retryable=False) if unknowable."""

    def poll(self, entry: OutboxEntry) -> dict | None:
        """New receipt of a pending reply, None if unchanged."""


class BaseChannel:
    """Defaults: everything validates, recovery is unknowable, nothing to poll."""

    name = "channel"

    def validate(self, payload: dict) -> None:
        """Accept any JSON object."""

    def send(self, entry: OutboxEntry) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def recover(self, entry: OutboxEntry) -> dict | None:
        raise ChannelError(f"{self.name} cannot tell whether entry {entry.id} went out", retryable=False)

    def poll(self, entry: OutboxEntry) -> dict | None:
        return None

    def close(self) -> None:
        """Release clients (called when the sender stops)."""


def kafka_headers(entry: OutboxEntry, fmt: str = "json") -> list[tuple[str, bytes]]:
    """Headers of a record sent for ``entry``: the outbox key, and hop-client's
    (``_id``: 16 random bytes, ``_sender``, ``_format``) so ``hop subscribe`` reads it."""
    return [(OUTBOX_KEY_HEADER, entry.key.encode()), ("_id", uuid.uuid4().bytes),
            ("_sender", b"mma-broker"), ("_format", fmt.encode())]


def find_key_on_topic(config: dict[str, Any], topic: str, key: str, since: datetime | None, *,
                      timeout_s: float = 30.0, header: str = OUTBOX_KEY_HEADER) -> dict | None:
    """Look for a record carrying ``header == key`` on every partition of ``topic``.

    Reads from the offset of ``since`` (minus :data:`RECOVER_MARGIN_S`; the start when
    None) up to the end each partition had when the search began, with
    ``isolation.level=read_committed``. A record produced before a crash and
    acknowledged is there; one whose produce never reached the broker is not.

    Parameters
    ----------
    config : dict
        librdkafka client settings (``bootstrap.servers``, security).
    since : datetime, optional
        When the send may have begun (the entry's ``claimed_at``), UTC.
    timeout_s : float
        Give up after this long, s.

    Returns
    -------
    dict or None
        ``{"topic", "partition", "offset", "timestamp_ms", "recovered": True}`` of the
        first matching record, or None when no partition holds it.

    Raises
    ------
    ChannelError
        (retryable) Kafka could not be read within ``timeout_s``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    cfg = {**config, "group.id": f"mma-broker-outbox-recover-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
           "isolation.level": "read_committed", "enable.partition.eof": False}
    consumer = Consumer(cfg)
    deadline = time.monotonic() + timeout_s
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        tmeta = md.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            if tmeta is not None and tmeta.error is not None and tmeta.error.code() != 3:  # 3: unknown topic
                raise ChannelError(f"cannot read topic {topic}: {tmeta.error.str()}")
            return None
        parts = sorted(tmeta.partitions)
        if not parts:
            return None
        ends: dict[int, int] = {}
        for p in parts:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            ends[p] = high
        if since is not None:
            ms = int((since - timedelta(seconds=RECOVER_MARGIN_S)).timestamp() * 1000)
            starts = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=timeout_s)
        else:
            starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        todo = {tp.partition: tp for tp in starts if tp.offset >= 0 and tp.offset < ends[tp.partition]
                or tp.offset == OFFSET_BEGINNING and ends[tp.partition] > 0}
        if not todo:
            return None
        consumer.assign(list(todo.values()))
        remaining = set(todo)
        want = key.encode()
        while remaining:
            if time.monotonic() > deadline:
                raise ChannelError(f"searching {topic} for outbox key {key}: timed out after {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    continue
                p = msg.partition()
                if any(h == header and v == want for h, v in (msg.headers() or [])):
                    return {"topic": msg.topic(), "partition": p, "offset": msg.offset(),
                            "timestamp_ms": msg.timestamp()[1], "recovered": True}
                if msg.offset() >= ends[p] - 1:
                    remaining.discard(p)
            # read_committed: the last offsets may be transaction markers never delivered
            for tp in consumer.position([TopicPartition(topic, p) for p in list(remaining)]):
                if tp.offset >= ends[tp.partition]:
                    remaining.discard(tp.partition)
        return None
    except KafkaException as exc:
        raise ChannelError(f"cannot read topic {topic}: {exc}") from None
    finally:
        consumer.close()


class KafkaChannel(BaseChannel):
    """A JSON message produced to one Kafka topic, exactly once through the outbox.

    The payload is serialized as compact UTF-8 JSON; the record key is
    ``key_of(payload)`` (default: none); the headers carry the outbox key
    (:data:`OUTBOX_KEY_HEADER`) and hop-client's headers. The producer is idempotent
    (``enable.idempotence``: librdkafka's own retries never duplicate a record) and
    ``send`` waits until Kafka acknowledged it (``acks=all``).

    Parameters
    ----------
    name : str
        Channel name (``gcn-notice``, ...).
    topic : str
    config : dict
        librdkafka settings (``bootstrap.servers``, security); secrets included, never logged.
    key_of : callable, optional
        payload → record key (bytes or str) or None.
    timeout_s : float
        Longest wait for the acknowledgement, s.
    ensure : callable, optional
        Called once before the first send, e.g. ``ensure_topics`` on our own Kafka: an
        idempotent producer writing into a partition not yet online can lose records
        with a successful delivery report (see :func:`broker.kafka.ensure_topics`).
    """

    def __init__(self, name: str, topic: str, config: dict[str, Any], *,
                 key_of: Callable[[dict], bytes | str | None] | None = None, timeout_s: float = 30.0,
                 ensure: Callable[[], None] | None = None) -> None:
        self.name = name
        self.topic = topic
        self.config = dict(config)
        self.key_of = key_of
        self.timeout_s = timeout_s
        self._ensure = ensure
        self._producer = None

    def producer(self):
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({**self.config, "enable.idempotence": True, "acks": "all",
                                       "message.timeout.ms": int(self.timeout_s * 1000)})
        return self._producer

    def encode(self, payload: dict) -> bytes:
        """The record's value (compact UTF-8 JSON)."""
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def send(self, entry: OutboxEntry) -> dict:
        """Produce ``entry.payload`` and wait for the acknowledgement.

        Raises
        ------
        ChannelError
            Kafka refused the record for what it is (too large, topic authorization:
            not retryable) or did not acknowledge it in time (retryable).
        """
        from confluent_kafka import KafkaError, KafkaException

        result: dict[str, Any] = {}

        def delivered(err, msg) -> None:
            result["err"], result["msg"] = err, msg

        if self._ensure is not None:
            try:
                self._ensure()
            except Exception as exc:  # noqa: BLE001 - Kafka away: tried again later
                raise ChannelError(f"{self.name}: topic {self.topic} not ready: {exc}") from None
            self._ensure = None
        key = self.key_of(entry.payload) if self.key_of else None
        try:
            self.producer().produce(self.topic, value=self.encode(entry.payload), key=key,
                                    headers=kafka_headers(entry), on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise ChannelError(f"{self.name}: produce to {self.topic} failed: {exc}") from None
        self.producer().flush(self.timeout_s)
        if "err" not in result:
            raise ChannelError(f"{self.name}: no acknowledgement from Kafka for {self.topic} in {self.timeout_s:.0f} s")
        err, msg = result["err"], result["msg"]
        if err is not None:
            permanent = err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                       KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG)
            raise ChannelError(f"{self.name}: Kafka refused the record for {self.topic}: {err.str()}",
                               retryable=not permanent)
        return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                "timestamp_ms": msg.timestamp()[1]}

    def recover(self, entry: OutboxEntry) -> dict | None:
        """Find the entry's key on the topic (:func:`find_key_on_topic`)."""
        return find_key_on_topic(self.config, self.topic, entry.key, entry.claimed_at, timeout_s=self.timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
