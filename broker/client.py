"""Read the broker's topics from a script: ``from broker.client import subscribe``.

>>> from broker.client import EventRecord, subscribe
>>> for rec in subscribe("mma.events", timeout_s=5):          # doctest: +SKIP
...     if isinstance(rec, EventRecord):
...         print(rec.event.id, rec.event.time, rec.topic, rec.partition, rec.offset)

Each record is typed (:mod:`broker.records`, the decoding ``mma-broker subscribe``
uses too): an :class:`EventRecord` (the Event, its provenance, and where it was read)
on ``mma.events``; a :class:`DocumentRecord` (the JSON object) on
``mma.followup.requests`` and ``mma.followup.results``; a :class:`DeadLetterRecord`
(reason, origin, size) on ``mma.dlq``; an :class:`UnreadableRecord`, with the reason,
for anything else, so one odd record never ends a loop.

Consumption follows Kafka's rules, made explicit here:

* ``isolation.level=read_committed``: the broker's output topics are written in Kafka
  transactions, and only committed ones are read (no record of an aborted batch).
* Without ``group_id`` the consumer has a throw-away group, takes every partition
  itself (no group join, so it starts at once) and never commits: each run starts
  where ``since`` / ``from_beginning`` say.
* With ``group_id`` it joins that consumer group (processes sharing the name share the
  partitions) and commits what it has handed out: a record counts as read once the
  loop asks for the next one, or when the loop ends (``break`` and exceptions
  included). The next run with the same name continues after it; ``from_beginning``
  then only matters for a group that never committed, while ``since`` always moves
  the start (on the partitions this process is given).

This module imports confluent-kafka only when a subscription opens.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from broker.errors import BrokerError
from broker.records import (DeadLetterRecord, Decoder, DocumentRecord, EventRecord, Metadata, Record,
                            UnreadableRecord)

__all__ = ["subscribe", "Subscription", "parse_time", "TopicLag", "TopicNotFoundError", "Record", "EventRecord",
           "DocumentRecord", "DeadLetterRecord", "UnreadableRecord", "Metadata", "DEFAULT_BOOTSTRAP_SERVERS"]

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
"""The local Kafka of ``deploy/quickstart.sh``."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest record expected (IGWN alerts carry sky maps; the local Kafka allows 16 MiB)."""

METADATA_TIMEOUT_S = 10.0
"""How long to wait for Kafka to list topics, find offsets for a time or watermarks."""

COMMIT_INTERVAL_S = 5.0
"""With a group: how often the position is committed while reading."""


class TopicNotFoundError(BrokerError):
    """A topic to read does not exist on the cluster."""


