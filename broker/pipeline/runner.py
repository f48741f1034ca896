"""The stage runner: one consume → handle → durable write → produce → commit loop for every stage.

A stage (ingest, the follow-up trigger and worker; enrichment, filters and publishing
next) only says what to do with one message; :class:`StageRunner` owns the rest:

1. **consume** a batch (``batch_size`` messages or whatever arrived within
   ``poll_timeout_s``);
2. **handle** each message (:meth:`Stage.handle` → a :class:`Handled`: the records
   to produce and what to write durably). Whatever a message holds, a failure is
   that message's: it becomes a dead letter (a :class:`~broker.errors.DecodeError`
   with its own reason, any other exception as ``<stage> failed: <Type>: <message>``)
   and the batch goes on. Only an *infrastructure* error (database or disk away,
   :func:`~broker.archive.retry.is_infrastructure_error`) stops the batch: it is
   handled again once storage is back, never dead-lettered;
3. **durable write** of the whole batch in one call (:meth:`Stage.write`, e.g. one
   archive transaction). A write that fails for a data reason is bisected until the
   message(s) responsible are found; they become dead letters, the others are
   written. The stage may drop the outputs of a message whose result was already
   written from *another* input message (an alert upstream sent twice): that is how
   a topic stays free of duplicates when upstream is not;
4. **produce** the outputs and the dead letters (``mma.dlq``, one set of headers:
   :mod:`broker.pipeline.deadletter`) and **commit** the consumed offsets — with
   ``transactional=True`` (the default of every stage the CLI builds) in one Kafka
   transaction (KIP-98/KIP-447: ``send_offsets_to_transaction`` with the consumer's
   group metadata), so readers with ``isolation.level=read_committed`` (librdkafka's
   and hop-client's default) see each output exactly once even after ``kill -9`` at
   any moment; otherwise the offsets are committed after Kafka acknowledged every
   record (at least once);
5. :meth:`Stage.committed` (statistics, "published" marks).

Every record produced carries hop-client's headers (``_id``: 16 random bytes,
``_sender``, ``_format``: ``json`` for JSON records, ``blob`` otherwise), so
``hop subscribe`` reads our topics.

While Kafka is away (produce, flush, transaction, commit) the batch waits and is sent
again (capped exponential backoff, a warning per attempt); a record Kafka refuses for
what it is (too large) dead-letters the message it came from and the transaction is
made again without that message's outputs. SIGTERM (``stop``) ends the loop after the
current batch; during a wait for Kafka it aborts the open transaction and nothing is
committed, so the batch is consumed again by whoever owns the partition next.

Slow handlers
-------------
With ``handler_threads > 0`` the messages of a batch are handled on a pool of
``handler_threads`` threads while the poll thread keeps the consumer alive: it pauses
every assigned partition and goes on calling ``poll()`` (which serves heartbeats,
rebalances and ``max.poll.interval.ms``) until the handlers are done, then resumes
them; the durable write, the transaction and the commit follow on the poll thread.
Messages with different keys are handled in parallel, messages with the same key
(one superevent or trigger) in their order. So a follow-up
that waits minutes for MMODA neither gets the worker thrown out of its group nor holds
up the other events of its batch. A message a rebalance hands in while the partitions
are paused is kept and handled in the next batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from broker.archive.retry import is_infrastructure_error
from broker.errors import BrokerError, DecodeError
from broker.kafka import (
    PERMANENT_DELIVERY_ERRORS,
    Backoff,
    Outgoing,
    StageStopped,
    caught_up,
    commit_offsets,
    publish,
)
from broker.limits import DEFAULT_LIMITS, DecodeLimits
from broker.pipeline.deadletter import dead_letter, error_text, minimal, reason_kind, triage_refused
from broker.text import one_line

log = logging.getLogger(__name__)

NOTICE_PATH_FILL_S = 0.02
"""``fill_s`` of the stages a GCN notice passes on its way to a HERMES message that also
carry the ZTF stream (enrich, filters): at most 20 ms of batch wait per hop when the
input was idle, and no batches of one alert at a time while ZTF alerts trickle in
(issue 11's target is p50 ≤ 100 ms notice in → HERMES out; measured with
``benchmarks/bench_latency.py``, docs/publishing-latency.md)."""

IDLE_INPUT_FILL_S = 0.0
"""``fill_s`` of the stages whose inputs are idle most of the time (the follow-up
worker: requests; reports: results, coincidences, optical candidates): a message is
handled as soon as it arrives, with whatever arrived with it."""

HOP_SENDER = b"mma-broker"
"""``_sender`` header of every record we produce (hop-client puts the user name there)."""


@dataclass
class Handled:
    """What a stage made of one consumed message.

    Attributes
    ----------
    msg : confluent_kafka.Message
    outputs : list of Outgoing
        Records to produce; their ``tag`` is set to ``msg`` by the runner. A stage's
        :meth:`Stage.write` may empty it (a duplicate of something already published).
    write : object
        What :meth:`Stage.write` takes for this message (None: nothing to write).
    info : object
        The stage's own note on the message (e.g. the Events, for statistics).
    """

    msg: Any
    outputs: list[Outgoing] = field(default_factory=list)
    write: Any = None
    info: Any = None


class Stage(Protocol):
    """What a stage provides to :class:`StageRunner` (see :class:`BaseStage`)."""

    name: str

    def begin_batch(self, msgs: Sequence[Any]) -> None:
        """The batch's messages, before any is handled (e.g. to fetch what they need in one query)."""

    def handle(self, msg: Any) -> Handled:
        """One message → :class:`Handled`. Raise :class:`DecodeError` (reason) to dead-letter it."""

    def write(self, batch: list[Handled]) -> None:
        """Write the batch durably (idempotently: a batch may be written again)."""

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        """The batch's outputs and offsets are committed."""


