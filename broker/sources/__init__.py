"""Upstream alert formats: sniff the wire format, decode, normalize to Events.

One module per upstream protocol:

* :mod:`broker.sources.igwn`    — IGWN ``igwn.gwalert`` JSON and Avro (LVK alerts)
* :mod:`broker.sources.gcn`     — GCN Kafka JSON notices of the unified schema
* :mod:`broker.sources.voevent` — GCN Classic VOEvent XML (LVC VOEvents handed to igwn)
* :mod:`broker.sources.ztf`     — ZTF Avro alert packets
* :mod:`broker.sources.avro`    — Avro object-container header parsing shared by the above

Every decoder takes the raw bytes exactly as upstream sent them and returns a list of
:class:`~broker.event.Event` (an Avro container may hold many alerts) or raises
:class:`~broker.errors.DecodeError` with a one-line reason. ``upstream_topic`` gives
the Kafka topic a file would have had upstream, for ``mma-broker replay``.

JSON alerts (IGWN gwalerts, GCN unified-schema notices) are checked against the upstream
JSON schemas in ``schemas/upstream/`` before normalization (:mod:`broker.validation`);
Avro records are typed by their writer schema as fastavro reads them.
"""

from __future__ import annotations

import json

from broker.errors import DecodeError
from pydantic import ValidationError

from broker.event import Event, validation_reason
from broker.limits import DecodeLimits, decode_scope, over_limit

AVRO_MAGIC = b"Obj\x01"


def sniff_format(data: bytes) -> str:
    """Return ``"avro"``, ``"voevent"`` or ``"json"`` from the first bytes of a message.

    Raises
    ------
    DecodeError
        If the bytes are none of the three (empty, binary of another kind, text).
    """
    if data[:4] == AVRO_MAGIC:
        return "avro"
    head = data[:64].lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head[:1] == b"<":
        return "voevent"
    if head[:1] in (b"{", b"["):
        return "json"
    if not data:
        raise DecodeError("empty message")
    raise DecodeError(f"unknown format: starts with {data[:16]!r}, expected Avro container, XML or JSON")


def _load_json(data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"JSON alert must be an object, got {type(obj).__name__}")
    return obj


def decode(data: bytes, limits: DecodeLimits | None = None) -> list[Event]:
    """Decode and normalize one upstream message (or one alert file), within limits.

    Parameters
    ----------
    data : bytes
        The message value exactly as upstream sent it.
    limits : DecodeLimits, optional
        Bounds on size, nesting, decompression and CPU time (:mod:`broker.limits`);
        the defaults when None.

    Returns
    -------
    list of Event
        One Event per alert held (Avro containers may hold several).

    Raises
    ------
    DecodeError
        With a one-line reason when the bytes are not a supported alert, when a JSON
        alert violates its upstream schema (naming the JSON path and schema), when the
        message is over a limit (naming the limit), or when a value is out of range.
        Nothing else escapes: an unexpected exception in a decoder (a bug) becomes a
        DecodeError saying so, so that one message can never stop a stage.
    """
    with decode_scope(limits) as lim:
        if len(data) > lim.max_message_bytes:
            raise over_limit("max_message_bytes", len(data), "message size in bytes")
        try:
            return decode_unguarded(data)
        except DecodeError:
            raise
        except RecursionError:
            raise DecodeError("decoder failed: input nested too deeply (RecursionError)") from None
        except MemoryError:
            raise DecodeError("decoder failed: out of memory decoding this message (MemoryError)") from None
        except Exception as exc:  # a decoder bug must not stop the stream
            raise DecodeError(f"decoder failed: {type(exc).__name__}: {one_line(str(exc))}") from exc


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters, safe to encode as UTF-8."""
    text = " ".join(text.split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_unguarded(data: bytes) -> list[Event]:
    """:func:`decode` without the catch-all and the size check: decoders' own errors only.

    For the fuzz tests, which must see every exception that is not a DecodeError
    (each one is a decoder bug even though :func:`decode` contains it).

    Parameters
    ----------
    data : bytes
        The message value exactly as upstream sent it.

    Returns
    -------
    list of Event
        One Event per alert held (Avro containers may hold several).

    Raises
    ------
    DecodeError
        With a one-line reason when the bytes are not a supported alert, or when a
        JSON alert violates its upstream schema (naming the JSON path and schema).
    """
    try:
        return _dispatch(data)
    except ValidationError as exc:  # an Event field out of range, invalid Unicode, ...
        raise DecodeError(f"invalid value: {validation_reason(exc)}") from None


def _dispatch(data: bytes) -> list[Event]:
    from broker.sources import avro, gcn, igwn, voevent, ztf
    from broker.validation import default_validator

    fmt = sniff_format(data)
    if fmt == "avro":
        header = avro.read_header(data)
        if ztf.is_ztf_schema(header):
            return ztf.decode(data, header)
        if igwn.is_igwn_schema(header):
            return igwn.decode_avro(data, header)
        raise DecodeError(f"unsupported Avro schema {header.schema_name!r}")
    if fmt == "voevent":
        return voevent.decode(data)
    obj = _load_json(data)
    if igwn.is_igwn_alert(obj):
        default_validator().validate_igwn(obj)
        return [igwn.decode_json(obj)]
    if gcn.is_gcn_notice(obj):
        default_validator().validate_gcn(obj)
        return [gcn.decode(obj)]
    raise DecodeError(
        "JSON is neither an IGWN gwalert (no 'superevent_id') nor a GCN unified-schema notice (no '$schema')"
    )


def upstream_topic(data: bytes) -> str:
    """The upstream Kafka topic this message would have been published on.

    ``igwn.gwalert``; ``gcn.classic.voevent.<PACKET_TYPE_NAME>``;
    ``gcn.notices.<mission>.<...>`` (from the notice's ``$schema``);
    ``ztf_YYYYMMDD_programidN`` (UTC night of the first candidate).

    Raises
    ------
    DecodeError
        When the format is not recognized.
    """
    from broker.sources import avro, gcn, igwn, voevent, ztf

    fmt = sniff_format(data)
    if fmt == "avro":
        header = avro.read_header(data)
        if ztf.is_ztf_schema(header):
            return ztf.upstream_topic(data, header)
        if igwn.is_igwn_schema(header):
            return igwn.TOPIC
        raise DecodeError(f"unsupported Avro schema {header.schema_name!r}")
    if fmt == "voevent":
        return voevent.upstream_topic(data)
    obj = _load_json(data)
    if igwn.is_igwn_alert(obj):
        return igwn.TOPIC
    if gcn.is_gcn_notice(obj):
        return gcn.upstream_topic(obj)
    raise DecodeError("JSON is neither an IGWN gwalert nor a GCN unified-schema notice")
