"""ZTF Avro alert packets: fast decode and normalization to Events.

ZTF publishes one alert per Kafka message, each a complete Avro object container
(schema ``ztf.alert``, versions 3.x and 4.x; https://zwickytransientfacility.github.io/
ztf-avro-alert/schema.html, Masci et al. 2019, PASP 131, 018003; Patterson et al. 2019,
PASP 131, 018001). Most of a packet's bytes and decode time are the photometric history
(``prv_candidates``, ``fp_hists`` forced photometry in 4.x) and the three gzipped FITS
cutouts; the Event needs none of them.

How decoding is made fast (per alert, on the real packets in ``tests/data/ztf``, this
2-core machine): a naive ``fastavro.reader`` per message ≈ 0.95 ms (schema parse +
full decode); a full ``schemaless_reader`` with a cached parsed schema ≈ 0.7 ms; a
reader schema that projects to the needed fields ≈ 0.4 ms (fastavro still walks every
skipped array element); decoding only the record *prefix* ≈ 0.03 ms. We use the
prefix; with the cached header parse (≈ 8 µs) and normalization (≈ 10 µs), decode +
normalize is ≈ 0.06–0.1 ms per alert (``benchmarks/bench_decode.py``):

* Avro writes record fields in schema order, and in every ZTF schema the fields the
  Event needs (``schemavsn, publisher, objectId, candid, candidate``) come first. Per
  writer schema (memoized by its JSON bytes) we compile a sub-schema of the leading
  fields up to the last needed one, and read only that with
  :func:`fastavro.schemaless_reader`; the history and cutouts are never touched.
* The order is verified per writer schema at run time: if a needed field comes after
  a history/cutout field (an unknown future layout), that schema is decoded in full
  instead — slower, still correct. A schema lacking a needed field is a DecodeError.
* A container holding several alerts (archives, not the live stream) needs the end
  of each record to find the next: the tail is skipped with fastavro's resolution
  against an empty reader record (about twice as fast as decoding it).
* :func:`decode_history` decodes the history and cutouts on demand, for the stages
  that need them.

ZTF alerts relayed by other brokers
-----------------------------------
Fink (and other brokers that re-publish ZTF alerts as Avro containers written by Spark,
top-level schema ``topLevelRecord`` or ``topLevelRecord.value``) keep the ZTF fields
(``candid, objectId, candidate, prv_candidates``, cutouts; ``schemavsn`` and
``publisher`` when present, in any order) and add their own columns (``cdsxmatch,
rf_snia_vs_nonia, snn_*, mulens, roid``, anomaly scores, ...). Any container whose
top-level record has ``objectId``, ``candid`` and a ``candidate`` record with ``jd``,
``ra`` and ``dec`` is read as a relayed ZTF alert (:func:`relayed_layout`): the Event is
the one the original alert gives — ``source`` ``"ztf"``, ``id`` ``"ztf:<candid>"`` (so
the archive keeps one row however many brokers relayed it) — plus ``relayed_by`` (the
broker, from its ``publisher`` column lower-cased, else ``"relay"``) and the broker's
columns under ``properties.annotations.<broker>``, made JSON-safe (NaN and ±Inf → null,
timestamps → ISO 8601 strings, bytes → null). The history and cutouts are skipped
(:class:`broker.sources.avro.FieldReader`); :func:`decode_history` and
:func:`filters.ztf_history.decode_history` read them as for ZTF's own packets.

Hostile input
-------------
The writer schema travels with every message, so a sender can type any field as it
likes. Containers are read through :mod:`broker.sources.avro` (bounded decompression,
refused recursive or zero-byte-item schemas, the Python values a message decodes to
(records' fields, array items) bounded by ``max_array_items``), and normalization
trusts no type: the candidate's ``jd``, ``ra`` and ``dec`` must be finite numbers in
range (``jd`` within 1900–2200, ``dec`` within ±90°, ``ra`` within 0–360° with 360
taken as 0) or the alert is a DecodeError naming the field; a property of the wrong
type, NaN or ±Inf becomes None.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import fastavro
from pydantic import ValidationError

from broker.errors import DecodeError
from broker.event import Event, PointLocalization, format_time
from broker.limits import check_cpu
from broker.sources import avro
from broker.sources.avro import AvroHeader
from broker.sources.decoder import AlertDecoder

log = logging.getLogger(__name__)

SCHEMA_NAME = "ztf.alert"

#: Fields the Event is built from; all of them must exist in a ZTF writer schema.
NEEDED_FIELDS = ("schemavsn", "publisher", "objectId", "candid", "candidate")
#: Fields that must never be decoded on the fast path (they are the cost).
HISTORY_FIELDS = frozenset(
    {"prv_candidates", "fp_hists", "cutoutScience", "cutoutTemplate", "cutoutDifference"}
)

#: Positional error circle radius given to every ZTF candidate, deg (0.36 arcsec).
#: ZTF astrometry is calibrated against Gaia to ≲ 0.1 arcsec rms per axis for bright
#: sources (Masci et al. 2019, §5), but a typical alert is a faint difference-image
#: detection whose centroid error, ≈ FWHM / (2.35 · S/N) with FWHM ≈ 2 arcsec at
#: S/N ≈ 5–10, is 0.1–0.2 arcsec per axis; 0.36 arcsec covers that radially. ZTF
#: does not state a containment probability, so ``containment`` is None.
ERROR_RADIUS_DEG = 1e-4

#: ZTF filter id → band name (candidate ``fid``).
BANDS = {1: "g", 2: "r", 3: "i"}

#: TNS's name for the ZTF camera on the Palomar 48-inch Samuel Oschin telescope
#: ("P48 - ZTF-Cam"), so reports to TNS can map it directly.
INSTRUMENT = "ZTF-Cam"

#: Julian Date of the Unix epoch 1970-01-01T00:00:00 UTC.
JD_UNIX_EPOCH = 2440587.5

_EPOCH = datetime(1970, 1, 1)

#: Range of ``candidate.jd`` accepted: 1900-01-01 to 2200-01-01 UTC (ZTF began
#: observing in 2018; the bounds only reject values no alert can carry).
JD_MIN = 2415020.5
JD_MAX = 2524593.5

#: Float candidate fields copied into Event.properties (NaN, ±Inf → None).
_FLOAT_PROPS = (
    "magpsf", "sigmapsf", "magap", "diffmaglim", "rb", "sgscore1", "distpsnr1",
    "ssdistnr", "ssmagnr", "jdstarthist",
)
#: Integer candidate fields copied as they are.
_INT_PROPS = ("programid", "fid", "ndethist", "ncovhist", "field", "rcid", "nid")
#: Fields some schema versions lack (3.2 has no ``drb``); copied only when the writer
#: schema has them, so the absence of a key means "not in this schema version".
_OPTIONAL_FLOAT_PROPS = ("drb",)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read records of one writer schema (compiled once per schema)."""

    prefix: dict[str, Any] | None  # parsed sub-schema of the leading fields; None → full decode
    tail: dict[str, Any] | None  # parsed schema of the remaining fields (to skip them)
    tail_skip: dict[str, Any] | None  # empty reader record resolving ``tail`` = skip it
    full: dict[str, Any]  # parsed full writer schema
    optional: tuple[str, ...]  # members of _OPTIONAL_FLOAT_PROPS this schema has
    full_shape: avro.SchemaShape  # bounds of the full records (array items to budget)