def parse_time(value: str | datetime, what: str = "since") -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (naive means UTC).

    Parameters
    ----------
    value : str or datetime
        ``2023-03-07``, ``2023-03-07T15:44Z``, ``2023-03-07T15:44:06.67+01:00``, ...
    what : str
        Named in the error (``--since`` for the CLI).

    Raises
    ------
    BrokerError
        One line: not ISO 8601, or before 1970-01-01 (Kafka timestamps start there).
    """
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
        except (ValueError, TypeError):
            from broker.text import one_line

            raise BrokerError(f"{what} {one_line(repr(value), 80)}: expected an ISO 8601 date/time, "
                              "e.g. 2023-03-07 or 2023-03-07T15:44Z") from None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    try:
        t = t.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00
        raise BrokerError(f"{what} {value!s}: out of range") from None
    if t < datetime(1970, 1, 1, tzinfo=timezone.utc):
        raise BrokerError(f"{what} {t.isoformat()}: before 1970-01-01, where Kafka timestamps start")
    return t


@dataclass(frozen=True)
class TopicLag:
    """How far a reader is behind the end of one topic.

    Attributes
    ----------
    topic : str
    partitions : int
    behind : int
        Records (offsets) between the position and the end, summed over partitions:
        this reader's position, or with a group the group's committed offsets.
    group : str or None
        The consumer group whose committed offsets were used.
    uncommitted : int
        With a group: partitions where the group has committed nothing yet (counted
        from the start the group would take).
    """

    topic: str
    partitions: int
    behind: int
    group: str | None = None
    uncommitted: int = 0


class Subscription:
    """An open reader of one or more topics; iterate it for :data:`Record` objects.

    Use it as a context manager (or call :meth:`close`); :func:`subscribe` wraps it
    for the common case. Parameters are those of :func:`subscribe`, plus:

    Parameters
    ----------
    config : mapping
        librdkafka settings, ``bootstrap.servers`` included; they override the
        defaults here (``isolation.level``, fetch sizes, ...).
    max_records : int, optional
        Stop after this many records.
    poll_s : float
        Longest wait of one poll, s.
    """

    def __init__(self, topics: str | Iterable[str], config: Mapping[str, Any], *, group_id: str | None = None,
                 since: str | datetime | None = None, from_beginning: bool = True, timeout_s: float | None = None,
                 max_records: int | None = None, poll_s: float = 0.5) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("no topic to read")
        if timeout_s is not None and not (timeout_s >= 0 and timeout_s != float("inf")):
            raise ValueError(f"timeout_s={timeout_s!r}: expected a finite number of seconds >= 0")
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records={max_records!r}: expected >= 0")
        self.group_id = group_id
        self.since = parse_time(since) if since is not None else None
        self.from_beginning = from_beginning
        self.timeout_s = timeout_s
        self.max_records = max_records
        self.poll_s = poll_s
        self.read = 0
        """Records handed out so far."""
        self._config = dict(config)
        self._consumer = None
        self._decoder = Decoder()
        self._partitions: dict[str, list[int]] = {}
        self._start: dict[tuple[str, int], int] = {}
        self._positioned: set[tuple[str, int]] = set()
        self._closed = False

    # -------------------------------------------------------------- opening
    def open(self) -> "Subscription":
        """Connect, check the topics exist and take the start positions.

        Raises
        ------
        BrokerError
            Kafka does not answer.
        TopicNotFoundError
            A topic does not exist (the message lists the ``mma.*`` topics there are).
        """
        if self._consumer is not None:
            return self
        import confluent_kafka

        from broker.kafka import LIBRDKAFKA_LOGGER

        cfg: dict[str, Any] = {
            "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest" if self.from_beginning else "latest",
            "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "enable.partition.eof": False,
        }
        cfg.update(self._config)
        cfg["bootstrap.servers"] = cfg.get("bootstrap.servers") or DEFAULT_BOOTSTRAP_SERVERS
        # what the group means is this class's job, whatever config says
        cfg["group.id"] = self.group_id or f"mma-broker.subscribe.{uuid.uuid4().hex[:12]}"
        cfg["enable.auto.commit"] = False
        cfg["enable.auto.offset.store"] = False
        where = cfg["bootstrap.servers"]
        consumer = confluent_kafka.Consumer(cfg)
        try:
            try:
                topics = consumer.list_topics(timeout=METADATA_TIMEOUT_S).topics
            except confluent_kafka.KafkaException as exc:
                raise BrokerError(f"Kafka at {where} did not answer: {exc.args[0].str() if exc.args else exc}") from None
            for name in self.topics:
                meta = topics.get(name)
                if meta is None or meta.error is not None and not meta.partitions:
                    raise TopicNotFoundError(_not_found(name, where, topics))
                self._partitions[name] = sorted(meta.partitions)
            if self.group_id is None:
                parts = [confluent_kafka.TopicPartition(t, p) for t, ps in self._partitions.items() for p in ps]
                consumer.assign(self._start_positions(consumer, parts))
            else:
                consumer.subscribe(self.topics, on_assign=self._on_assign)
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return self

    def _start_positions(self, consumer, parts: list) -> list:
        """``parts`` with the offsets to start at: for ``since``, Kafka's offsets for
        that time (the end where no record is that recent); else the beginning or
        the end."""
        import confluent_kafka

        if self.since is not None:
            ms = int(self.since.timestamp() * 1000)
            query = [confluent_kafka.TopicPartition(tp.topic, tp.partition, ms) for tp in parts]
            try:
                found = consumer.offsets_for_times(query, timeout=METADATA_TIMEOUT_S)
            except confluent_kafka.KafkaException as exc:
                raise BrokerError(f"Kafka could not find offsets for {self.since.isoformat()}: {exc}") from None
            parts = [confluent_kafka.TopicPartition(tp.topic, tp.partition,
                                                    tp.offset if tp.offset >= 0 else confluent_kafka.OFFSET_END)
                     for tp in found]
        elif self.group_id is None:
            start = confluent_kafka.OFFSET_BEGINNING if self.from_beginning else confluent_kafka.OFFSET_END
            parts = [confluent_kafka.TopicPartition(tp.topic, tp.partition, start) for tp in parts]
        for tp in parts:
            self._start[(tp.topic, tp.partition)] = tp.offset
            self._positioned.add((tp.topic, tp.partition))
        return parts

    def _on_assign(self, consumer, parts: list) -> None:
        # with --since, move partitions this process gets for the first time; the
        # others (and every partition without --since) start at the group's offsets
        if self.since is None:
            return
        fresh = [tp for tp in parts if (tp.topic, tp.partition) not in self._positioned]
        if not fresh:
            return
        moved = {(tp.topic, tp.partition): tp for tp in self._start_positions(consumer, fresh)}
        consumer.assign([moved.get((tp.topic, tp.partition), tp) for tp in parts])

    # -------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[Record]:
        self.open()
        consumer = self._consumer
        last = time.monotonic()
        committed_at = last
        while self.max_records is None or self.read < self.max_records:
            if self.group_id is not None and time.monotonic() - committed_at > COMMIT_INTERVAL_S:
                self._commit(asynchronous=True)
                committed_at = time.monotonic()
            msg = consumer.poll(self.poll_s)
            if msg is None:
                if self.timeout_s is not None and time.monotonic() - last >= self.timeout_s:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.fatal() or err.code() in _PERMANENT_ERRORS():
                    raise BrokerError(f"reading {', '.join(self.topics)}: {err.str()}")
                log.warning("reading %s: %s", msg.topic() or ", ".join(self.topics), err.str())
                continue
            last = time.monotonic()
            self.read += 1
            yield self._decoder.decode(msg)
        return

    def _commit(self, *, asynchronous: bool) -> None:
        import confluent_kafka

        consumer = self._consumer
        try:
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            if positions:
                consumer.commit(offsets=positions, asynchronous=asynchronous)
        except confluent_kafka.KafkaException as exc:
            log.warning("group %s: commit failed: %s", self.group_id, exc)

    # -------------------------------------------------------------- lag
    def lag(self) -> list[TopicLag]:
        """Per topic, how many records remain behind the end.

        Without a group: between this reader's position and the end of each
        partition. With a group: between the group's committed offsets and the end
        (commit first: :meth:`commit`). Offsets count transaction markers too; the
        position skips them, so a reader at the end is 0 behind.

        Raises
        ------
        BrokerError
            Kafka did not answer in time (e.g. the group is still rebalancing).
        """
        import confluent_kafka

        if self._consumer is None:
            return []
        try:
            return self._lag()
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            raise BrokerError(f"Kafka did not tell the lag: {err.str() if hasattr(err, 'str') else err}") from None

    def _lag(self) -> list[TopicLag]:
        import confluent_kafka

        consumer = self._consumer
        parts = [confluent_kafka.TopicPartition(t, p) for t, ps in self._partitions.items() for p in ps]
        if self.group_id is not None:
            marks = consumer.committed(parts, timeout=METADATA_TIMEOUT_S)
        else:
            marks = consumer.position(parts)
        behind: dict[str, int] = {}
        uncommitted: dict[str, int] = {}
        for tp in marks:
            low, high = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(tp.topic, tp.partition),
                                                       timeout=METADATA_TIMEOUT_S, cached=False)
            at = tp.offset
            if at < 0:
                if self.group_id is not None:
                    uncommitted[tp.topic] = uncommitted.get(tp.topic, 0) + 1
                    at = low if self.from_beginning else high
                else:
                    start = self._start.get((tp.topic, tp.partition), confluent_kafka.OFFSET_END)
                    at = (low if start == confluent_kafka.OFFSET_BEGINNING else
                          high if start < 0 else start)
            behind[tp.topic] = behind.get(tp.topic, 0) + max(0, high - max(at, low))
        return [TopicLag(t, len(ps), behind.get(t, 0), self.group_id, uncommitted.get(t, 0))
                for t, ps in self._partitions.items()]

    def commit(self) -> None:
        """With a group: commit the position now (every record handed out so far)."""
        if self._consumer is not None and self.group_id is not None:
            self._commit(asynchronous=False)

    def close(self) -> None:
        """Commit (with a group) and leave the group; idempotent."""
        if self._consumer is None or self._closed:
            return
        self._closed = True
        try:
            self.commit()
        finally:
            self._consumer.close()

    def __enter__(self) -> "Subscription":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_found(name: str, where: str, topics: Iterable[str]) -> str:
    """The message for a missing topic, naming the broker's topics that do exist
    (those with the same prefix before ``mma.``, as a topic prefix isolates tenants)."""
    from broker.text import one_line

    prefix = name[:name.find("mma.")] + "mma." if "mma." in name else "mma."
    ours = sorted(t for t in topics if t.startswith(prefix))
    shown = ", ".join(ours[:12]) + (f", … ({len(ours)} in all)" if len(ours) > 12 else "")
    return one_line(f"no topic {name!r} on {where}"
                    + (f" (the broker's topics there: {shown})" if ours else " (has the broker run yet?)"), 1000)


def _PERMANENT_ERRORS() -> frozenset:
    import confluent_kafka

    e = confluent_kafka.KafkaError
    return frozenset({e.TOPIC_AUTHORIZATION_FAILED, e.GROUP_AUTHORIZATION_FAILED, e.SASL_AUTHENTICATION_FAILED,
                      e._AUTHENTICATION, e._SSL})


def subscribe(topics: str | Iterable[str], *, bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS,
              group_id: str | None = None, since: str | datetime | None = None, from_beginning: bool = True,
              timeout_s: float | None = None, config: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """Yield the decoded records of the broker's topics, in order per partition.

    Parameters
    ----------
    topics : str or iterable of str
        ``"mma.events"``, ``["mma.followup.results", "mma.dlq"]``, ...
    bootstrap_servers : str
        Kafka to read from.
    group_id : str, optional
        A consumer group that commits, so the next run continues after this one.
        None: a throw-away group that never commits.
    since : str or datetime, optional
        Start at the first record written at or after this time (ISO 8601; naive
        means UTC), through Kafka's offsets for times.
    from_beginning : bool
        Without ``since``: start at the oldest record (True) or only read new ones.
    timeout_s : float, optional
        Stop after this many seconds without a record (None: never stop).
    config : mapping, optional
        More librdkafka settings (SASL, TLS, ...), over the defaults here.

    Yields
    ------
    EventRecord, DocumentRecord, DeadLetterRecord or UnreadableRecord
        Each with ``.topic``, ``.partition``, ``.offset`` and ``.meta`` (timestamp,
        key, headers).

    Raises
    ------
    TopicNotFoundError
        A topic does not exist.
    BrokerError
        Kafka does not answer, or refuses access.

    Notes
    -----
    The consumer is closed when the loop ends, including on ``break``.
    """
    cfg = {"bootstrap.servers": bootstrap_servers, **(config or {})}
    with Subscription(topics, cfg, group_id=group_id, since=since, from_beginning=from_beginning,
                      timeout_s=timeout_s) as sub:
        yield from sub
