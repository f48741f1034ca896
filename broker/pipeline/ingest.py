"""Ingest stage: upstream bytes → decode/normalize → archive → ``mma.events``.

Per batch of up to ``batch_size`` messages:

1. decode every message (:func:`broker.sources.decode`); a message that does not
   decode goes to ``mma.dlq`` with its original bytes, key and headers plus the reason;
2. write all Events and their raw bytes to the archive in one transaction
   (idempotent upsert by Event.id; the archive retries while PostgreSQL is away);
3. publish every decoded Event to ``mma.events`` (Avro, key = upstream_id so all
   revisions of one superevent/trigger stay ordered in one partition) and the dead
   letters, and wait for Kafka's acknowledgement;
4. only then commit the consumed offsets.

A crash anywhere before 4 redelivers the batch: the archive ignores rows it already
has, and ``mma.events`` may carry a duplicate, which readers drop by Event.id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from broker.archive.rows import ArchiveItem, KafkaMeta
from broker.errors import DecodeError
from broker.event import Event
from broker.kafka import DeliveryTracker, caught_up, commit_offsets, flush_or_raise
from broker.serde import EVENT_CONTENT_TYPE, EventCodec, Provenance

log = logging.getLogger(__name__)


class ArchiveWriter(Protocol):
    def write_batch(self, items: Sequence[ArchiveItem]) -> Any: ...


@dataclass
class IngestStats:
    """Running totals of one ingest worker (for the summary table and metrics)."""

    messages: int = 0
    events: int = 0
    dead_letters: int = 0
    batches: int = 0
    by_kind: Counter = field(default_factory=Counter)
    """(source, mission, alert_type) → Events decoded."""
    dlq_reasons: Counter = field(default_factory=Counter)


def _dlq_headers(msg: confluent_kafka.Message, reason: str, stage: str) -> list[tuple[str, bytes]]:
    headers = list(msg.headers() or [])
    ts_type, ts = msg.timestamp()
    headers += [
        ("mma.dlq.reason", reason.encode()),
        ("mma.dlq.stage", stage.encode()),
        ("mma.dlq.topic", (msg.topic() or "").encode()),
        ("mma.dlq.partition", str(msg.partition()).encode()),
        ("mma.dlq.offset", str(msg.offset()).encode()),
        ("mma.dlq.timestamp_ms", str(ts).encode()),
    ]
    return headers


def decode_message(data: bytes | None, decode: Callable[[bytes], list[Event]]) -> list[Event]:
    """Decode one message value; anything unexpected becomes a DecodeError (never lost)."""
    if data is None:
        raise DecodeError("message has no value (tombstone)")
    try:
        return decode(data)
    except DecodeError:
        raise
    except Exception as exc:  # a decoder bug must not stop the stream
        raise DecodeError(f"decoder failed: {type(exc).__name__}: {exc}") from exc


class IngestStage:
    """One ingest worker. Collaborators come in through the constructor.

    Parameters
    ----------
    consumer : confluent_kafka.Consumer
        Subscribed to the upstream topics, ``enable.auto.commit=False``.
    producer : confluent_kafka.Producer
        For ``mma.events`` and ``mma.dlq`` on our cluster.
    archive : ArchiveWriter
        Has ``write_batch(items)``.
    events_topic, dlq_topic : str
    provenance : Provenance
    decode : callable
        bytes → list of Event, raising DecodeError (default :func:`broker.sources.decode`).
    batch_size : int
    poll_timeout_s : float
        Longest wait for a batch to fill; a batch is whatever arrived by then.
    admin : confluent_kafka.admin.AdminClient, optional
        For :meth:`caught_up` (end offsets in one request, on its own connection, so
        it does not queue behind the consumer's long-poll fetches).
    subscription : list of str, optional
        The consumer's topics/patterns: with ``admin``, lets :meth:`caught_up` see
        that a subscription matching no topic has nothing to wait for.
    """

    def __init__(
        self,
        consumer: confluent_kafka.Consumer,
        producer: confluent_kafka.Producer,
        archive: ArchiveWriter,
        *,
        events_topic: str,
        dlq_topic: str,
        provenance: Provenance,
        decode: Callable[[bytes], list[Event]] | None = None,
        codec: EventCodec | None = None,
        batch_size: int = 500,
        poll_timeout_s: float = 0.5,
        name: str = "ingest",
        admin: Any = None,
        subscription: Sequence[str] | None = None,
    ) -> None:
        if decode is None:
            from broker.sources import decode as decode_default

            decode = decode_default
        self.consumer = consumer
        self.producer = producer
        self.archive = archive
        self.events_topic = events_topic
        self.dlq_topic = dlq_topic
        self.provenance = provenance
        self.decode = decode
        self.codec = codec or EventCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.name = name
        self.admin = admin
        self.subscription = list(subscription) if subscription is not None else None
        self.stats = IngestStats()
        self._tracker = DeliveryTracker()

    def process(self, msgs: Sequence[confluent_kafka.Message]) -> None:
        """Decode, archive, publish and commit one batch (see module docstring)."""
        items: list[ArchiveItem] = []
        dead: list[tuple[confluent_kafka.Message, str]] = []
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error: %s", self.name, err)
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            self.stats.messages += 1
            data = msg.value()
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            try:
                events = decode_message(data, self.decode)
            except DecodeError as exc:
                reason = str(exc)
                log.warning("%s: dead letter %s: %s", self.name, where, reason)
                dead.append((msg, reason))
                continue
            meta = KafkaMeta(msg.topic(), msg.partition(), msg.offset())
            for ev in events:
                items.append(ArchiveItem(event=ev, raw=data, kafka=meta))
        if not offsets:
            return
        if items:
            self.archive.write_batch(items)
        for it in items:
            ev = it.event
            self.producer.produce(
                self.events_topic,
                key=ev.upstream_id.encode(),
                value=self.codec.encode(ev, self.provenance),
                headers=[("content-type", EVENT_CONTENT_TYPE.encode()), ("mma.event.id", ev.id.encode())],
                on_delivery=self._tracker.callback,
            )
            self.producer.poll(0)
        for msg, reason in dead:
            self.producer.produce(
                self.dlq_topic,
                key=msg.key(),
                value=msg.value(),
                headers=_dlq_headers(msg, reason, self.name),
                on_delivery=self._tracker.callback,
            )
        flush_or_raise(self.producer, self._tracker)
        commit_offsets(self.consumer, offsets, self.name)
        self.stats.batches += 1
        self.stats.events += len(items)
        self.stats.dead_letters += len(dead)
        for it in items:
            self.stats.by_kind[(it.event.source, it.event.mission, it.event.alert_type)] += 1
        for _, reason in dead:
            self.stats.dlq_reasons[reason.split(":")[0]] += 1

    def caught_up(self) -> bool:
        """True when every assigned partition has been consumed up to its high watermark."""
        return caught_up(self.consumer, self.admin, self.subscription)

    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            on_batch: Callable[[IngestStats], None] | None = None) -> IngestStats:
        """Consume until ``stop`` is set (SIGTERM), or until caught up and idle.

        Parameters
        ----------
        stop : threading.Event
            Set it to stop after the current batch (its offsets are committed).
        until_caught_up : bool
            Also stop once all assigned partitions are consumed and nothing arrived
            for ``idle_s`` seconds (the README demo; tests).
        """
        last_msg = time.monotonic()
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout_s)
                if msgs:
                    self.process(msgs)
                    del msgs  # not alive while the next consume() fills (~37 MB of ZTF)
                    last_msg = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                elif until_caught_up and time.monotonic() - last_msg >= idle_s and self.caught_up():
                    break
        finally:
            self.consumer.close()
        return self.stats
