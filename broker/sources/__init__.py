"""Upstream alert formats: sniff the wire format, decode, normalize to Events.

One module per upstream protocol, each registered as an alert decoder plugin
(:class:`~broker.sources.decoder.AlertDecoder`, entry-point group
``mma_broker.sources``; a package of its own can add formats the same way):

* :mod:`broker.sources.igwn`    — IGWN ``igwn.gwalert`` JSON and Avro (LVK alerts)
* :mod:`broker.sources.gcn`     — GCN Kafka JSON notices of the unified schema
* :mod:`broker.sources.voevent` — VOEvent XML: GCN Classic notices, LVC VOEvents of every era
  (handed to igwn), and other streams (Gaia, ASAS-SN: ``source="voevent"``)
* :mod:`broker.sources.ztf`     — ZTF Avro alert packets, and ZTF alerts relayed by Fink and other brokers
* :mod:`broker.sources.lsst`    — Rubin/LSST alerts (Confluent wire format, schemas by id)
* :mod:`broker.sources.avro`    — Avro object-container header parsing shared by the above

Every decoder takes the raw bytes exactly as upstream sent them and returns a list of
:class:`~broker.event.Event` (an Avro container may hold many alerts) or raises
:class:`~broker.errors.DecodeError` with a one-line reason. ``upstream_topic`` gives
the Kafka topic a file would have had upstream, for ``mma-broker replay``.

JSON alerts (IGWN gwalerts, GCN unified-schema notices) are checked against the upstream
JSON schemas in ``broker/schemas/upstream/`` before normalization (:mod:`broker.validation`);
Avro records are typed by their writer schema as fastavro reads them.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

from pydantic import ValidationError

from broker.category import set_category
from broker.errors import DecodeError
from broker.event import Event, validation_reason
from broker.limits import DecodeLimits, decode_scope, over_limit
from broker.sources.decoder import AlertDecoder
from broker.text import one_line

log = logging.getLogger(__name__)

AVRO_MAGIC = b"Obj\x01"


def sniff_format(data: bytes) -> str:
    """Return ``"avro"``, ``"voevent"`` or ``"json"`` from the first bytes of a message.

    ``"avro"`` is an Avro object container (``Obj\\x01``) or a message in the Confluent
    wire format (byte 0, a 4-byte big-endian schema id, one Avro datum: Rubin/LSST)
    whose schema id is below 2**24 (a registry numbers its schemas from 1: no registry
    holds 16 million), so that other binary starting with a NUL byte is not taken for it.

    Raises
    ------
    DecodeError
        If the bytes are none of the three (empty, binary of another kind, text).
    """
    if data[:4] == AVRO_MAGIC:
        return "avro"
    if data[:2] == b"\x00\x00" and len(data) > 5:  # broker.sources.avro.is_wire_format
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
    raise DecodeError(f"unknown format: starts with {data[:16]!r}, expected Avro (container or Confluent wire format), XML or JSON")


_FEW_STRINGS = 20_000  # quotes up to which the bytes between strings are copied out and scanned


def _json_shape(data: bytes) -> tuple[int, int]:
    """Nesting depth and item count of a JSON text, from its bytes, in linear time.

    Only the structural bytes outside string literals count: a string starts and
    ends at a ``"`` not escaped by an odd run of backslashes (UTF-8 multi-byte
    sequences hold no ASCII byte, so the scan works on the raw bytes). Vectorized
    with numpy: one pass finds the quotes; with few strings only the bytes between
    them are scanned further, else three more passes into one reused buffer. For
    the 2 MB IGWN alert with two sky maps (``MS181101ab-ext-update.json``): 0.3 ms on
    a quiet heap, 0.9 ms (median) inside a decode loop, against 0.8 / 2.4 ms for its
    ``json.loads`` and 13 ms for its whole decode; 0.02 ms for a 1 kB GCN notice.
    On invalid JSON the numbers are approximate; the parser rejects it next.

    Returns
    -------
    depth : int
        Deepest nesting of arrays and objects (``{"a": [1]}`` is 2).
    items : int
        Array items and object members, summed: commas plus containers, an upper
        bound (an empty container counts one).
    """
    import numpy as np

    a = np.frombuffer(data, dtype=np.uint8)
    buf = np.empty(a.shape, dtype=bool)
    quotes = np.flatnonzero(np.equal(a, 0x22, out=buf))
    if quotes.size:
        after_bs = quotes[quotes > 0]
        after_bs = after_bs[a[after_bs - 1] == 0x5C]
        if after_bs.size:  # a quote after backslashes is escaped if their run is odd
            bs = np.flatnonzero(np.equal(a, 0x5C, out=buf))
            run_starts = np.flatnonzero(np.concatenate(([True], bs[1:] != bs[:-1] + 1)))
            last = np.searchsorted(bs, after_bs - 1)  # index in bs of the backslash before
            first = run_starts[np.searchsorted(run_starts, last, side="right") - 1]
            quotes = np.setdiff1d(quotes, after_bs[(last - first) % 2 == 0], assume_unique=True)

    if quotes.size % 2 == 0 and quotes.size <= _FEW_STRINGS:
        # Few strings (an IGWN alert: ~150, one of them a 1 MB sky map): scan only the
        # bytes between them, a few kB, instead of three more passes over the whole.
        bounds = np.concatenate(([0], quotes, [a.size])).tolist()
        a = np.frombuffer(b"".join(data[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)), np.uint8)
        buf, quotes = np.empty(a.shape, dtype=bool), quotes[:0]

    def outside_strings(pos):  # an even number of quotes before
        return pos[np.searchsorted(quotes, pos) % 2 == 0] if quotes.size and pos.size else pos

    folded = np.bitwise_or(a, 0x20)  # "[" → "{", "]" → "}"
    opens = outside_strings(np.flatnonzero(np.equal(folded, 0x7B, out=buf)))
    closes = outside_strings(np.flatnonzero(np.equal(folded, 0x7D, out=buf)))
    commas = outside_strings(np.flatnonzero(np.equal(a, 0x2C, out=buf)))
    items = int(commas.size + opens.size)
    if not opens.size:
        return 0, items
    order = np.argsort(np.concatenate((opens, closes)), kind="stable")
    step = np.concatenate((np.ones(opens.size, np.int64), np.full(closes.size, -1, np.int64)))[order]
    return max(int(np.cumsum(step).max()), 0), items


def _load_json(data: bytes) -> dict:
    """Parse a JSON alert within the limits: UTF-8, nesting, size of numbers.

    The nesting depth (``max_json_depth``) and the number of array items and object
    members (``max_json_items``) are measured on the bytes before parsing
    (:func:`_json_shape`), so that neither the parser's recursion nor the schema
    validator's work can grow without bound.

    Raises
    ------
    DecodeError
        Naming the limit, or ``invalid JSON`` with the parser's reason: not UTF-8
        (RFC 8259 section 8.1; UTF-16/32 are refused too), bad syntax, an integer of more digits than Python
        converts (``sys.get_int_max_str_digits()``, 4300), not an object. (Lone
        surrogates, which ``json`` lets through from ``\\ud800`` escapes or encoded
        in the bytes, are refused by :class:`~broker.event.Event` where they land.)
    """
    import sys

    from broker.limits import check_cpu, current_limits

    encoding = json.detect_encoding(data)
    if encoding not in ("utf-8", "utf-8-sig"):  # _json_shape reads UTF-8 (so does every producer)
        raise DecodeError(f"invalid JSON: {encoding}, not UTF-8 (RFC 8259 section 8.1)")
    limits = current_limits()
    depth, items = _json_shape(data)
    if depth > limits.max_json_depth:
        raise over_limit("max_json_depth", depth, "JSON nesting depth (arrays and objects)")
    if items > limits.max_json_items:
        raise over_limit("max_json_items", items, "JSON array items and object members")
    try:
        obj = json.loads(data)  # bytes: decoded with "surrogatepass" (Event refuses surrogates)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid JSON: not {exc.encoding} ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    except ValueError:  # int() of more digits than sys.get_int_max_str_digits()
        most = sys.get_int_max_str_digits()
        # where: runs of digits found in one vectorized pass (a regex for runs longer
        # than `most` backtracked: a red-team pass measured 41 s for 16 MB of 4,300-digit runs)
        import numpy as np

        digit = np.frombuffer(data, np.uint8) - np.uint8(48) < 10
        edges = np.flatnonzero(np.diff(np.concatenate(([False], digit, [False])).astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        long_runs = np.flatnonzero(ends - starts > most)
        found = ""
        if long_runs.size:
            i = int(long_runs[0])
            found = f" at byte {int(starts[i])} has {int(ends[i] - starts[i]):,} digits,"
        raise DecodeError(f"invalid JSON: an integer{found} longer than the {most} digits Python converts") from None
    check_cpu("JSON parse")
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
            raise DecodeError(f"decoder failed: {type(exc).__name__}: {one_line(str(exc), 300)}") from exc


def decode_unguarded(data: bytes) -> list[Event]:
    """:func:`decode` without the catch-all and the size check: decoders' own errors only.

    For the fuzz tests, which must see every exception that is not a DecodeError
    (each one is a decoder bug even though :func:`decode` contains it). Parameters,
    returns and the DecodeErrors raised are those of :func:`decode`.
    """
    try:
        return _dispatch(data)
    except ValidationError as exc:  # an Event field out of range, invalid Unicode, ...
        raise DecodeError(f"invalid value: {validation_reason(exc)}") from None


def _dispatch(data: bytes) -> list[Event]:
    fmt = sniff_format(data)
    decoder, parsed = _choose(fmt, data)
    events = decoder.decode(data, parsed)
    for event in events:  # the one place every decoded Event gets its category (broker.category)
        set_category(event)
    return events


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
    fmt = sniff_format(data)
    decoder, parsed = _choose(fmt, data)
    return decoder.upstream_topic(data, parsed)


def _choose(fmt: str, data: bytes) -> tuple[AlertDecoder, object]:
    """The first decoder of ``fmt`` (by priority) that accepts the message, and the
    parsed form it gets: the Avro header, the JSON object, or the raw VOEvent bytes."""
    if fmt == "avro":
        from broker.sources import avro

        # an object container's header, or a Confluent wire-format message's schema id
        parsed: object = avro.read_header(data) if data[:4] == AVRO_MAGIC else avro.read_wire_header(data)
    elif fmt == "json":
        parsed = _load_json(data)
    else:
        parsed = data
    candidates = decoders().get(fmt, ())
    for decoder in candidates:
        if decoder.accepts(parsed):
            return decoder, parsed
    if fmt == "avro":
        raise DecodeError(f"unsupported Avro schema {parsed.schema_name!r}")  # type: ignore[attr-defined]
    if not candidates:
        raise DecodeError(f"no decoder for {_FORMAT_NAMES[fmt]} is installed")
    raise DecodeError(f"{_FORMAT_NAMES[fmt]} is neither {' nor '.join(d.describes for d in candidates)}")


_FORMAT_NAMES = {"avro": "Avro", "voevent": "VOEvent XML", "json": "JSON"}


@lru_cache(maxsize=1)
def decoders() -> dict[str, tuple[AlertDecoder, ...]]:
    """The registered alert decoders (entry-point group ``mma_broker.sources``) by wire
    format, each tuple in the order they are tried (``priority``, then name).

    Loaded once per process, on the first message. A plugin that fails to load, or
    that is not an :class:`~broker.sources.decoder.AlertDecoder`, is left out with one
    warning naming it: the other formats go on (its messages then end as dead letters
    saying no decoder took them).
    """
    from broker import plugins

    found: dict[str, list[tuple[int, str, AlertDecoder]]] = {}
    for name in plugins.available(plugins.SOURCES):
        try:
            decoder = plugins.load(plugins.SOURCES, name)
            if not isinstance(decoder, AlertDecoder) or decoder.format not in _FORMAT_NAMES:
                raise plugins.PluginError(f"plugin {name!r} ({plugins.SOURCES}) is not an AlertDecoder of a known "
                                          f"format ({', '.join(_FORMAT_NAMES)})")
        except plugins.PluginError as exc:
            log.warning("%s; left out of decoding", exc)
            continue
        found.setdefault(decoder.format, []).append((decoder.priority, name, decoder))
    return {fmt: tuple(d for _, _, d in sorted(entries, key=lambda e: e[:2])) for fmt, entries in found.items()}