class BaseStage:
    """Defaults for :class:`Stage`: nothing to write, nothing to do after the commit."""

    name = "stage"
    write_refused = "durable write refused the message"
    """Prefix of the reason when :meth:`write` fails for one message alone."""
    write_done = "written"
    """How a dead letter's reason says the message was written before Kafka refused
    its output (``"<write_done>, but Kafka refused ..."``)."""

    def begin_batch(self, msgs: Sequence[Any]) -> None:
        """Nothing to prepare."""

    def handle(self, msg: Any) -> Handled:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, batch: list[Handled]) -> None:
        """No durable state."""

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        """Nothing to do."""


@dataclass
class RunnerStats:
    """Running totals of one runner (summary table and metrics)."""

    messages: int = 0
    outputs: int = 0
    dead_letters: int = 0
    batches: int = 0
    dlq_reasons: Counter = field(default_factory=Counter)
    skipped: int = 0
    """Records of other lanes' sources, skipped undecoded (``accept``)."""


class _NoMetrics:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def hop_format(headers: Sequence[tuple[str, Any]]) -> bytes:
    """hop-client's ``_format`` for a record with these headers: ``json`` for a JSON
    content type (``application/json``, ``...+json``), else ``blob``."""
    for k, v in headers:
        if k == "content-type" and v:
            ct = v.decode() if isinstance(v, bytes) else str(v)
            base = ct.split(";", 1)[0].strip().lower()
            if base == "application/json" or base.endswith("+json"):
                return b"json"
    return b"blob"


