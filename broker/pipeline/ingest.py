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
   the whole value is kept in the raw store), and commit the consumed offsets in the
   same Kafka transaction (:mod:`broker.pipeline.runner`).

So no single message can stop the stage: whatever it holds, it ends in ``mma.dlq``
with its reason and the rest of its batch goes on. Each Event id appears once on
``mma.events``: a crash before the transaction commits redelivers the batch (the
archive already has its rows, written from these very messages, so they are published
again — the aborted transaction's records are never seen by ``read_committed``
readers); an alert that upstream sends twice finds its row written from the *first*
message (:attr:`broker.archive.store.WriteResult.owners`) and is not published again.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from broker.archive.rows import ArchiveItem, KafkaMeta
from broker.errors import DecodeError
from broker.event import Event
from broker.kafka import Backoff, Outgoing
from broker.limits import DEFAULT_LIMITS, DecodeLimits
from broker.pipeline.deadletter import reason_kind
from broker.pipeline.runner import BaseStage, Handled, StageRunner
from broker.serde import EVENT_CONTENT_TYPE, EventCodec, Provenance, schema_header
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
    """(source, mission, alert_type) → Events published."""
    dlq_reasons: Counter = field(default_factory=Counter)
    duplicates: int = 0
    """Events already archived from another message (not published again)."""


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


class IngestHandler(BaseStage):
    """The ingest stage's part of the loop: decode → Events → archive (see module docstring).

    Parameters
    ----------
    archive : ArchiveWriter
        Has ``write_batch(items)``; its result's ``owners`` (when given) says which
        message each archived row came from.
    events_topic : str
    provenance : Provenance
    decode : callable
        bytes → list of Event, raising DecodeError.
    codec : EventCodec
    limits : DecodeLimits
    name : str
    """

    write_refused = "archive refused the message"
    write_done = "archived"

    def __init__(self, archive: ArchiveWriter, *, events_topic: str, provenance: Provenance,
                 decode: Callable[[bytes], list[Event]], codec: EventCodec, limits: DecodeLimits,
                 name: str = "ingest") -> None:
        self.archive, self.events_topic, self.provenance = archive, events_topic, provenance
        self.decode, self.codec, self.limits, self.name = decode, codec, limits, name
        self.stats = IngestStats()
        self._schema_header = schema_header(codec)

    def handle(self, msg: Any) -> Handled:
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
                headers = [("content-type", EVENT_CONTENT_TYPE.encode()), ("mma.event.id", ev.id.encode()),
                           self._schema_header]
            except Exception as exc:  # noqa: BLE001 - whatever the Event holds, it is one message's problem
                raise DecodeError(f"event {one_line(ev.id, 200)} cannot be encoded for "
                                  f"{self.events_topic}: {type(exc).__name__}: {one_line(str(exc), 300)}") from None
            if len(value) > self.limits.max_event_bytes:
                raise DecodeError(f"event {one_line(ev.id, 200)} is {len(value):,} bytes encoded, over the limit "
                                  f"max_event_bytes = {self.limits.max_event_bytes:,}")
            items.append(ArchiveItem(event=ev, raw=data, kafka=meta))
            records.append(Outgoing(self.events_topic, key, value, headers))
        return Handled(msg, records, write=items or None, info=events)

    def write(self, batch: list[Handled]) -> None:
        """Archive the batch's Events in one transaction; drop the records of duplicates.

        An Event whose archived row came from another message (upstream sent the alert
        twice, or twice in this batch) is not published again.
        """
        result = self.archive.write_batch([it for h in batch for it in h.write])
        owners = getattr(result, "owners", None)
        if not owners:
            return
        for h in batch:
            meta = KafkaMeta(h.msg.topic(), h.msg.partition(), h.msg.offset())
            kept = []
            for ev, rec in zip(h.info, h.outputs):
                if ev.id in owners and owners[ev.id] != meta:
                    self.stats.duplicates += 1
                    log.info("%s: %s already archived from %s; not published again", self.name, ev.id, owners[ev.id])
                    continue
                kept.append(rec)
            if len(kept) != len(h.outputs):
                h.info = [ev for ev, rec in zip(h.info, h.outputs) if rec in kept]
                h.outputs = kept

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        st = self.stats
        st.batches += 1
        st.messages += len(batch) + len(dead)
        for h in batch:
            st.events += len(h.info)
            for ev in h.info:
                st.by_kind[(ev.source, ev.mission, ev.alert_type)] += 1
        st.dead_letters += len(dead)
        for _, reason in dead:
            st.dlq_reasons[reason_kind(reason)] += 1