@lru_cache(maxsize=avro.SCHEMA_CACHE_SIZE)
def _plan(schema_json: bytes) -> _Plan:
    schema, full, name = avro.parse_schema_json(schema_json)
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, list) or schema.get("type") != "record":
        raise DecodeError(f"ZTF alert schema {name!r} is not an Avro record")
    names = [f.get("name") if isinstance(f, dict) else None for f in fields]
    missing = [n for n in NEEDED_FIELDS if n not in names]
    if missing:
        raise DecodeError(f"ZTF alert schema {name!r} has no field {missing[0]!r}")
    cand = next(f["type"] for f in fields if f.get("name") == "candidate")
    cand_names = {f["name"] for f in cand.get("fields", ())} if isinstance(cand, dict) else set()
    optional = tuple(n for n in _OPTIONAL_FLOAT_PROPS if n in cand_names)

    full_shape = avro.schema_shape(schema_json)
    last = max(names.index(n) for n in NEEDED_FIELDS)
    heavy = [n for n in names[: last + 1] if n in HISTORY_FIELDS]
    if heavy:
        log.info("ZTF schema %s: %r precedes a needed field, decoding in full", schema.get("version", name), heavy[0])
        return _Plan(None, None, None, full, optional, full_shape)
    try:
        named: dict[str, Any] = {}
        prefix = fastavro.parse_schema(dict(schema, fields=fields[: last + 1]), named_schemas=named)
        tail_name = f"{name}__tail"
        tail = fastavro.parse_schema({"type": "record", "name": tail_name, "fields": fields[last + 1 :]}, named_schemas=named)
        skip = fastavro.parse_schema({"type": "record", "name": tail_name, "fields": []}, named_schemas={})
    except Exception as exc:  # an odd but valid layout: stay correct, decode in full
        log.info("ZTF schema %s: no prefix plan (%s), decoding in full", name, exc)
        return _Plan(None, None, None, full, optional, full_shape)
    return _Plan(prefix, tail, skip, full, optional, full_shape)