def hop_ids(n: int) -> list[bytes]:
    """``n`` random version-4 UUIDs as 16 bytes each, what ``uuid.uuid4().bytes`` gives,
    from one ``os.urandom`` call (a stage's batch: ~1 µs per record less than
    ``uuid4()``, whose constructor goes through an int)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    return [bytes(raw[i:i + 16]) for i in range(0, 16 * n, 16)]


_HOP_FORMATS: dict[Any, bytes] = {}
"""``hop_format`` of a record whose only content-type header is the key (a few values)."""


def with_hop_headers(headers: list[tuple[str, Any]] | None, _id: bytes | None = None) -> list[tuple[str, Any]]:
    """``headers`` plus hop-client's ``_id``, ``_sender`` and ``_format`` (kept if present).

    ``_id``: the ``_id`` to add (one of :func:`hop_ids`); default a new ``uuid4``.
    """
    headers = list(headers or ())
    ct = None
    for k, v in headers:
        if k in _HOP_KEYS or (k == "content-type" and ct is not None):
            break  # a hop header already there, or two content types: the general path
        if k == "content-type":
            ct = v
    else:
        fmt = _HOP_FORMATS.get(ct) if isinstance(ct, (bytes, str, type(None))) else None
        if fmt is None:
            fmt = hop_format(headers)
            if isinstance(ct, (bytes, str, type(None))) and len(_HOP_FORMATS) < 64:
                _HOP_FORMATS[ct] = fmt
        headers += (("_id", _id or uuid.uuid4().bytes), ("_sender", HOP_SENDER), ("_format", fmt))
        return headers
    have = {k for k, _ in headers}
    if "_id" not in have:
        headers.append(("_id", _id or uuid.uuid4().bytes))
    if "_sender" not in have:
        headers.append(("_sender", HOP_SENDER))
    if "_format" not in have:
        headers.append(("_format", hop_format(headers)))
    return headers


_HOP_KEYS = frozenset({"_id", "_sender", "_format"})


SEND_OFFSETS_GRACE_S = 10.0
"""How long past its own timeout ``send_offsets_to_transaction`` may run before its
producer is given up (:meth:`StageRunner._send_offsets`), s."""


MAX_STUCK_PRODUCERS = 3
"""How many given-up producers may still be held by their stuck librdkafka call (one
thread and one producer each) before the stage stops, so that the process is restarted
(systemd, Kubernetes) and frees them (:meth:`StageRunner._send_offsets`)."""


class ProducerStuck(BrokerError):
    """A transactional call of librdkafka overran its timeout: the producer is replaced."""


# errors of send_offsets_to_transaction/commit that mean "this consumer lost the
# partitions in a rebalance": the batch is dropped, the new owner consumes it again
_FENCED = {
    confluent_kafka.KafkaError.ILLEGAL_GENERATION,
    confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
    confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS,
    confluent_kafka.KafkaError.FENCED_INSTANCE_ID,
    confluent_kafka.KafkaError._ASSIGNMENT_LOST,
}


class _PartitionsLost(Exception):
    """The transaction was fenced because the partitions moved to another consumer."""


class StageRunner:
    """Run one :class:`Stage` on a Kafka consumer (see the module docstring).

    Parameters
    ----------
    stage : Stage
    consumer : confluent_kafka.Consumer
        Subscribed to the stage's input topics, ``enable.auto.commit=False``.
    producer : confluent_kafka.Producer
        With ``transactional=True``, a producer with a ``transactional.id`` unique to
        this runner (:func:`broker.kafka.make_producer`).
    dlq_topic : str
    batch_size : int
        Messages per batch (and per durable write and transaction).
    poll_timeout_s : float
        Longest wait for a batch to fill, s.
    fill_s : float, optional
        Latency bound of a stage whose input is usually idle: while nothing has
        arrived, ``consume()`` is asked in windows of ``fill_s`` seconds (up to
        ``poll_timeout_s``), and the first window that holds messages is the batch. A
        lone message then waits at most ``fill_s`` instead of up to ``poll_timeout_s``
        (librdkafka's ``consume()`` returns only with ``batch_size`` messages or at its
        timeout); with a backlog the batch is full at once, as before. None (the
        default): one window of ``poll_timeout_s``. 0: no window at all: ``poll()``
        waits for the first message and the batch is it plus whatever had already
        arrived (``consume(timeout=0)``).
    limits : DecodeLimits
        ``max_dlq_bytes`` bounds the dead letters.
    store_raw : callable, optional
        ``list[bytes] -> list[RawRef]``: keeps a dead letter's whole value
        (:meth:`broker.archive.Archive.store_raw`).
    transactional : bool
        Produce and commit each batch in one Kafka transaction.
    producer_factory : callable, optional
        Makes a new producer after a fatal producer error (transactional mode).
    handler_threads : int
        0: handle on the poll thread; N > 0: off it, N messages at once (see
        "Slow handlers" in the module docstring).
    admin, subscription
        For :meth:`caught_up` (:func:`broker.kafka.caught_up`).
    metrics : broker.metrics.StageMetrics, optional
    backoff : Backoff, optional
        Pace of the waits for Kafka and storage (tests pass a fast one).
    txn_timeout_s : float
        Timeout of each transactional call; a call that times out is retried.
    offsets_in_transaction : bool
        True when the consumer reads from the cluster the producer writes to: the
        offsets go into the transaction (exactly once). False for an input on another
        cluster (GCN, Hopskotch, ZTF): a transaction cannot hold another cluster's
        offsets, so they are committed there right after the transaction commits; a
        crash between the two redelivers the batch, and its outputs are published a
        second time (at least once in that window only).
    accept : callable, optional
        ``msg -> bool``: whether this loop handles the record (a lane,
        :meth:`broker.lanes.Lane.accept`, reads the ``mma.event.id`` header only). The
        others are skipped — not handled, not decoded, no output — and their offsets
        committed with the batch's, in the same transaction. A batch of skipped
        records alone makes no transaction of its own: its offsets wait for the next
        batch with work, for ``skip_commit_s``, or for the input to go idle. None
        (the default): every record is handled.
    skip_commit_s : float
        Longest wait, s, before the offsets of skipped records alone are committed.
    """

    def __init__(self, stage: Stage, consumer: Any, producer: Any, *, dlq_topic: str, batch_size: int = 500,
                 poll_timeout_s: float = 0.5, fill_s: float | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS,
                 store_raw: Callable[[list[bytes]], list[Any]] | None = None, transactional: bool = False,
                 producer_factory: Callable[[], Any] | None = None, handler_threads: int = 0,
                 admin: Any = None, subscription: Sequence[str] | None = None, metrics: Any = None,
                 backoff: Backoff | None = None, txn_timeout_s: float = 30.0,
                 offsets_in_transaction: bool = True, accept: Callable[[Any], bool] | None = None,
                 skip_commit_s: float = 1.0) -> None:
        self.stage = stage
        self.name = stage.name
        self.consumer = consumer
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.fill_s = poll_timeout_s if fill_s is None else min(fill_s, poll_timeout_s)
        self.limits = limits
        self.store_raw = store_raw
        self.transactional = transactional
        self.producer_factory = producer_factory
        self._stuck: list[threading.Thread] = []  # helper threads of given-up producers (_send_offsets)
        self.handler_threads = handler_threads
        self.admin = admin
        self.subscription = list(subscription) if subscription is not None else None
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.backoff = backoff or Backoff(self.name)
        if self.backoff.on_wait is None:
            self.backoff.on_wait = self._waiting
        self.txn_timeout_s = txn_timeout_s
        self.offsets_in_transaction = offsets_in_transaction
        self.accept = accept
        self.skip_commit_s = skip_commit_s
        self._skip_offsets: dict[tuple[str, int], int] = {}
        self._skip_since: float | None = None
        self.stats = RunnerStats()
        self.stop: threading.Event | None = None
        self._txn_ready = False
        self._pool: ThreadPoolExecutor | None = None
        self._carry: list[Any] = []
        self._committed: dict[tuple[str, int], int] = {}

    def _waiting(self, what: str) -> None:
        """Health: waiting for Kafka or storage is alive, not stuck."""
        self.metrics.state("waiting", error=one_line(what, 300))
        self.metrics.polled()

    # ------------------------------------------------------------------ one batch
    def process(self, msgs: Sequence[Any]) -> None:
        """Handle, write, produce and commit one batch (see the module docstring).

        Raises
        ------
        StageStopped
            When ``stop`` is set while Kafka is away (nothing committed).
        Exception
            An infrastructure error of :meth:`Stage.handle`/:meth:`Stage.write`
            (:func:`is_infrastructure_error`): :meth:`run` waits and processes the
            batch again.
        """
        started = time.monotonic()
        offsets: dict[tuple[str, int], int] = {}
        valid = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error: %s", self.name, err)
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            valid.append(msg)
        if not offsets:
            return
        consumed = valid
        if self.accept is not None:
            valid = [m for m in consumed if self.accept(m)]
            self.stats.skipped += len(consumed) - len(valid)
            if not valid:  # nothing of this lane: the offsets wait (skip_commit_s)
                self._skip_offsets.update(offsets)
                if self._skip_since is None:
                    self._skip_since = started
                if started - self._skip_since < self.skip_commit_s:
                    return
            for k, o in self._skip_offsets.items():
                offsets[k] = max(offsets.get(k, o), o)
            self._skip_offsets.clear()
            self._skip_since = None
        dead: list[tuple[Any, str]] = []
        good = self._handle_all(valid, dead)
        good = self._write(good, dead)
        for msg, reason in dead:
            self._log_dead(msg, reason)
        if self.transactional:
            lost = self._deliver_transaction(good, dead, offsets)
            if lost:
                self._rewind(consumed)
                return
        else:
            self._deliver_then_commit(good, dead, offsets)
        self.stage.committed(good, dead)
        self._count(valid, good, dead, time.monotonic() - started)

    def _rewind(self, msgs: Sequence[Any]) -> None:
        """After a transaction fenced by a rebalance: consume the batch again where this
        consumer still owns its partitions.

        With the cooperative-sticky assignor a rebalance (a topic the subscription
        pattern newly matches, a member joining) leaves most partitions where they were,
        yet fails the transaction's offset commit (ILLEGAL_GENERATION,
        REBALANCE_IN_PROGRESS). The consumer's position is already past the batch: left
        there, the batch would never be handled, the next batch's commit (or the idle
        commit of :meth:`_commit_idle_positions`) would move the committed offset over
        it, and ``--until-caught-up`` would stop "caught up" without it. So each
        partition still assigned is sought back to the batch's first offset (librdkafka
        drops what it had fetched beyond), and messages of those partitions kept for the
        next batch are dropped too (they come again). A partition that really moved is
        left to its new owner, which starts at the committed offset.
        """
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        try:
            owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        except confluent_kafka.KafkaException as exc:
            log.warning("%s: cannot read the assignment to consume the batch again (%s)", self.name, exc)
            owned = set()
        back = {k: o for k, o in first.items() if k in owned}
        for (topic, partition), offset in back.items():
            try:
                self.consumer.seek(confluent_kafka.TopicPartition(topic, partition, offset))
            except confluent_kafka.KafkaException as exc:  # revoked meanwhile: its new owner has it
                log.warning("%s: cannot seek %s [%d] back to %d (%s)", self.name, topic, partition, offset, exc)
        if back:
            log.info("%s: consuming the batch again from %s", self.name,
                     ", ".join(f"{t} [{p}] @ {o}" for (t, p), o in sorted(back.items())))
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in first]

    def _count(self, valid: list[Any], good: list[Handled], dead: list[tuple[Any, str]], seconds: float) -> None:
        st = self.stats
        st.batches += 1
        st.messages += len(valid)
        st.dead_letters += len(dead)
        by_topic = Counter(m.topic() for m in valid)
        for topic, n in by_topic.items():
            self.metrics.consumed(topic, n)
        out = Counter(rec.topic for h in good for rec in h.outputs)
        st.outputs += sum(out.values())
        for topic, n in out.items():
            self.metrics.produced(topic, n)
        for _, reason in dead:
            kind = reason_kind(reason)
            st.dlq_reasons[kind] += 1
            self.metrics.dead_lettered(kind)
        if dead:
            self.metrics.produced(self.dlq_topic, len(dead))
        self.metrics.batch(seconds, len(valid))

    def _handle_one(self, msg: Any) -> Handled | tuple[Any, str]:
        try:
            h = self.stage.handle(msg)
        except StageStopped:
            raise
        except DecodeError as exc:
            return (msg, str(exc))
        except RecursionError:
            return (msg, f"{self.name} failed: input nested too deeply (RecursionError)")
        except Exception as exc:  # noqa: BLE001 - one message must not stop the stage
            if is_infrastructure_error(exc):
                raise
            log.exception("%s: handling %s[%s]@%s failed", self.name, msg.topic(), msg.partition(), msg.offset())
            return (msg, f"{self.name} failed: {one_line(error_text(exc), 300)}")
        for rec in h.outputs:
            rec.tag = msg
        return h

    def _handle_all(self, msgs: list[Any], dead: list[tuple[Any, str]]) -> list[Handled]:
        begin = getattr(self.stage, "begin_batch", None)  # stages written against the Protocol may lack it
        if begin is not None:
            begin(msgs)
        if self.handler_threads <= 0 or len(msgs) == 1:
            results = [self._handle_one(m) for m in msgs]
        else:
            # same key (one superevent or trigger) in order, different keys in parallel
            groups: OrderedDict[Any, list[int]] = OrderedDict()
            for i, m in enumerate(msgs):
                groups.setdefault((m.topic(), m.partition(), m.key()), []).append(i)
            results: list[Any] = [None] * len(msgs)

            def run_group(idx: list[int]) -> None:
                for i in idx:
                    results[i] = self._handle_one(msgs[i])

            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.handler_threads, thread_name_prefix=f"{self.name}.handler")
            futures = [self._pool.submit(run_group, idx) for idx in groups.values()]
            self._poll_while(futures)
            for f in futures:
                if f.exception() is not None:
                    raise f.exception()
        good = []
        for r in results:
            if isinstance(r, Handled):
                good.append(r)
            else:
                dead.append(r)
        return good

    def _poll_while(self, futures: list[Any]) -> None:
        """Keep the consumer alive (partitions paused) until ``futures`` are done.

        ``poll()`` serves heartbeats, rebalances and ``max.poll.interval.ms``; a message
        from a partition assigned meanwhile is kept for the next batch. Consumer calls
        stay on this (the poll) thread: librdkafka's Python consumer blocks a second
        thread's call while one is in ``poll()``.
        """
        pause = getattr(self.consumer, "pause", None)
        assigned = self.consumer.assignment() if pause is not None else []
        if assigned:
            self.consumer.pause(assigned)
        try:
            while not all(f.done() for f in futures):
                if pause is None:
                    futures[0].result()
                    continue
                msg = self.consumer.poll(0.2)
                self.metrics.polled()
                if msg is not None:
                    self._carry.append(msg)
                    self.consumer.pause([confluent_kafka.TopicPartition(msg.topic(), msg.partition())])
        finally:
            if assigned or self._carry:
                now = self.consumer.assignment()
                if now:
                    self.consumer.resume(now)

    def _write(self, good: list[Handled], dead: list[tuple[Any, str]]) -> list[Handled]:
        """Write ``good`` durably; a failing write is bisected to the messages responsible."""
        todo = [h for h in good if h.write is not None]
        if not todo:
            return good
        refused = self._write_bisect(todo, dead)
        return [h for h in good if id(h) not in refused]

    def _write_bisect(self, todo: list[Handled], dead: list[tuple[Any, str]]) -> set[int]:
        try:
            self.stage.write(todo)
            return set()
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_infrastructure_error(exc):
                raise
            if len(todo) == 1:
                prefix = getattr(self.stage, "write_refused", BaseStage.write_refused)
                dead.append((todo[0].msg, f"{prefix}: {one_line(error_text(exc), 300)}"))
                return {id(todo[0])}
            log.warning("%s: durable write of %d messages failed (%s); isolating the message(s) responsible",
                        self.name, len(todo), one_line(error_text(exc), 200))
        mid = len(todo) // 2
        return self._write_bisect(todo[:mid], dead) | self._write_bisect(todo[mid:], dead)

    # ------------------------------------------------------------------ dead letters
    def _log_dead(self, msg: Any, reason: str) -> None:
        log.warning("%s: dead letter %s[%s]@%s: %s", self.name, msg.topic(), msg.partition(), msg.offset(),
                    one_line(reason, 300))

    def _dead_letters(self, dead: list[tuple[Any, str]]) -> list[Outgoing]:
        if not dead:
            return []
        blobs = [msg.value() for msg, _ in dead]
        refs: list[Any] = [None] * len(dead)
        if self.store_raw is not None and any(b is not None for b in blobs):
            stored = iter(self.store_raw([b for b in blobs if b is not None]))
            refs = [next(stored) if b is not None else None for b in blobs]
        out = []
        for (msg, reason), ref in zip(dead, refs):
            letter = dead_letter(msg, reason, self.name, max_bytes=self.limits.max_dlq_bytes, raw_ref=ref)
            out.append(Outgoing(self.dlq_topic, tag=("dlq", letter), **letter.kwargs()))
        return out

    def _records(self, good: list[Handled], dead: list[tuple[Any, str]]) -> list[Outgoing]:
        records = [rec for h in good for rec in h.outputs] + self._dead_letters(dead)
        for rec, _id in zip(records, hop_ids(len(records))):
            rec.headers = with_hop_headers(rec.headers, _id)
        return records

    # ------------------------------------------------------------------ at least once
    def _deliver_then_commit(self, good: list[Handled], dead: list[tuple[Any, str]],
                             offsets: dict[tuple[str, int], int]) -> None:
        refused = publish(self.producer, self._records(good, dead), name=self.name, stop=self.stop,
                          backoff=self.backoff)
        while refused:
            resend, origins = triage_refused(refused, self.dlq_topic, self.name)
            new_dead = self._refused_origins(origins, good, dead)
            extra = self._dead_letters(new_dead)
            for rec in resend + extra:
                rec.headers = with_hop_headers(rec.headers)
            refused = publish(self.producer, resend + extra, name=self.name, stop=self.stop, backoff=self.backoff)
        commit_offsets(self.consumer, offsets, self.name, stop=self.stop, backoff=self.backoff)

    def _refused_origins(self, origins: list[tuple[Any, str]], good: list[Handled],
                         dead: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """Messages whose output Kafka refused → dead letters; they leave ``good``."""
        new_dead = []
        for msg, reason in origins:
            if any(m is msg for m, _ in dead) or any(m is msg for m, _ in new_dead):
                continue
            done = getattr(self.stage, "write_done", BaseStage.write_done)
            prefix = f"{done}, but " if any(h.msg is msg and h.write is not None for h in good) else ""
            new_dead.append((msg, f"{prefix}{reason}"))
        lost = {id(m) for m, _ in new_dead}
        good[:] = [h for h in good if id(h.msg) not in lost]
        for msg, reason in new_dead:
            self._log_dead(msg, reason)
        dead.extend(new_dead)
        return new_dead

    # ------------------------------------------------------------------ exactly once
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """A transactional call, repeated while it fails with a retriable error."""
        while True:
            try:
                return fn()
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.fatal() and not err.txn_requires_abort():
                    self.backoff.wait(f"{what} failed ({err.str()}), trying again", self.stop)
                    continue
                raise

    def _init_transactions(self) -> None:
        if self._txn_ready:
            return
        self._call("init_transactions", lambda: self.producer.init_transactions(self.txn_timeout_s))
        self._txn_ready = True

    def _init_transactions_early(self) -> None:
        """``init_transactions`` before the first poll, not at the first batch.

        A predecessor with this transactional id that died inside a transaction
        holding this group's offsets (``send_offsets_to_transaction`` done, no commit)
        leaves them pending; until that transaction ends, the coordinator answers the
        consumer's committed-offset fetch with UNSTABLE_OFFSET_COMMIT (KIP-447), so no
        batch arrives and a lazy ``init_transactions`` would wait for the
        ``transaction.timeout.ms`` (60 s) to abort it. Called here, it fences the dead
        producer and aborts its transaction at once. A non-retriable error is left
        to the first batch's transaction, which replaces a fatally failed producer.

        Raises
        ------
        StageStopped
            When ``stop`` is set while Kafka is away.
        """
        try:
            self._init_transactions()
        except confluent_kafka.KafkaException as exc:
            log.warning("%s: init_transactions at start failed (%s); trying again with the first batch",
                        self.name, exc.args[0].str())

    def _new_producer(self, why: str) -> None:
        if self.producer_factory is None:
            raise BrokerError(f"{self.name}: producer failed fatally ({why}) and there is no factory to replace it")
        log.warning("%s: producer failed fatally (%s); making a new one", self.name, why)
        self.producer = self.producer_factory()
        self._txn_ready = False

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(self.txn_timeout_s)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                self._new_producer(err.str())
            else:
                log.warning("%s: abort_transaction: %s", self.name, err.str())

    def _deliver_transaction(self, good: list[Handled], dead: list[tuple[Any, str]],
                             offsets: dict[tuple[str, int], int]) -> bool:
        """Produce the batch's records and commit its offsets in one transaction.

        Returns True when the partitions were lost in a rebalance (nothing committed;
        their new owner consumes the batch again).
        """
        tps = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        records = self._records(good, dead)
        while True:
            in_txn = False
            try:
                self._init_transactions()
                self.producer.begin_transaction()
                in_txn = True
                failed: list[tuple[Outgoing, str, bool]] = []
                self._produce_all(records, failed)
                offsets_sent = False
                if self.offsets_in_transaction and not failed:
                    # while Kafka acknowledges the records: the offsets' two round trips
                    # (AddOffsetsToTxn, TxnOffsetCommit) overlap the produce's
                    try:
                        self._call("send_offsets_to_transaction", lambda: self._send_offsets(tps))
                        offsets_sent = True
                    except confluent_kafka.KafkaException:
                        self._flush()  # a record refused meanwhile fails the call: its delivery report says why
                        if not failed:
                            raise
                self._flush()
                if failed:
                    self._abort()
                    in_txn = False
                    permanent = [(rec, reason) for rec, reason, perm in failed if perm]
                    if permanent:
                        records = self._replace_refused(records, permanent, good, dead)
                    else:
                        self.backoff.wait(f"{len(failed)} record(s) not delivered ({failed[0][1]}); "
                                          "making the transaction again", self.stop)
                    continue
                if self.offsets_in_transaction and not offsets_sent:
                    self._call("send_offsets_to_transaction", lambda: self._send_offsets(tps))
                self._call("commit_transaction", lambda: self.producer.commit_transaction(self.txn_timeout_s))
                in_txn = False
                if not self.offsets_in_transaction:
                    commit_offsets(self.consumer, offsets, self.name, stop=self.stop, backoff=self.backoff)
                self.backoff.reset()
                self.metrics.state("running")
                return False
            except StageStopped:
                if in_txn:
                    self._abort()
                raise
            except ProducerStuck as exc:
                # a stuck call cannot be interrupted: its thread and producer live until it returns.
                # Bounded: past MAX_STUCK_PRODUCERS still stuck, stop for a restart instead of leaking on
                self._stuck = [t for t in self._stuck if t.is_alive()]
                if len(self._stuck) >= MAX_STUCK_PRODUCERS:
                    raise BrokerError(f"{self.name}: {len(self._stuck)} Kafka producers are still stuck in "
                                      f"send_offsets_to_transaction (librdkafka issues 5456/5511); stopping so "
                                      f"that the process restarts and frees them") from exc
                # its transaction is aborted when the new producer (same transactional id) fences it
                self._new_producer(str(exc))
                continue
            except SystemError as exc:
                # confluent-kafka's flush() of a producer that failed fatally (e.g.
                # fenced) raises "returned NULL without setting an exception"
                self._new_producer(f"{type(exc).__name__}: {one_line(str(exc), 200)}")
                continue
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    self._new_producer(err.str())
                    continue
                if in_txn:
                    self._abort()
                if err.code() in _FENCED:
                    log.warning("%s: partitions moved in a rebalance (%s); the batch was not committed and "
                                "will be consumed again by their new owner", self.name, err.str())
                    return True
                self.backoff.wait(f"transaction failed ({err.str()}); making it again", self.stop)

    def _send_offsets(self, tps: list[confluent_kafka.TopicPartition]) -> None:
        """``send_offsets_to_transaction``, given up when it overruns its timeout.

        librdkafka 2.16 can block in it for good, past its timeout, when the broker that
        coordinates the consumer group is killed: the producer keeps that broker, which
        it has dropped from its metadata, as the group's coordinator and never looks up
        the new one (librdkafka issues 5456 and 5511; seen with ``kill -9`` of a node of
        ``deploy/kafka/cluster.sh``: no progress 240 s after the node was back). The
        call runs in a helper thread; when it has not returned ``SEND_OFFSETS_GRACE_S``
        after its own timeout, the producer is left to that thread and
        :class:`ProducerStuck` is raised, so the batch is made again with a new producer
        (same transactional id: it fences the stuck one and aborts its transaction). The
        given-up producer and its thread live until the call returns; when
        :data:`MAX_STUCK_PRODUCERS` of them are still stuck, the stage stops with a
        :class:`BrokerError` instead, for its process to be restarted.

        Raises
        ------
        ProducerStuck
            When the call did not return within ``txn_timeout_s + SEND_OFFSETS_GRACE_S``.
        confluent_kafka.KafkaException
            What the call raised.
        """
        producer, metadata = self.producer, self.consumer.consumer_group_metadata()
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(tps, metadata, self.txn_timeout_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the stage's thread
                outcome.append(exc)

        helper = threading.Thread(target=call, name=f"{self.name}.send-offsets", daemon=True)
        helper.start()
        helper.join(self.txn_timeout_s + SEND_OFFSETS_GRACE_S)
        if not outcome:
            self._stuck.append(helper)  # holds the given-up producer until the call returns
            raise ProducerStuck(f"send_offsets_to_transaction did not return within "
                                f"{self.txn_timeout_s + SEND_OFFSETS_GRACE_S:.0f} s")
        if outcome[0] is not None:
            raise outcome[0]

    def _produce_all(self, records: list[Outgoing], failed: list[tuple[Outgoing, str, bool]]) -> None:
        for rec in records:
            def on_delivery(err: Any, _msg: Any, rec: Outgoing = rec) -> None:
                if err is not None:
                    failed.append((rec, f"Kafka refused the record for {rec.topic}: {err.str()}",
                                   err.code() in PERMANENT_DELIVERY_ERRORS))
            while True:
                try:
                    self.producer.produce(rec.topic, key=rec.key, value=rec.value, headers=rec.headers,
                                          on_delivery=on_delivery)
                    self.producer.poll(0)
                    break
                except BufferError:
                    self.producer.poll(1.0)
                    if self.stop is not None and self.stop.is_set():
                        raise StageStopped(f"{self.name}: stopped while the producer queue was full") from None
                except confluent_kafka.KafkaException as exc:
                    err = exc.args[0]
                    if err.code() in PERMANENT_DELIVERY_ERRORS:
                        failed.append((rec, f"Kafka refused the record for {rec.topic}: {err.str()}", True))
                        break
                    raise

    def _flush(self, flush_s: float = 10.0) -> None:
        start = time.monotonic()
        while (remaining := self.producer.flush(flush_s)) > 0:
            if self.stop is not None and self.stop.is_set():
                raise StageStopped(f"{self.name}: stopped with {remaining} message(s) unacknowledged")
            log.warning("%s: waiting for Kafka: %d message(s) unacknowledged for %.0f s", self.name, remaining,
                        time.monotonic() - start)

    def _replace_refused(self, records: list[Outgoing], refused: list[tuple[Outgoing, str]],
                         good: list[Handled], dead: list[tuple[Any, str]]) -> list[Outgoing]:
        """The next transaction's records: a refused dead letter goes without its value;
        a message with a refused output goes to the DLQ without any of its outputs."""
        gone = {id(rec) for rec, _ in refused}
        kept = [rec for rec in records if id(rec) not in gone]
        extra: list[Outgoing] = []
        origins = []
        for rec, reason in refused:
            if isinstance(rec.tag, tuple) and rec.tag[0] == "dlq":
                small = minimal(rec.tag[1])
                extra.append(Outgoing(self.dlq_topic, tag=("dlq-minimal", small), **small.kwargs()))
            elif isinstance(rec.tag, tuple):
                raise BrokerError(f"{self.name}: {self.dlq_topic} refused even a value-less dead letter: {reason}")
            elif rec.tag is not None:
                origins.append((rec.tag, reason))
        new_dead = self._refused_origins(origins, good, dead)
        lost = {id(m) for m, _ in new_dead}
        kept = [rec for rec in kept if rec.tag is None or isinstance(rec.tag, tuple) or id(rec.tag) not in lost]
        extra += self._dead_letters(new_dead)
        for rec in extra:
            rec.headers = with_hop_headers(rec.headers)
        return kept + extra

    # ------------------------------------------------------------------ the loop
    def caught_up(self) -> bool:
        """True when the group has consumed every input partition to its end."""
        return caught_up(self.consumer, self.admin, self.subscription)

    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            upstream_done: Callable[[], bool] = lambda: True,
            on_batch: Callable[[RunnerStats], None] | None = None) -> RunnerStats:
        """Consume until ``stop`` is set (SIGTERM), or until caught up and idle.

        Parameters
        ----------
        stop : threading.Event
            Set it to stop after the current batch.
        until_caught_up : bool
            Also stop once every input partition is consumed, nothing arrived for
            ``idle_s`` seconds and ``upstream_done()`` (a stage fed by another one
            waits for it).
        on_batch : callable, optional
            Called with the statistics after each batch.
        """
        self.stop = stop
        self.metrics.state("running")
        last = time.monotonic()
        carry: list[Any] = []
        try:
            if self.transactional:
                self._init_transactions_early()
            while not stop.is_set():
                if carry:
                    msgs = carry + self.consumer.consume(num_messages=max(1, self.batch_size - len(carry)), timeout=0)
                    carry = []
                else:
                    msgs = self._consume(stop)
                self.metrics.polled()
                if msgs:
                    self._process_until_done(msgs, stop)
                    carry, self._carry = self._carry, []
                    del msgs
                    last = time.monotonic()
                    self.metrics.lag(self.consumer)
                    if on_batch:
                        on_batch(self.stats)
                else:
                    self._commit_idle_positions()
                    if (until_caught_up and upstream_done() and time.monotonic() - last >= idle_s
                            and self.caught_up()):
                        break
            self.metrics.state("stopped")
        except StageStopped as exc:
            log.info("%s", exc)
            self.metrics.state("stopped")
        except BaseException as exc:
            self.metrics.state("failed", error=one_line(error_text(exc), 300))
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self.consumer.close()
        return self.stats

    def _consume(self, stop: threading.Event) -> list[Any]:
        """The next batch: the first ``fill_s`` window of ``consume()`` that holds messages,
        within ``poll_timeout_s`` (empty when nothing arrived or ``stop`` is set)."""
        if self.fill_s >= self.poll_timeout_s:
            return self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout_s)
        if self.fill_s <= 0:
            first = self.consumer.poll(self.poll_timeout_s)
            if first is None:
                return []
            more = self.consumer.consume(num_messages=self.batch_size - 1, timeout=0) if self.batch_size > 1 else []
            return [first, *more]
        deadline = time.monotonic() + self.poll_timeout_s
        while True:
            msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.fill_s)
            if msgs or stop.is_set() or time.monotonic() + self.fill_s > deadline:
                return msgs

    def _commit_idle_positions(self) -> None:
        """When idle, commit positions that moved past transaction markers only.

        A transactional input topic ends each transaction with a control record: the
        consumer's position moves past it, but the offsets committed with the batch
        stop at the last data record, so the group would show a lag of one per
        transaction for ever (and never look caught up). Nothing is pending when
        ``consume()`` returned nothing, so committing the position loses nothing.
        """
        position = getattr(self.consumer, "position", None)
        if position is None or self.stop is not None and self.stop.is_set():
            return
        self._skip_offsets.clear()  # positions are past them
        self._skip_since = None
        try:
            assigned = self.consumer.assignment()
            if not assigned:
                return
            moved = [tp for tp in position(assigned)
                     if tp.offset >= 0 and self._committed.get((tp.topic, tp.partition), -1) < tp.offset]
            if not moved:
                return
            committed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(moved, timeout=5)}
            todo = {(tp.topic, tp.partition): tp.offset for tp in moved
                    if committed.get((tp.topic, tp.partition), -1) < tp.offset}
            if todo and commit_offsets(self.consumer, todo, self.name, stop=self.stop, backoff=self.backoff):
                self._committed.update(todo)
            self._committed.update({k: v for k, v in committed.items() if v >= 0})
        except confluent_kafka.KafkaException as exc:
            log.debug("%s: idle commit skipped: %s", self.name, exc)

    def _process_until_done(self, msgs: Sequence[Any], stop: threading.Event) -> None:
        """:meth:`process`, done again while the stage's storage is unavailable."""
        while True:
            try:
                self.process(msgs)
                self.backoff.reset()
                self.metrics.state("running")
                return
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                self.metrics.state("waiting", error=one_line(error_text(exc), 300))
                on_retry = getattr(self.stage, "on_retry", None)
                if on_retry is not None:
                    on_retry()
                self.backoff.wait(f"storage unavailable ({type(exc).__name__}: {one_line(str(exc), 200)}); "
                                  "the batch will be processed again", stop)