class IngestStage:
    """One ingest worker: an :class:`IngestHandler` on a :class:`StageRunner`.

    Collaborators come in through the constructor.

    Parameters
    ----------
    consumer : confluent_kafka.Consumer
        Subscribed to the upstream topics, ``enable.auto.commit=False``.
    producer : confluent_kafka.Producer
        For ``mma.events`` and ``mma.dlq`` on our cluster (transactional with
        ``transactional=True``).
    archive : ArchiveWriter
        Has ``write_batch(items)`` (and ``store_raw`` for dead letters' whole values).
    events_topic, dlq_topic : str
    provenance : Provenance
    decode : callable
        bytes → list of Event, raising DecodeError (default :func:`broker.sources.decode`).
    batch_size : int
    poll_timeout_s : float
        Longest wait for a batch to fill; a batch is whatever arrived by then.
    fill_s : float, optional
        Once a message arrived, how long to wait for more (StageRunner ``fill_s``; 0: at
        once). None: up to ``poll_timeout_s``.
    admin : confluent_kafka.admin.AdminClient, optional
        For :meth:`caught_up` (end offsets in one request, on its own connection).
    subscription : list of str, optional
        The consumer's topics/patterns, for :meth:`caught_up`.
    limits : DecodeLimits
        Bounds per message (size, nesting, decompression, CPU, Event and DLQ record
        sizes).
    stop : threading.Event, optional
        Lets a wait for Kafka end on SIGTERM (see :meth:`run`, which sets it).
    backoff : Backoff, optional
        How waits for Kafka and for the raw store are paced (tests pass a fast one).
    transactional : bool
        Exactly once on ``mma.events`` (:mod:`broker.pipeline.runner`).
    producer_factory : callable, optional
        A new transactional producer after a fatal producer error.
    metrics : broker.metrics.StageMetrics, optional
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
        fill_s: float | None = None,
        name: str = "ingest",
        admin: Any = None,
        subscription: Sequence[str] | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        stop: threading.Event | None = None,
        backoff: Backoff | None = None,
        transactional: bool = False,
        producer_factory: Callable[[], Any] | None = None,
        metrics: Any = None,
        offsets_in_transaction: bool = True,
    ) -> None:
        if decode is None:
            from broker.sources import decode as decode_default

            decode = functools.partial(decode_default, limits=limits)
        self.handler = IngestHandler(archive, events_topic=events_topic, provenance=provenance, decode=decode,
                                     codec=codec or EventCodec(), limits=limits, name=name)
        self.runner = StageRunner(
            self.handler, consumer, producer, dlq_topic=dlq_topic, batch_size=batch_size,
            poll_timeout_s=poll_timeout_s, fill_s=fill_s, limits=limits,
            store_raw=getattr(archive, "store_raw", None), transactional=transactional, producer_factory=producer_factory, admin=admin,
            subscription=subscription, metrics=metrics, backoff=backoff,
            offsets_in_transaction=offsets_in_transaction)
        self.runner.stop = stop
        self.name = name
        self.events_topic, self.dlq_topic = events_topic, dlq_topic
        self.consumer = consumer

    @property
    def stats(self) -> IngestStats:
        return self.handler.stats

    @property
    def stop(self) -> threading.Event | None:
        """Set: a wait for Kafka ends (:class:`~broker.kafka.StageStopped`)."""
        return self.runner.stop

    @stop.setter
    def stop(self, value: threading.Event | None) -> None:
        self.runner.stop = value

    @property
    def archive(self) -> ArchiveWriter:
        return self.handler.archive

    @archive.setter
    def archive(self, value: ArchiveWriter) -> None:
        self.handler.archive = value
        self.runner.store_raw = getattr(value, "store_raw", None)

    @property
    def producer(self) -> Any:
        return self.runner.producer

    def process(self, msgs: Sequence[confluent_kafka.Message]) -> None:
        """Decode, archive, publish and commit one batch (:meth:`StageRunner.process`)."""
        self.runner.process(msgs)

    def caught_up(self) -> bool:
        """True when every input partition has been consumed up to its high watermark."""
        return self.runner.caught_up()

    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            on_batch: Callable[[IngestStats], None] | None = None) -> IngestStats:
        """Consume until ``stop`` is set (SIGTERM), or until caught up and idle
        (:meth:`StageRunner.run`); returns the statistics."""
        self.runner.run(stop, until_caught_up=until_caught_up, idle_s=idle_s,
                        on_batch=(lambda _: on_batch(self.stats)) if on_batch else None)
        return self.stats


def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The ingest stage's loops: one per configured upstream (``mma_broker.stages`` entry ``ingest``).

    Each reads its upstream (:mod:`broker.upstreams`), archives, and writes
    ``mma.events`` and ``mma.dlq`` with its own transactional producer. ``mma-broker run
    --upstream NAME`` (``app.run_upstreams``) keeps only the named upstreams' loops.
    """
    from broker.app import open_archive, provenance
    from broker.kafka import claim_instance, ensure_topics, stage_producer
    from broker.stages import StageSpec
    from broker.upstreams import make_admin, make_upstream_consumer, upstream_topics

    s = app.settings
    from broker.sources import lsst

    lsst.configure(getattr(s, "lsst", None))  # Rubin schemas by id: [lsst] schema_registry_url, else bundled
    archive = open_archive(s)
    events, dlq = s.topic(s.events_topic), s.topic(s.dlq_topic)
    ensure_topics(s, [events, dlq])
    specs, workers, slots = [], [], []
    only = getattr(app, "run_upstreams", None)
    for up in [u for u in s.upstreams if only is None or u.name in only]:
        name = f"ingest.{up.name}"
        slot = claim_instance(s, name)
        slots.append(slot)
        stage = IngestStage(
            make_upstream_consumer(s, up), stage_producer(s, name, slot), archive,
            events_topic=events, dlq_topic=dlq, provenance=provenance(s, "ingest"),
            batch_size=up.batch_size or s.ingest.batch_size,
            poll_timeout_s=up.poll_timeout_s or s.ingest.poll_timeout_s, fill_s=up.fill_s, name=name,
            admin=make_admin(s, up) if until_caught_up else None, subscription=upstream_topics(s, up),
            limits=s.limits, transactional=s.kafka.transactions,
            producer_factory=functools.partial(stage_producer, s, name, slot), metrics=app.metrics.stage(name),
            offsets_in_transaction=same_cluster(s, up))
        specs.append(StageSpec(name=name, runner=stage.runner, inputs=upstream_topics(s, up), outputs=[events]))
        workers.append(stage)

    def close() -> None:
        archive.close()
        for sl in slots:
            sl.release()

    specs[-1].close = close
    specs[-1].summary = lambda: summary_tables([w.stats for w in workers], archive)
    return specs


