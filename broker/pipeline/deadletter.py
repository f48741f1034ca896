"""Dead letters: what a stage puts on ``mma.dlq`` for a message it cannot handle.

A dead letter is the original message (key, value, headers) plus headers saying why
and where it came from. It must always be producible, whatever the message held:

* the reason is one line of valid UTF-8, at most :data:`MAX_REASON_CHARS`;
* a value longer than ``max_dlq_bytes`` is cut to that length
  (``mma.dlq.truncated = true``); ``mma.dlq.sha256`` and ``mma.dlq.size`` always
  describe the whole original value, and when the stage has a raw store the whole value
  is stored there first (``mma.dlq.raw.segment`` / ``mma.dlq.raw.offset`` locate it;
  ``mma-broker dlq raw`` gets it back);
* original headers are kept while they total at most :data:`MAX_HEADER_BYTES`
  (otherwise dropped, ``mma.dlq.headers_dropped`` says how many bytes), and a key over
  :data:`MAX_KEY_BYTES` is replaced by its sha256 (hex).

Headers (all values UTF-8 text):

==========================  ===================================================
``mma.dlq.reason``          why, one line (a DecodeError's message, ...)
``mma.dlq.kind``            the reason's kind, for counting and filtering
                            (:func:`reason_kind`: ``over max_json_depth``,
                            ``schema violation``, ``value out of range``, ...)
``mma.dlq.stage``           the stage that refused it (``ingest.notices``, ...)
``mma.dlq.topic``           topic, partition, offset and timestamp (ms) of the
``mma.dlq.partition``       original message
``mma.dlq.offset``
``mma.dlq.timestamp_ms``
``mma.dlq.sha256``          sha256 (hex) and length (bytes) of the original value
``mma.dlq.size``
``mma.dlq.truncated``       ``true`` when the value on the DLQ is a prefix
``mma.dlq.raw.segment``     where the raw store holds the whole value (when stored)
``mma.dlq.raw.offset``
==========================  ===================================================
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.text import one_line

if TYPE_CHECKING:
    from broker.kafka import Outgoing

MAX_REASON_CHARS = 1000
"""Longest reason kept, characters."""
MAX_HEADER_BYTES = 64 * 1024
"""Original headers kept on a dead letter while their total is at most this, bytes."""
MAX_KEY_BYTES = 4096
"""A longer original key is replaced by its sha256."""


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (SQLAlchemy appends the SQL on later lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


_KINDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^follow-up trigger: "), "unreadable mma.events record"),
    (re.compile(r"^followup\.\w+ failed: (\w+)"), "follow-up error: {0}"),
    (re.compile(r"decode took more than (max_decode_cpu_s)"), "over {0}"),
    (re.compile(r"over the limit (\w+)"), "over {0}"),
    (re.compile(r"more than (max_\w+)"), "over {0}"),
    (re.compile(r"bytes encoded, over the limit"), "event too large"),
    (re.compile(r"^message has no value"), "no value (tombstone)"),
    (re.compile(r"^decoder failed"), "decoder bug"),
    (re.compile(r"^archive refused"), "archive refused"),
    (re.compile(r"Kafka refused"), "Kafka refused"),
    (re.compile(r"schema violation"), "schema violation"),
    (re.compile(r"invalid JSON|JSON alert must be"), "invalid JSON"),
    (re.compile(r"malformed XML|not well-formed"), "malformed XML"),
    (re.compile(r"not valid Unicode|not UTF-8|lone surrogate"), "invalid Unicode"),
    (re.compile(r"control character"), "control character"),
    (re.compile(r"date-time|ISO 8601|ISOTime|is outside 1900|outside \d{4}\.\.\d{4}|\bjd\b"), "bad time"),
    (re.compile(r"is outside \[|not a finite number|out of range"), "value out of range"),
    (re.compile(r"truncated|corrupt|ends before"), "truncated or corrupt"),
    (re.compile(r"unknown format|unsupported|is neither|not an? (IGWN|GCN|ZTF)"), "not a known alert format"),
]


def reason_kind(reason: str) -> str:
    """A short kind for a dead letter's reason, to count and filter dead letters by.

    Examples
    --------
    >>> reason_kind("JSON nesting depth (arrays and objects) is over the limit max_json_depth = 64 (got 65)")
    'over max_json_depth'
    >>> reason_kind("invalid value: dec = 200.0 deg is outside [-90, 90]")
    'value out of range'
    """
    for pattern, kind in _KINDS:
        m = pattern.search(reason)
        if m:
            return kind.format(*m.groups())
    return "other"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record for ``mma.dlq``, ready for ``producer.produce(topic, **record.kwargs())``."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    def kwargs(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "headers": self.headers}

    def size(self) -> int:
        """Bytes of key, value and headers (what Kafka counts against its limits)."""
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v or b"") for k, v in self.headers))


def dead_letter(msg: Any, reason: str, stage: str, *, max_bytes: int, raw_ref: Any = None) -> DeadLetter:
    """Build the dead letter of ``msg`` (a confluent_kafka.Message or anything alike).

    Parameters
    ----------
    msg : confluent_kafka.Message
        The message refused.
    reason : str
        Why; made one line of valid UTF-8 here.
    stage : str
        Name of the refusing stage.
    max_bytes : int
        Longest value copied (``DecodeLimits.max_dlq_bytes``), bytes.
    raw_ref : broker.archive.raw.RawRef, optional
        Where the raw store keeps the whole value.

    Returns
    -------
    DeadLetter
    """
    value = msg.value()
    key = msg.key()
    original = list(msg.headers() or [])
    header_bytes = sum(len(k) + len(v or b"") for k, v in original)
    headers: list[tuple[str, bytes | None]] = original if header_bytes <= MAX_HEADER_BYTES else []
    if key is not None and len(key) > MAX_KEY_BYTES:
        key = hashlib.sha256(key).hexdigest().encode()
    try:
        _, ts = msg.timestamp()
    except Exception:  # noqa: BLE001 - a fake or odd message without a timestamp
        ts = -1

    def h(name: str, text: object) -> None:
        headers.append((name, str(text).encode("utf-8", "backslashreplace")))

    h("mma.dlq.reason", one_line(reason))
    h("mma.dlq.kind", reason_kind(reason))
    h("mma.dlq.stage", stage)
    h("mma.dlq.topic", msg.topic() or "")
    h("mma.dlq.partition", msg.partition())
    h("mma.dlq.offset", msg.offset())
    h("mma.dlq.timestamp_ms", ts)
    if header_bytes > MAX_HEADER_BYTES:
        h("mma.dlq.headers_dropped", header_bytes)
    if value is not None:
        h("mma.dlq.sha256", hashlib.sha256(value).hexdigest())
        h("mma.dlq.size", len(value))
        if len(value) > max_bytes:
            value = value[:max_bytes]
            h("mma.dlq.truncated", "true")
    if raw_ref is not None:
        h("mma.dlq.raw.segment", raw_ref.segment if raw_ref.segment is not None else "")
        h("mma.dlq.raw.offset", raw_ref.offset if raw_ref.offset is not None else "")
    return DeadLetter(key=key, value=value, headers=headers)


def minimal(letter: DeadLetter) -> DeadLetter:
    """The same dead letter with no value and only the ``mma.dlq.*`` headers.

    The last resort when Kafka refuses a dead letter as too large (a topic whose
    ``max.message.bytes`` is below ``max_dlq_bytes``): the reason, origin and sha256
    still reach the DLQ, and the value stays in the raw store.
    """
    headers = [(k, v) for k, v in letter.headers if k.startswith("mma.dlq.")]
    if not any(k == "mma.dlq.truncated" for k, _ in headers):
        headers.append(("mma.dlq.truncated", b"true"))
    return DeadLetter(key=None, value=None, headers=headers)


def triage_refused(refused: list[tuple[Outgoing, str]], dlq_topic: str, stage: str,
                   ) -> tuple[list[Outgoing], list[tuple[Any, str]]]:
    """Sort the records Kafka refused for what they are (:func:`broker.kafka.publish`).

    Parameters
    ----------
    refused : list of (Outgoing, str)
        Records and reasons. A dead letter is tagged ``("dlq", DeadLetter)``; an
        output record is tagged with the consumed message it came from.
    dlq_topic, stage : str

    Returns
    -------
    resend : list of Outgoing
        The refused dead letters again, each without its value (:func:`minimal`).
    origins : list of (message, reason)
        The consumed messages whose outputs were refused: they become dead letters.

    Raises
    ------
    BrokerError
        When even a value-less dead letter was refused (the DLQ topic's
        ``max.message.bytes`` is below a few kB: a configuration error).
    """
    from broker.errors import BrokerError
    from broker.kafka import Outgoing

    resend: list[Outgoing] = []
    origins: list[tuple[Any, str]] = []
    for rec, reason in refused:
        if isinstance(rec.tag, tuple) and rec.tag[0] == "dlq":
            small = minimal(rec.tag[1])
            resend.append(Outgoing(dlq_topic, tag=("dlq-minimal", small), **small.kwargs()))
        elif isinstance(rec.tag, tuple):
            raise BrokerError(f"{stage}: {dlq_topic} refused even a value-less dead letter: {reason}")
        elif rec.tag is not None:
            origins.append((rec.tag, reason))
    return resend, origins
