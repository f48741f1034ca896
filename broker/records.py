"""Records of the broker's output topics, decoded: the one implementation that both
``mma-broker subscribe`` and :func:`broker.client.subscribe` use.

What each topic carries and how a record is recognised (headers first, then bytes,
so a record written without hop-client headers reads the same):

============================  =======================================================
``mma.dlq``                   a dead letter: header ``mma.dlq.reason`` (and the other
                              ``mma.dlq.*`` headers of :mod:`broker.pipeline.deadletter`);
                              the value is the refused original (maybe cut) →
                              :class:`DeadLetterRecord`
``mma.events``                Avro single-object encoding (value starts ``C3 01``,
                              :mod:`broker.serde`) → :class:`EventRecord`
``mma.followup.requests``,    UTF-8 JSON objects (header ``_format: json``, or a value
``mma.followup.results``      starting with ``{``) → :class:`DocumentRecord`; summarised
                              from generic fields only (``schema``, ``kind``,
                              ``status``, ``request_id``, ``event_id``,
                              ``summary_text``), so any JSON topic reads the same
anything else                 :class:`UnreadableRecord`, with the reason; reading goes on
============================  =======================================================

Kafka metadata (topic, partition, offset, timestamp, key, headers) stays apart from
the payload, in :class:`Metadata` (hop-client's ``Metadata`` idea). hop-client's
headers (``_id``: 16 uuid4 bytes, ``_sender``, ``_format``) and ``content-type`` /
``mma.schema`` are read when present and never required.

Decoding never raises for a record's content: a hostile record becomes an
:class:`UnreadableRecord`. Module import is cheap (no Kafka, no Avro library):
fastavro is loaded on the first Avro record.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, Union

from broker.event import Event
from broker.text import one_line, printable

AVRO_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""First two bytes of an Avro single-object encoded value (Avro specification)."""

MAX_TEXT_CHARS = 300
"""Longest reason or summary put on one readable line."""