def same_cluster(settings: Any, up: Any) -> bool:
    """True when upstream ``up`` is read from the broker's own Kafka (``kind = "kafka"``
    without another ``bootstrap_servers``, e.g. what ``mma-broker replay`` fills): only
    then can its offsets go into the output transaction."""
    return up.kind == "kafka" and up.bootstrap_servers in (None, settings.kafka.bootstrap_servers)


def summary_tables(stats: Sequence[IngestStats], archive: Any) -> list[Any]:
    """Rich tables for the end of ``mma-broker run``: this run by kind, its dead
    letters by kind of reason, and the archive's totals."""
    from rich.table import Table
    from rich.text import Text

    from broker.text import printable

    by_kind: Counter = Counter()
    dlq: Counter = Counter()
    msgs = evs = dead = dups = 0
    for st in stats:
        by_kind.update(st.by_kind)
        dlq.update(st.dlq_reasons)
        msgs, evs, dead, dups = msgs + st.messages, evs + st.events, dead + st.dead_letters, dups + st.duplicates
    dup = f", {dups} duplicate(s) of archived events not published again" if dups else ""
    t = Table(title=f"this run: {msgs} message(s) → {evs} event(s) published, {dead} dead letter(s){dup}")
    for c in ("source", "mission", "alert type", "events"):
        t.add_column(c, justify="right" if c == "events" else "left")
    for (src, mission, kind), n in sorted(by_kind.items()):
        t.add_row(*(Text(printable(c)) for c in (src, mission, kind, str(n))))
    out: list[Any] = [t]
    if dlq:
        d = Table(title="dead letters (mma.dlq) by kind of reason (header mma.dlq.kind)")
        d.add_column("kind")
        d.add_column("messages", justify="right")
        for reason, n in dlq.most_common():
            d.add_row(reason, str(n))
        out.append(d)
    a = Table(title=f"archive: {archive.total()} event(s) in total")
    for c in ("source", "mission", "alert type", "rows"):
        a.add_column(c, justify="right" if c == "rows" else "left")
    for src, mission, kind, n in archive.counts():
        a.add_row(*(Text(printable(c)) for c in (src, mission, kind, str(n))))
    out.append(a)
    return out
