"""Ingest stage: upstream bytes → decode/normalize → archive → ``mma.events``.

Per batch of up to ``batch_size`` messages:

1. decode every message (:func:`broker.sources.decode`, within the configured
   :class:`~broker.limits.DecodeLimits`) and encode its Events for ``mma.events``; a
   message that does not decode, holds an out-of-range value, or whose Event would be
   larger than ``max_event_bytes`` is a dead letter;
2. write all Events and their raw bytes to the archive in one transaction
   (idempotent upsert by Event.id; the archive retries while PostgreSQL is away). If
   the write fails for any other reason, the batch is bisected until the message(s)
   responsible are found: those become dead letters, all others are archived;
3. publish every archived Event to ``mma.events`` (Avro, key = upstream_id so all
   revisions of one superevent/trigger stay ordered in one partition) and the dead
   letters to ``mma.dlq`` (:mod:`broker.pipeline.deadletter`: reason, origin, sha256;
   the whole value is kept in the raw store), and wait for Kafka's acknowledgement,
   however long Kafka is away;
4. only then commit the consumed offsets.

So no single message can stop the stage: whatever it holds, it ends in ``mma.dlq``
with its reason and the rest of its batch goes on. A crash anywhere before 4
redelivers the batch: the archive ignores rows it already has, and ``mma.events`` may
carry a duplicate, which readers drop by Event.id.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from broker.archive.retry import is_infrastructure_error
from broker.archive.rows import ArchiveItem, KafkaMeta
from broker.errors import DecodeError
from broker.event import Event
from broker.kafka import Backoff, Outgoing, StageStopped, caught_up, commit_offsets, publish
from broker.limits import DEFAULT_LIMITS, DecodeLimits
from broker.pipeline.deadletter import dead_letter, error_text, reason_kind, triage_refused
from broker.serde import EVENT_CONTENT_TYPE, EventCodec, Provenance
from broker.text import one_line

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


def decode_message(data: bytes | None, decode: Callable[[bytes], list[Event]]) -> list[Event]:
    """Decode one message value; anything unexpected becomes a DecodeError (never lost)."""
    if data is None:
        raise DecodeError("message has no value (tombstone)")
    try:
        return decode(data)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("decoder failed: input nested too deeply (RecursionError)") from None
    except Exception as exc:  # a decoder bug must not stop the stream
        raise DecodeError(f"decoder failed: {type(exc).__name__}: {one_line(str(exc), 300)}") from exc


@dataclass
class _Decoded:
    """One consumed message that decoded: its Events, their encoded records, its items."""

    msg: Any
    items: list[ArchiveItem]
    records: list[Outgoing]


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
    limits : DecodeLimits
        Bounds per message (size, nesting, decompression, CPU, Event and DLQ record
        sizes).
    stop : threading.Event, optional
        Lets a wait for Kafka end on SIGTERM (see :meth:`run`, which sets it).
    backoff : Backoff, optional
        How waits for Kafka and for the raw store are paced (tests pass a fast one).
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
        limits: DecodeLimits = DEFAULT_LIMITS,
        stop: threading.Event | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if decode is None:
            from broker.sources import decode as decode_default

            decode = functools.partial(decode_default, limits=limits)
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
        self.limits = limits
        self.stop = stop
        self.backoff = backoff or Backoff(name)
        self.stats = IngestStats()

    def process(self, msgs: Sequence[confluent_kafka.Message]) -> None:
        """Decode, archive, publish and commit one batch (see module docstring).

        Raises
        ------
        StageStopped
            When ``stop`` is set while Kafka is away (nothing committed).
        OSError, sqlalchemy.exc.OperationalError
            When the archive's storage is unavailable (:func:`is_infrastructure_error`);
            :meth:`run` waits and processes the batch again.
        """
        good: list[_Decoded] = []
        dead: list[tuple[Any, str]] = []
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error: %s", self.name, err)
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            self.stats.messages += 1
            try:
                good.append(self._prepare(msg))
            except DecodeError as exc:
                dead.append((msg, str(exc)))
        if not offsets:
            return
        good = self._archive(good, dead)
        records = [rec for d in good for rec in d.records]
        for msg, reason in dead:
            log.warning("%s: dead letter %s[%s]@%s: %s", self.name, msg.topic(), msg.partition(), msg.offset(),
                        one_line(reason, 300))
        records += self._dead_letters(dead)
        refused = publish(self.producer, records, name=self.name, stop=self.stop, backoff=self.backoff)
        if refused:
            self._handle_refused(refused, dead)
        commit_offsets(self.consumer, offsets, self.name, stop=self.stop, backoff=self.backoff)
        self.stats.batches += 1
        for d in good:
            self.stats.events += len(d.items)
            for it in d.items:
                self.stats.by_kind[(it.event.source, it.event.mission, it.event.alert_type)] += 1
        self.stats.dead_letters += len(dead)
        for _, reason in dead:
            self.stats.dlq_reasons[reason_kind(reason)] += 1

    def _prepare(self, msg: Any) -> _Decoded:
        """Decode one message and encode its Events for ``mma.events``.

        Raises
        ------
        DecodeError
            When it does not decode, or an Event cannot be encoded or is larger than
            ``max_event_bytes``.
        """
        data = msg.value()
        events = decode_message(data, self.decode)
        meta = KafkaMeta(msg.topic(), msg.partition(), msg.offset())
        items, records = [], []
        for ev in events:
            try:
                value = self.codec.encode(ev, self.provenance)
                key = ev.upstream_id.encode()
                headers = [("content-type", EVENT_CONTENT_TYPE.encode()), ("mma.event.id", ev.id.encode())]
            except Exception as exc:  # noqa: BLE001 - whatever the Event holds, it is one message's problem
                raise DecodeError(f"event {one_line(ev.id, 200)} cannot be encoded for "
                                  f"{self.events_topic}: {type(exc).__name__}: {one_line(str(exc), 300)}") from None
            if len(value) > self.limits.max_event_bytes:
                raise DecodeError(f"event {one_line(ev.id, 200)} is {len(value):,} bytes encoded, over the limit "
                                  f"max_event_bytes = {self.limits.max_event_bytes:,}")
            items.append(ArchiveItem(event=ev, raw=data, kafka=meta))
            records.append(Outgoing(self.events_topic, key, value, headers, tag=msg))
        return _Decoded(msg, items, records)

    def _archive(self, good: list[_Decoded], dead: list[tuple[Any, str]]) -> list[_Decoded]:
        """Archive the Events of ``good``; return the messages archived.

        A write that fails for a reason other than the storage being away is bisected
        by message; the messages that fail alone are appended to ``dead``.
        """
        with_events = [d for d in good if d.items]
        if not with_events:
            return good
        try:
            self.archive.write_batch([it for d in with_events for it in d.items])
            return good
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_infrastructure_error(exc):
                raise
            if len(with_events) == 1:
                d = with_events[0]
                dead.append((d.msg, f"archive refused the message: {one_line(error_text(exc), 300)}"))
                return [g for g in good if g is not d]
            log.warning("%s: archive write of %d messages failed (%s: %s); isolating the message(s) responsible",
                        self.name, len(with_events), type(exc).__name__, one_line(str(exc), 200))
        mid = len(with_events) // 2
        kept = self._archive(with_events[:mid], dead) + self._archive(with_events[mid:], dead)
        return kept + [d for d in good if not d.items]

    def _raw_refs(self, dead: list[tuple[Any, str]]) -> list[Any]:
        """Store the whole values of the dead letters in the raw store (when there is one)."""
        store = getattr(self.archive, "store_raw", None)
        blobs = [msg.value() for msg, _ in dead]
        if store is None or not any(b is not None for b in blobs):
            return [None] * len(dead)
        stored = store([b for b in blobs if b is not None])
        refs = iter(stored)
        return [next(refs) if b is not None else None for b in blobs]

    def _dead_letters(self, dead: list[tuple[Any, str]]) -> list[Outgoing]:
        if not dead:
            return []
        refs = self._raw_refs(dead)
        out = []
        for (msg, reason), ref in zip(dead, refs):
            letter = dead_letter(msg, reason, self.name, max_bytes=self.limits.max_dlq_bytes, raw_ref=ref)
            out.append(Outgoing(self.dlq_topic, tag=("dlq", letter), **letter.kwargs()))
        return out

    def _handle_refused(self, refused: list[tuple[Outgoing, str]], dead: list[tuple[Any, str]]) -> None:
        """Records Kafka will never take: an Event → its message to the DLQ; a dead letter → minimal."""
        while refused:
            resend, origins = triage_refused(refused, self.dlq_topic, self.name)
            new_dead = [(msg, f"archived, but {reason}") for msg, reason in origins]
            for msg, reason in new_dead:
                log.warning("%s: dead letter %s[%s]@%s: %s", self.name, msg.topic(), msg.partition(), msg.offset(),
                            reason)
            dead.extend(new_dead)
            refused = publish(self.producer, resend + self._dead_letters(new_dead), name=self.name, stop=self.stop,
                              backoff=self.backoff)

    def caught_up(self) -> bool:
        """True when every assigned partition has been consumed up to its high watermark."""
        return caught_up(self.consumer, self.admin, self.subscription)

    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            on_batch: Callable[[IngestStats], None] | None = None) -> IngestStats:
        """Consume until ``stop`` is set (SIGTERM), or until caught up and idle.

        While Kafka or the archive's storage is away, the current batch waits (capped
        exponential backoff, a warning per attempt) and is processed again when they
        return; the stage does not exit.

        Parameters
        ----------
        stop : threading.Event
            Set it to stop after the current batch (its offsets are committed).
        until_caught_up : bool
            Also stop once all assigned partitions are consumed and nothing arrived
            for ``idle_s`` seconds (the README demo; tests).
        """
        self.stop = stop
        last_msg = time.monotonic()
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout_s)
                if msgs:
                    self._process_until_done(msgs, stop)
                    del msgs  # not alive while the next consume() fills (~37 MB of ZTF)
                    last_msg = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                elif until_caught_up and time.monotonic() - last_msg >= idle_s and self.caught_up():
                    break
        except StageStopped as exc:
            log.info("%s", exc)
        finally:
            self.consumer.close()
        return self.stats

    def _process_until_done(self, msgs: Sequence[Any], stop: threading.Event) -> None:
        """:meth:`process`, retried while the archive's storage is unavailable."""
        while True:
            try:
                self.process(msgs)
                self.backoff.reset()
                return
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                self.backoff.wait(f"archive storage unavailable ({type(exc).__name__}: {one_line(str(exc), 200)}); "
                                  f"the batch will be processed again", stop)