class KafkaMessage(Protocol):
    """What :func:`decode_message` reads from a message: confluent-kafka's ``Message``
    has these methods, and so do the fakes of the unit tests."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Metadata:
    """Where a record was read and what came with it, apart from its payload.

    Attributes
    ----------
    topic : str
    partition : int
    offset : int
    timestamp_ms : int or None
        Kafka timestamp, ms since 1970 (None when the record has none).
    key : bytes or None
    headers : tuple of (str, bytes or None)
        All headers, in order (a name may repeat).
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def header(self, name: str) -> str | None:
        """The last header called ``name``, as text (invalid UTF-8 backslash-escaped),
        or None."""
        for k, v in reversed(self.headers):
            if k == name:
                return None if v is None else v.decode("utf-8", "backslashreplace")
        return None

    @property
    def message_id(self) -> str | None:
        """hop-client's ``_id`` header (16 bytes) as a UUID string, or None."""
        for k, v in reversed(self.headers):
            if k == "_id" and v is not None and len(v) == 16:
                return str(uuid.UUID(bytes=v))
        return None

    @property
    def where(self) -> str:
        """``topic[partition]@offset``."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def to_json_dict(self) -> dict[str, Any]:
        """topic, partition, offset, timestamp_ms, key and headers as JSON values:
        text (invalid UTF-8 backslash-escaped); ``_id`` as a UUID string."""
        headers: dict[str, str | None] = {}
        for k, v in self.headers:
            if k == "_id" and v is not None and len(v) == 16:
                headers[k] = str(uuid.UUID(bytes=v))
            else:
                headers[k] = None if v is None else v.decode("utf-8", "backslashreplace")
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": None if self.key is None else self.key.decode("utf-8", "backslashreplace"),
            "headers": headers,
        }


@dataclass(frozen=True, kw_only=True)
class _Record:
    meta: Metadata

    @property
    def topic(self) -> str:
        return self.meta.topic

    @property
    def partition(self) -> int:
        return self.meta.partition

    @property
    def offset(self) -> int:
        return self.meta.offset


@dataclass(frozen=True, kw_only=True)
class EventRecord(_Record):
    """A normalized Event from ``mma.events``.

    Attributes
    ----------
    event : broker.event.Event
    provenance : broker.serde.Provenance
        Which component and version wrote it, with its config hash.
    meta : Metadata
    """

    event: Event
    provenance: Any

    type = "event"

    def to_json_dict(self) -> dict[str, Any]:
        """``{"type": "event", <metadata>, "event": {...}, "provenance": {...}}``."""
        prov = self.provenance
        return {"type": self.type, **self.meta.to_json_dict(), "event": self.event.to_json_dict(),
                "provenance": None if prov is None else {"component": prov.component, "version": prov.version,
                                                         "config_hash": prov.config_hash}}

    def describe(self) -> str:
        """One printable line: id, mission/instrument, type, T0, localization."""
        return describe_event(self.event)


@dataclass(frozen=True, kw_only=True)
class DocumentRecord(_Record):
    """A JSON document (``mma.followup.requests``, ``mma.followup.results``, ...).

    Attributes
    ----------
    document : dict
        The parsed JSON object, as written.
    meta : Metadata
    """

    document: dict

    type = "document"

    def to_json_dict(self) -> dict[str, Any]:
        """``{"type": "document", <metadata>, "document": {...}}``."""
        return {"type": self.type, **self.meta.to_json_dict(), "document": self.document}

    def describe(self) -> str:
        """One printable line from generic fields: schema, kind, status, request and
        event ids, and the first line of ``summary_text``."""
        d = self.document
        event = d.get("event")
        event_id = d.get("event_id")
        if event_id is None and isinstance(event, dict):
            event_id = event.get("id")
        parts = [_field(d.get("schema")), _field(d.get("kind")), _field(d.get("status")),
                 _field(d.get("request_id")), _field(event_id)]
        text = "  ".join(p for p in parts if p)
        summary = d.get("summary_text")
        if isinstance(summary, str) and summary.strip():
            first = summary.strip().splitlines()[0]
            text += f"  — {one_line(first, MAX_TEXT_CHARS)}"
        return printable(text or f"{self.meta.where} JSON object with none of schema, kind, status, request_id, "
                                 "event_id")


@dataclass(frozen=True, kw_only=True)
class DeadLetterRecord(_Record):
    """A dead letter from ``mma.dlq``: a message a stage refused, with why.

    Attributes
    ----------
    reason : str
        One line (header ``mma.dlq.reason``).
    kind : str or None
        The reason's kind (``mma.dlq.kind``), for counting.
    stage : str or None
        The stage that refused it (``ingest.notices``, ...).
    origin_topic, origin_partition, origin_offset
        Where the original message was.
    size : int or None
        Bytes of the original value (``mma.dlq.size``); the value here may be cut.
    truncated : bool
        True when :attr:`value` is only a prefix: ``mma-broker dlq raw OFFSET
        --partition P`` writes the whole original from the raw store.
    sha256 : str or None
        Of the whole original value.
    value : bytes or None
        The original bytes as carried on the topic.
    meta : Metadata
    """

    reason: str
    kind: str | None = None
    stage: str | None = None
    origin_topic: str | None = None
    origin_partition: int | None = None
    origin_offset: int | None = None
    size: int | None = None
    truncated: bool = False
    sha256: str | None = None
    value: bytes | None = None

    type = "dead_letter"

    def to_json_dict(self) -> dict[str, Any]:
        """``{"type": "dead_letter", <metadata>, "dead_letter": {reason, kind, ...}}``
        (the value is left out: ``mma-broker dlq raw`` writes it)."""
        return {"type": self.type, **self.meta.to_json_dict(), "dead_letter": {
            "reason": self.reason, "kind": self.kind, "stage": self.stage,
            "origin": {"topic": self.origin_topic, "partition": self.origin_partition, "offset": self.origin_offset},
            "size": self.size, "truncated": self.truncated, "sha256": self.sha256,
        }}

    def describe(self) -> str:
        """One printable line: where it is, the kind, where it came from, its size and the reason."""
        origin = (f"{self.origin_topic}[{self.origin_partition}]@{self.origin_offset}"
                  if self.origin_topic else "unknown origin")
        size = f"{self.size:,} B" if self.size is not None else "size unknown"
        cut = " (cut)" if self.truncated else ""
        return printable(f"{self.meta.where} {self.kind or 'dead letter'} from {origin} ({self.stage or '-'}), "
                         f"{size}{cut}: {one_line(self.reason, MAX_TEXT_CHARS)}")


@dataclass(frozen=True, kw_only=True)
class UnreadableRecord(_Record):
    """A record that is none of the above (or fails to decode); reading goes on.

    Attributes
    ----------
    error : str
        One line: why it could not be read.
    value : bytes or None
    meta : Metadata
    """

    error: str
    value: bytes | None = None

    type = "unreadable"

    def to_json_dict(self) -> dict[str, Any]:
        """``{"type": "unreadable", <metadata>, "error": "...", "size": N}``."""
        return {"type": self.type, **self.meta.to_json_dict(), "error": self.error,
                "size": None if self.value is None else len(self.value)}

    def describe(self) -> str:
        size = "no value" if self.value is None else f"{len(self.value):,} B"
        return printable(f"{self.meta.where} {size} {self.error}")


Record = Union[EventRecord, DocumentRecord, DeadLetterRecord, UnreadableRecord]
"""What reading one of the broker's topics gives."""