def is_ztf_schema(header: AvroHeader) -> bool:
    """True when the container's writer schema is a ZTF alert.

    Parameters
    ----------
    header : AvroHeader
        A parsed container header.

    Returns
    -------
    bool
        Whether the top-level schema's full name is ``ztf.alert`` (every version), or
        the schema is a ZTF alert relayed by another broker (:func:`relayed_layout`).
    """
    if header.schema_name == SCHEMA_NAME:
        return True
    schema_json = getattr(header, "schema_json", None)  # a Confluent wire-format header has none
    return schema_json is not None and relayed_layout(schema_json) is not None


#: Top-level fields of ZTF's own alert schemas (3.x, 4.x); in a relayed alert every
#: other field is the relaying broker's.
ZTF_FIELDS = frozenset(NEEDED_FIELDS) | HISTORY_FIELDS


@dataclass(frozen=True, slots=True)
class RelayedLayout:
    """How to read ZTF alerts relayed by another broker (one writer schema)."""

    reader: avro.FieldReader  # decodes the ZTF fields the Event needs and the broker's columns
    optional: tuple[str, ...]  # members of _OPTIONAL_FLOAT_PROPS the candidate has
    annotations: tuple[str, ...]  # the broker's added columns, in writer order


@lru_cache(maxsize=avro.SCHEMA_CACHE_SIZE)
def relayed_layout(schema_json: bytes) -> RelayedLayout | None:
    """The layout of a relayed-ZTF writer schema, or None when the schema is not one.

    A relayed ZTF alert is a top-level record, not named ``ztf.alert``, with the fields
    ``objectId``, ``candid`` and ``candidate``, the last a record (or nullable record)
    with ``jd``, ``ra`` and ``dec``: what Fink's ``topLevelRecord`` has.

    Parameters
    ----------
    schema_json : bytes
        The container's ``avro.schema``.
    """
    try:
        schema, _, name = avro.parse_schema_json(schema_json)
    except DecodeError:
        return None
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if name == SCHEMA_NAME or schema.get("type") != "record" or not isinstance(fields, list):
        return None
    by_name = {f.get("name"): f for f in fields if isinstance(f, dict)}
    if not {"objectId", "candid", "candidate"} <= by_name.keys():
        return None
    cand = by_name["candidate"].get("type")
    cand = next((b for b in (cand if isinstance(cand, list) else [cand]) if isinstance(b, dict)), None)
    if cand is None or cand.get("type") != "record":
        return None
    cand_names = {f.get("name") for f in cand.get("fields", ()) if isinstance(f, dict)}
    if not {"jd", "ra", "dec"} <= cand_names:
        return None
    annotations = tuple(n for n in by_name if isinstance(n, str) and n not in ZTF_FIELDS)
    reader = avro.field_reader(schema_json, frozenset(NEEDED_FIELDS) | frozenset(annotations))
    return RelayedLayout(reader, tuple(n for n in _OPTIONAL_FLOAT_PROPS if n in cand_names), annotations)


def _relayed_records(data: bytes, header: AvroHeader, layout: RelayedLayout) -> Any:
    """Yield the needed ZTF fields and the broker's columns of every relayed alert."""
    budget = avro.ItemBudget()
    for b, (count, block) in enumerate(avro.iter_blocks(data, header)):
        yield from avro.read_fields(block, count, b, layout.reader, budget, what="relayed ZTF alert")