def _field(value: object) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return one_line(value, 80)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def metadata(msg: KafkaMessage) -> Metadata:
    """The :class:`Metadata` of a confluent-kafka message (or a fake with its methods)."""
    try:
        kind, ts = msg.timestamp()
        timestamp_ms = ts if kind != 0 and ts >= 0 else None  # 0: TIMESTAMP_NOT_AVAILABLE
    except Exception:  # noqa: BLE001 - a fake without timestamps
        timestamp_ms = None
    return Metadata(topic=msg.topic() or "", partition=msg.partition() if msg.partition() is not None else -1,
                    offset=msg.offset() if msg.offset() is not None else -1, timestamp_ms=timestamp_ms,
                    key=msg.key(), headers=tuple(msg.headers() or ()))


class Decoder:
    """Turns Kafka messages of the broker's topics into :data:`Record` objects.

    One instance per reader: it keeps the Avro codec (built on the first Avro record).
    """

    def __init__(self) -> None:
        self._codec = None

    def decode(self, msg: KafkaMessage) -> Record:
        """The record of one message; never raises for the message's content."""
        meta = metadata(msg)
        value = msg.value()
        if meta.header("mma.dlq.reason") is not None:
            return _dead_letter(meta, value)
        if value is None:
            return UnreadableRecord(meta=meta, error="no value (a tombstone or an empty record)", value=None)
        try:
            if value[:2] == AVRO_SINGLE_OBJECT_MAGIC:
                return self._event(meta, value)
            fmt = meta.header("_format")
            if fmt == "json" or value.lstrip()[:1] == b"{":
                return _document(meta, value)
        except Exception as exc:  # noqa: BLE001 - one hostile record must not end the reading
            return UnreadableRecord(meta=meta, error=f"not readable: {type(exc).__name__}: {one_line(exc, MAX_TEXT_CHARS)}",
                                    value=value)
        return UnreadableRecord(meta=meta, value=value, error=(
            f"not readable: {'_format ' + repr(fmt) + ', ' if fmt else ''}starts with {value[:12]!r}; expected an "
            "Avro single-object Event, a JSON object or a dead letter"))

    def _event(self, meta: Metadata, value: bytes) -> Record:
        if self._codec is None:
            from broker.serde import EventCodec

            self._codec = EventCodec()
        header = self._codec.header
        if not self._codec.can_read(value):  # this schema version or an earlier one
            declared = meta.header("mma.schema")
            return UnreadableRecord(meta=meta, value=value, error=(
                f"not readable: Avro schema fingerprint {value[2:10].hex()}, this mma-broker reads "
                f"{header[2:10].hex()}" + (f" (the record's mma.schema: {one_line(declared, 200)})" if declared
                                           else "")))
        try:
            event, prov = self._codec.decode(value)
        except Exception as exc:  # noqa: BLE001 - DecodeError, pydantic ValidationError, ...
            return UnreadableRecord(meta=meta, value=value,
                                    error=f"not a readable Event: {type(exc).__name__}: {one_line(exc, MAX_TEXT_CHARS)}")
        return EventRecord(meta=meta, event=event, provenance=prov)


def _document(meta: Metadata, value: bytes) -> Record:
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return UnreadableRecord(meta=meta, value=value, error=f"not a JSON document: {one_line(exc, MAX_TEXT_CHARS)}")
    if not isinstance(doc, dict):
        return UnreadableRecord(meta=meta, value=value, error=f"JSON {type(doc).__name__}, expected an object")
    return DocumentRecord(meta=meta, document=doc)


def _dead_letter(meta: Metadata, value: bytes | None) -> DeadLetterRecord:
    h = meta.header
    return DeadLetterRecord(
        meta=meta, reason=h("mma.dlq.reason") or "", kind=h("mma.dlq.kind"), stage=h("mma.dlq.stage"),
        origin_topic=h("mma.dlq.topic"), origin_partition=_int(h("mma.dlq.partition")),
        origin_offset=_int(h("mma.dlq.offset")), size=_int(h("mma.dlq.size")),
        truncated=h("mma.dlq.truncated") == "true", sha256=h("mma.dlq.sha256"), value=value,
    )


def describe_event(ev: Event, path: object = None) -> str:
    """One printable line for an Event: id, mission/instrument, type, T0, localization.

    Parameters
    ----------
    ev : broker.event.Event
    path : optional
        Put first (``inspect`` names the file).
    """
    loc = ev.localization
    if loc is None:
        where = "no localization"
    elif loc.type == "point":
        r = f" ±{loc.error_radius:.4g}°" if loc.error_radius is not None else ""
        where = f"RA {loc.ra:.4f}° Dec {loc.dec:+.4f}°{r}"
    else:
        where = f"90% area {loc.area_90:.1f} deg² (max at {loc.ra_max:.2f}°, {loc.dec_max:+.2f}°)"
    head = f"{path}: " if path else ""
    inst = f"/{ev.instrument}" if ev.instrument else ""
    return printable(f"{head}{ev.id}  {ev.mission}{inst} {ev.alert_type} T0={ev.time}  {where}")


def to_json_line(record: Record) -> str:
    """One line of JSON for a record (``subscribe --json``): its ``to_json_dict()``.

    A document that held ``NaN`` or ``Infinity`` (which Python's JSON reader accepts
    and JSON does not) gets null there, so every line is valid JSON.
    """
    d = record.to_json_dict()
    try:
        return json.dumps(d, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite_only(d), separators=(",", ":"), allow_nan=False, default=str)


def _finite_only(root: Any) -> Any:
    """A copy of ``root`` with non-finite floats as None; iterative (documents may nest
    as deep as the JSON reader allows)."""
    import math

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            c: Any = dict(v)
        elif isinstance(v, list):
            c = list(v)
        else:
            return v
        stack.append(c)
        return c

    stack: list[Any] = []
    top = fix(root)
    while stack:
        c = stack.pop()
        keys = c.keys() if isinstance(c, dict) else range(len(c))
        for k in keys:
            c[k] = fix(c[k])
    return top