def _annotations(rec: dict[str, Any], layout: RelayedLayout) -> dict[str, Any]:
    """``relayed_by`` and ``annotations.<broker>`` of a relayed alert (JSON-safe)."""
    from broker.sources.lsst import broker_name, json_safe

    name = broker_name(rec.get("publisher"), "")
    return {"relayed_by": name, "annotations": {name: {k: json_safe(rec.get(k)) for k in layout.annotations}}}


def _records(data: bytes, header: AvroHeader, full: bool) -> Any:
    """Yield the records of a container: prefix-only dicts, or full dicts if ``full``.

    Every block is admitted to an :class:`~broker.sources.avro.ItemBudget` with the
    full writer schema, skipped tail included: the values of a message count against
    ``max_array_items`` whether or not this path builds them (fastavro still walks a
    skipped array item by item, field by field). For real ZTF blocks the bytes bound
    settles it (a history item takes about a byte per value it builds), so that costs
    one multiplication per block.
    """
    plan = _plan(header.schema_json)
    fast = plan.prefix is not None and not full
    budget = avro.ItemBudget()
    reader = fastavro.schemaless_reader
    for b, (count, block) in enumerate(avro.iter_blocks(data, header)):
        budget.admit_block(block, count, b, plan.full, plan.full_shape)
        fo = io.BytesIO(block)
        for i in range(count):
            if i and not i & 15:
                check_cpu(f"ZTF Avro block {b}, record {i}")
            try:
                if fast:
                    rec = reader(fo, plan.prefix, None)
                    if i + 1 < count:  # find the next record: skip this one's tail
                        reader(fo, plan.tail, plan.tail_skip)
                else:
                    rec = reader(fo, plan.full, None)
            except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ValueError...
                raise DecodeError(
                    f"corrupt ZTF alert: record {i} of Avro block {b} does not decode ({type(exc).__name__}: {avro._one_line(exc)})"
                ) from None
            if not isinstance(rec, dict):
                raise DecodeError(f"corrupt ZTF alert: record {i} of Avro block {b} is not a record")
            yield rec, plan


def _float(v: Any) -> float | None:
    """A finite float, or None for None, NaN, ±Inf and values that are not numbers."""
    if type(v) is float:  # the common case first: this runs ~12 times per alert
        return v if v - v == 0.0 else None  # inf - inf and nan - nan are nan
    if type(v) is int:  # not bool
        try:
            x = float(v)
        except OverflowError:  # an int beyond the float range
            return None
        return x if math.isfinite(x) else None
    return None


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _int(v: Any) -> int | None:
    """An int that fits in an Avro long, or None (bool and other types too)."""
    return v if type(v) is int and _LONG_MIN <= v <= _LONG_MAX else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _number(c: dict[str, Any], key: str, oid: Any) -> float:
    """``candidate[key]`` as a finite float, else DecodeError naming the field."""
    v = c.get(key)
    if type(v) is not float and type(v) is not int:
        raise DecodeError(
            f"ZTF alert {oid!r}: unusable candidate: candidate.{key} is {type(v).__name__}, not a number"
        )
    x = _float(v)
    if x is None:
        raise DecodeError(f"ZTF alert {oid!r}: unusable candidate: candidate.{key} = {v!r} is not finite")
    return x


def _candidate(rec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The candidate record and its checked ``jd``."""
    oid = rec.get("objectId")
    c = rec.get("candidate")
    if not isinstance(c, dict):
        raise DecodeError(f"ZTF alert {oid!r}: unusable candidate: it is {type(c).__name__}, not a record")
    jd = _number(c, "jd", oid)
    if not JD_MIN <= jd <= JD_MAX:
        raise DecodeError(
            f"ZTF alert {oid!r}: candidate.jd = {jd!r} is outside 1900-01-01..2200-01-01 (JD {JD_MIN}..{JD_MAX})"
        )
    return c, jd


def jd_to_unix(jd: float) -> float:
    """Convert a UTC Julian Date to Unix time, s (plain float math, ~40 µs resolution).

    Parameters
    ----------
    jd : float
        Julian Date in the UTC time scale, days (ZTF's ``candidate.jd``).

    Returns
    -------
    float
        Seconds since 1970-01-01T00:00:00 UTC, leap seconds not counted (POSIX).
    """
    return (jd - JD_UNIX_EPOCH) * 86400.0


def jd_to_iso(jd: float) -> str:
    """Convert a UTC Julian Date to ISO 8601 UTC with ``Z``, rounded to the millisecond.

    Parameters
    ----------
    jd : float
        Julian Date in the UTC time scale, days.

    Returns
    -------
    str
        E.g. ``"2023-10-12T10:24:45.003Z"``; agrees with
        ``astropy.time.Time(jd, format="jd", scale="utc").isot`` to < 1 ms (tested),
        except inside a leap second, which POSIX time cannot represent.
    """
    return format_time(_EPOCH + timedelta(milliseconds=round(jd_to_unix(jd) * 1000.0)))


def _normalize(rec: dict[str, Any], optional: tuple[str, ...], extra: dict[str, Any] | None = None) -> Event:
    oid = rec.get("objectId")
    if not isinstance(oid, str):
        raise DecodeError(f"ZTF alert: objectId is {type(oid).__name__}, not a string")
    candid = _int(rec.get("candid"))
    if candid is None:
        raise DecodeError(f"ZTF alert {oid!r}: candid {rec.get('candid')!r:.40} is not a 64-bit integer")
    c, jd = _candidate(rec)
    ra = _number(c, "ra", oid)
    dec = _number(c, "dec", oid)
    if not -90.0 <= dec <= 90.0:
        raise DecodeError(f"ZTF alert {oid!r}: candidate.dec = {dec!r} is outside [-90, 90] deg")
    if not 0.0 <= ra <= 360.0:
        raise DecodeError(f"ZTF alert {oid!r}: candidate.ra = {ra!r} is outside [0, 360] deg")
    ra = 0.0 if ra == 360.0 else ra + 0.0  # 360 is 0; -0.0 is 0.0
    time = jd_to_iso(jd)
    props: dict[str, Any] = {"candid": candid, "jd": jd}
    for k in _INT_PROPS:
        props[k] = _int(c.get(k))
    props["band"] = BANDS.get(props["fid"])
    for k in _FLOAT_PROPS:
        props[k] = _float(c.get(k))
    for k in optional:
        props[k] = _float(c.get(k))
    diffpos = c.get("isdiffpos")
    props["isdiffpos"] = diffpos in ("t", "1") if isinstance(diffpos, str) else None
    ssname = _str(c.get("ssnamenr"))
    props["ssnamenr"] = None if ssname == "null" else ssname
    props["schemavsn"] = _str(rec.get("schemavsn"))
    props["publisher"] = _str(rec.get("publisher"))
    if extra:
        props.update(extra)
    try:
        return _event(rec, candid, time, ra, dec, props)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DecodeError(
            f"ZTF alert {oid!r}: {'.'.join(map(str, first['loc']))}: {avro._one_line(first['msg'])}"
        ) from None


def _event(rec: dict[str, Any], candid: int, time: str, ra: float, dec: float, props: dict[str, Any]) -> Event:
    return Event(
        id=f"ztf:{candid}",
        source="ztf",
        messenger="em",
        mission="ZTF",
        instrument=INSTRUMENT,
        upstream_id=rec["objectId"],
        alert_type="alert",
        time=time,
        localization=PointLocalization(ra=ra, dec=dec, error_radius=ERROR_RADIUS_DEG, containment=None),
        properties=props,
        format="avro",
    )


def decode(data: bytes, header: AvroHeader) -> list[Event]:
    """Decode and normalize every ZTF alert in an Avro container.

    Only the record prefix up to ``candidate`` is decoded (see the module docstring);
    use :func:`decode_history` for ``prv_candidates``, ``fp_hists`` and cutouts.

    Parameters
    ----------
    data : bytes
        The container exactly as upstream sent it (one Kafka message, or a file).
    header : AvroHeader
        Its header, from :func:`broker.sources.avro.read_header`.

    Returns
    -------
    list of Event
        One per alert: ``id`` ``"ztf:<candid>"``, ``upstream_id`` the objectId,
        ``time`` the candidate's ``jd`` (start of exposure, UTC) in ISO 8601,
        a point localization (candidate ``ra``/``dec``, deg, radius
        :data:`ERROR_RADIUS_DEG`), and ``properties`` with the candidate's ZTF
        names: ``candid, jd, programid, fid, band ('g'/'r'/'i'), magpsf, sigmapsf,
        magap, diffmaglim`` (mag), ``isdiffpos`` (bool), ``rb``, ``drb`` (only in
        schemas that have it, ≥ 3.3), ``sgscore1``, ``distpsnr1, ssdistnr``
        (arcsec), ``ssmagnr`` (mag), ``ssnamenr``, ``ndethist, ncovhist,
        jdstarthist`` (days), ``field, rcid, nid, schemavsn, publisher``. Values are
        as ZTF wrote them (float32 widened, including ZTF's -999 "none" sentinels),
        except NaN and ±Inf → None, a value of another type than the field's → None,
        and the string ``"null"`` of ``ssnamenr`` → None.

    Raises
    ------
    DecodeError
        If the container is truncated or corrupt, the schema lacks a needed field,
        the message is over a limit (:mod:`broker.limits`), or a candidate has no
        usable ``jd`` (finite, 1900–2200), ``ra`` (0–360°) or ``dec`` (±90°).
    """
    if header.schema_name != SCHEMA_NAME:
        layout = relayed_layout(header.schema_json)
        if layout is not None:
            return [_normalize(rec, layout.optional, _annotations(rec, layout))
                    for rec in _relayed_records(data, header, layout)]
    return [_normalize(rec, plan.optional) for rec, plan in _records(data, header, full=False)]


def decode_history(data: bytes, header: AvroHeader, candid: int | None = None) -> dict[str, Any]:
    """Decode the history and cutouts of one alert (the part :func:`decode` skips).

    Parameters
    ----------
    data : bytes
        The container.
    header : AvroHeader
        Its header.
    candid : int, optional
        Which alert of a multi-alert container; the first one when omitted.

    Returns
    -------
    dict
        ``candid`` (int), ``objectId`` (str), ``prv_candidates`` (list of dict,
        previous detections and upper limits, ZTF field names; [] when null),
        ``fp_hists`` (list of dict, forced photometry, schema ≥ 4.0; [] otherwise),
        ``cutouts``: ``{"science", "template", "difference"}`` → gzip-compressed
        FITS stamp bytes, or None when absent.

    Raises
    ------
    DecodeError
        If the container is corrupt, or no alert has the requested ``candid``.
    """
    relayed = header.schema_name != SCHEMA_NAME and relayed_layout(header.schema_json) is not None
    records = ((r, None) for r in avro.read_records(data, header)) if relayed else _records(data, header, full=True)
    for rec, _ in records:
        if candid is None or rec["candid"] == candid:
            cutouts = {}
            for key, field in (("science", "cutoutScience"), ("template", "cutoutTemplate"), ("difference", "cutoutDifference")):
                stamp = rec.get(field)
                cutouts[key] = stamp.get("stampData") if stamp else None
            return {
                "candid": rec["candid"],
                "objectId": rec["objectId"],
                "prv_candidates": rec.get("prv_candidates") or [],
                "fp_hists": rec.get("fp_hists") or [],
                "cutouts": cutouts,
            }
    raise DecodeError(f"no ZTF alert with candid {candid} in this container" if candid is not None else "Avro container holds no alert")


def upstream_topic(data: bytes, header: AvroHeader) -> str:
    """The ZTF public Kafka topic of this alert: ``ztf_YYYYMMDD_programidN``.

    ZTF names its topics by the UTC date of the night (Palomar nights fall within one
    UTC date) and the program id; both are taken from the first alert's candidate. A
    relayed alert goes to the topic of the original alert (it is the same alert).

    Raises
    ------
    DecodeError
        If the container is corrupt or holds no alert.
    """
    if header.schema_name != SCHEMA_NAME and relayed_layout(header.schema_json) is not None:
        records = ((r, None) for r in _relayed_records(data, header, relayed_layout(header.schema_json)))
    else:
        records = _records(data, header, full=False)
    for rec, _ in records:
        c, jd = _candidate(rec)
        day = _EPOCH + timedelta(seconds=jd_to_unix(jd))
        return f"ztf_{day:%Y%m%d}_programid{_int(c.get('programid'))}"
    raise DecodeError("Avro container holds no alert")


DECODER = AlertDecoder(name="ztf", format="avro", accepts=is_ztf_schema, decode=decode, upstream_topic=upstream_topic,
                       priority=10, describes="a ZTF alert packet (schema 'ztf.alert', or relayed by a broker)")
"""The ZTF decoder plugin (entry point ``ztf`` of ``mma_broker.sources``)."""
