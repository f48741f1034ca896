"""Rubin Observatory (LSST) alerts: Confluent wire format, schemas by id, normalization.

Rubin's Alert Production sends one alert per Kafka message in the Confluent wire
format: byte 0, the writer schema's id as a 4-byte big-endian integer, then the Avro
binary encoding of one ``lsst.vM_m.alert`` record without any container header
(DMTN-093, "Alert Serialization"; lsst-dm/sample_alert_info, "Message Format"). The
schema is not in the message: it is looked up by id.

Schemas
-------
* **Bundled**: the ``lsst-alert-packet`` package (a dependency) ships every published
  schema version (``lsst/alert/packet/schema/<M>/<m>/lsst.vM_m.alert.avsc``, 3.0 to
  11.1 in release 30.2026.2700). Rubin registers version ``M.m`` under the schema id
  ``M * 100 + m`` (``lsst.alert.packet.Schema.get_schema_id`` and
  ``bin/syncAllSchemasToRegistry.py``, which uploads each schema with that ``id``):
  1101 is v11.1, 704 is v7.4. Only the files are read (the package's Python modules
  import ``lsst.resources``, which the broker does not need).
* **Schema registry**: when ``[lsst] schema_registry_url`` is set (a Confluent Schema
  Registry, e.g. Rubin's), an id is fetched from ``GET <url>/schemas/ids/<id>``
  (httpx) the first time it is seen, and kept for the life of the process: a schema
  never changes under its id (Confluent's contract). The registry is asked first, so a
  schema it holds wins; when it cannot be reached the bundled schema of that id is
  used, and a failure is remembered for :data:`REGISTRY_RETRY_S` so that a registry
  outage costs one request per id and minute, not one per message.

An Avro object container whose writer schema is ``lsst.vM_m.alert`` (the package's
``fakeAlert.avro`` samples, alert archives) is read as well, every record an alert;
so is a container of LSST alerts relayed by a community broker (Fink's
``topLevelRecord.value`` with the Rubin fields and its own columns), whose added
columns go to ``properties.annotations.<broker>`` as for relayed ZTF alerts
(:mod:`broker.sources.ztf`).

Decoding speed
--------------
Per schema a :class:`~broker.sources.avro.FieldReader` decodes the small fields
(``diaSourceId``, ``diaSource``, ``diaObject``, ``ssSource``/``ssObject``) and skips
the histories (``prvDiaSources``, ``prvDiaForcedSources``) and the cutouts without
building them; :func:`decode_history` decodes those on demand. Figures:
``benchmarks/bench_decode.py`` and docs/lsst.md.

Normalization
-------------
``source = "lsst"``, ``id = "lsst:<diaSourceId>"`` (one alert per DIASource), the time
T0 is ``diaSource.midpointMjdTai`` (``midPointTai`` before v5) converted from TAI to
UTC, the position ``diaSource.ra``/``dec`` (``decl`` before v5), fluxes in nJy with
their errors. Values of the wrong type, NaN and ±Inf become None; a time or position
that is missing or out of range is a DecodeError naming the field (the package's
samples of versions 3.0 to 7.4 hold ``1480360995.0``, a Unix time, in the MJD field,
and are refused so).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.errors import DecodeError
from broker.event import Event, PointLocalization, format_time
from broker.limits import check_cpu
from broker.sources import avro
from broker.sources.avro import AvroHeader, WireHeader
from broker.sources.decoder import AlertDecoder

log = logging.getLogger(__name__)

MISSION = "Rubin"
#: TNS's instrument name for the Rubin camera ("Rubin - LSSTCam").
INSTRUMENT = "LSSTCam"

SCHEMA_NAME = re.compile(r"^lsst\.v(\d+)_(\d+)\.alert$")
"""Full name of a Rubin alert schema: ``lsst.v<major>_<minor>.alert``."""

#: Top-level fields of the Rubin alert schemas (every version 3.0–11.1) that are small
#: and decoded on the fast path.
WANTED_FIELDS = frozenset({"alertId", "diaSourceId", "observation_reason", "target_name", "diaSource", "diaObject",
                           "ssObject", "ssSource"})
#: Top-level fields of the Rubin alert schemas that are skipped on the fast path.
HISTORY_FIELDS = frozenset({"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits", "MPCORB",
                            "mpc_orbits", "cutoutDifference", "cutoutScience", "cutoutTemplate"})
LSST_FIELDS = WANTED_FIELDS | HISTORY_FIELDS

#: Seconds from a schema registry failure to the next request for the same id.
REGISTRY_RETRY_S = 60.0
#: Most failed registry lookups (distinct ids) per :data:`REGISTRY_RETRY_S`: a stream of
#: messages with made-up schema ids must not become a stream of registry requests.
MAX_REGISTRY_MISSES = 20

#: Positional error radius used when a DIASource gives no ``raErr``/``decErr``, deg
#: (0.36 arcsec, as for ZTF: :data:`broker.sources.ztf.ERROR_RADIUS_DEG`).
DEFAULT_ERROR_RADIUS_DEG = 1e-4

MJD_UNIX_EPOCH = 40587.0
"""Modified Julian Date of 1970-01-01T00:00:00 UTC."""
#: MJD of 2017-01-01, the last leap second; TAI − UTC = 37 s from then on (IERS
#: Bulletin C: no leap second announced through 2026).
MJD_LAST_LEAP = 57754.0
TAI_MINUS_UTC_S = 37.0
#: MJD range accepted: 1900-01-01 to 2200-01-01.
MJD_MIN, MJD_MAX = 15020.0, 124593.0

_EPOCH = datetime(1970, 1, 1)

#: diaSource fields copied into properties (fluxes get the unit in the key).
_FLUX_FIELDS = (("psfFlux", "psfFlux_njy"), ("psfFluxErr", "psfFluxErr_njy"), ("psFlux", "psfFlux_njy"),
                ("psFluxErr", "psfFluxErr_njy"), ("apFlux", "apFlux_njy"), ("apFluxErr", "apFluxErr_njy"),
                ("scienceFlux", "scienceFlux_njy"), ("scienceFluxErr", "scienceFluxErr_njy"),
                ("totFlux", "scienceFlux_njy"), ("totFluxErr", "scienceFluxErr_njy"))
_FLOAT_FIELDS = ("snr", "reliability", "extendedness")
_INT_FIELDS = ("visit", "detector", "ccdVisitId")
_BOOL_FIELDS = ("isNegative", "isDipole")
_OBJECT_FIELDS = ("diaObjectId", "ra", "dec", "decl", "nDiaSources", "firstDiaSourceMjdTai", "lastDiaSourceMjdTai",
                  "validityStartMjdTai")
_SS_FIELDS = ("ssObjectId", "designation", "eclLambda", "eclBeta", "phaseAngle", "topoRange", "helioRange", "ephVmag",
              "ephOffset", "mpcDesignation", "numObs")


class LsstSettings(BaseModel):
    """``[lsst]``: where Rubin alert schemas are resolved (settings plugin ``lsst``)."""

    model_config = ConfigDict(extra="forbid")
    schema_registry_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    """Confluent Schema Registry holding the alert schemas by id (Rubin's, or a community
    broker's); None: the schemas bundled with ``lsst-alert-packet`` only."""
    registry_timeout_s: float = Field(5.0, gt=0, le=60)
    """Timeout of one registry request, s."""


# ----------------------------------------------------------------------------- schemas
def schema_id(major: int, minor: int) -> int:
    """Rubin's schema id of alert schema version ``major.minor`` (``M * 100 + m``)."""
    return major * 100 + minor


@lru_cache(maxsize=1)
def _schema_root() -> Path | None:
    """The ``schema`` folder of the installed lsst-alert-packet (its modules not imported)."""
    try:
        spec = importlib.util.find_spec("lsst.alert.packet")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        root = Path(loc) / "schema"
        if root.is_dir():
            return root
    return None


@lru_cache(maxsize=1)
def bundled_versions() -> dict[int, tuple[int, int]]:
    """Schema id → (major, minor) of every alert schema shipped by lsst-alert-packet."""
    root = _schema_root()
    found: dict[int, tuple[int, int]] = {}
    if root is None:
        return found
    for path in root.glob("*/*/lsst.v*_*.alert.avsc"):
        m = re.fullmatch(r"lsst\.v(\d+)_(\d+)\.alert\.avsc", path.name)
        if m:
            found[schema_id(int(m[1]), int(m[2]))] = (int(m[1]), int(m[2]))
    return dict(sorted(found.items()))


@lru_cache(maxsize=None)
def bundled_schema_json(sid: int) -> bytes | None:
    """The bundled alert schema of id ``sid`` as JSON bytes, references expanded; None if unknown."""
    version = bundled_versions().get(sid)  # callers check first: the cache holds bundled ids only
    root = _schema_root()
    if version is None or root is None:
        return None
    major, minor = version
    path = root / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
    schema = fastavro.schema.load_schema(str(path), _write_hint=False)  # resolves the sibling .avsc files
    return json.dumps(schema, separators=(",", ":")).encode()


class SchemaRegistry:
    """A read-only client of a Confluent Schema Registry, caching schemas by id.

    Parameters
    ----------
    url : str
        Base URL (``https://...``), without ``/schemas``.
    timeout_s : float
        Timeout of one request, s.

    Notes
    -----
    Thread-safe: one lock around the cache; a request is made outside it. The client
    is made on first use (httpx).
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._cache: dict[int, bytes] = {}
        self._failed: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._client: Any = None

    def schema_json(self, sid: int) -> bytes:
        """The schema of id ``sid`` as JSON bytes.

        Raises
        ------
        DecodeError
            The registry does not hold the id (HTTP 404), answers something else than
            ``{"schema": "..."}``, or cannot be reached (then for
            :data:`REGISTRY_RETRY_S` without asking again).
        """
        with self._lock:
            hit = self._cache.get(sid)
            if hit is not None:
                return hit
            now = time.monotonic()
            failed = self._failed.get(sid)
            if failed is not None and now < failed[0]:
                raise DecodeError(failed[1])
            self._failed = {k: v for k, v in self._failed.items() if now < v[0]}  # forget expired misses
            if len(self._failed) >= MAX_REGISTRY_MISSES:
                raise DecodeError(f"schema id {sid}: not asked at the schema registry, {len(self._failed)} ids were "
                                  f"not found there in the last {REGISTRY_RETRY_S:.0f} s (MAX_REGISTRY_MISSES)")
        try:
            text = self._fetch(sid)
        except DecodeError as exc:
            with self._lock:
                self._failed[sid] = (time.monotonic() + REGISTRY_RETRY_S, str(exc))
            raise
        with self._lock:
            self._cache[sid] = text
            self._failed.pop(sid, None)
        return text

    def _fetch(self, sid: int) -> bytes:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s, follow_redirects=True)
        where = f"schema id {sid} at the schema registry"
        try:
            resp = self._client.get(f"{self.url}/schemas/ids/{sid}")
        except httpx.HTTPError as exc:
            raise DecodeError(f"{where}: request failed ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise DecodeError(f"{where}: HTTP {resp.status_code}")
        try:
            schema = resp.json()["schema"]
            if not isinstance(schema, str):
                raise TypeError("'schema' is not a string")
        except Exception as exc:  # ValueError (not JSON), KeyError, TypeError
            raise DecodeError(f"{where}: answer is not {{\"schema\": \"...\"}} ({type(exc).__name__})") from None
        return schema.encode()


_registry: SchemaRegistry | None = None


def configure(section: LsstSettings | dict[str, Any] | None) -> None:
    """Use the schema registry of ``[lsst]`` settings in this process (None: bundled only).

    Called by the stages and commands that decode (``mma-broker run``'s ingest stage,
    ``inspect``) with their settings; the registry client holds no secret.
    """
    global _registry
    if isinstance(section, dict):
        section = LsstSettings(**section)
    url = section.schema_registry_url if section is not None else None
    if url is None:
        _registry = None
    elif _registry is None or _registry.url != url.rstrip("/") or _registry.timeout_s != section.registry_timeout_s:
        _registry = SchemaRegistry(url, section.registry_timeout_s)


def resolve_schema(sid: int) -> bytes:
    """The writer schema JSON of a wire-format message's schema id.

    The configured registry first (:func:`configure`), then the bundled schemas.

    Raises
    ------
    DecodeError
        The id is neither at the registry nor bundled (saying which were asked).
    """
    registry = _registry
    if registry is not None:
        try:
            return registry.schema_json(sid)
        except DecodeError as exc:
            bundled = bundled_schema_json(sid) if sid in bundled_versions() else None
            if bundled is not None:
                return bundled
            raise DecodeError(f"unknown Avro schema id {sid}: {exc}; not among the bundled Rubin schemas either") from None
    bundled = bundled_schema_json(sid) if sid in bundled_versions() else None
    if bundled is None:
        known = ", ".join(f"{sid_} (v{M}.{m})" for sid_, (M, m) in bundled_versions().items())
        known = known or "none: lsst-alert-packet is not installed"
        raise DecodeError(f"unknown Avro schema id {sid}: not a bundled Rubin alert schema (known: {known}) "
                          "and no [lsst] schema_registry_url is configured")
    return bundled


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True, slots=True)
class _Layout:
    """How to read alerts of one writer schema."""

    reader: avro.FieldReader
    version: str | None  # "11.1" for lsst.v11_1.alert; None for a relayed layout
    annotations: tuple[str, ...]  # a relaying broker's added fields (decoded too)
    name: str


def _dia_source_record(fields: list[Any]) -> bool:
    """True when ``fields`` has a ``diaSource`` record (or nullable record) with an id and a position."""
    for f in fields:
        if isinstance(f, dict) and f.get("name") == "diaSource":
            t = f.get("type")
            for branch in (t if isinstance(t, list) else [t]):
                if isinstance(branch, dict) and branch.get("type") == "record":
                    names = {g.get("name") for g in branch.get("fields", ()) if isinstance(g, dict)}
                    return "diaSourceId" in names and "ra" in names and bool(names & {"dec", "decl"})
    return False


@lru_cache(maxsize=avro.SCHEMA_CACHE_SIZE)
def _layout(schema_json: bytes) -> _Layout | None:
    """The layout of a writer schema, or None when it is not an LSST alert (relayed or not)."""
    try:
        schema, _, name = avro.parse_schema_json(schema_json)
    except DecodeError:
        return None
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, list):
        return None
    m = SCHEMA_NAME.match(name)
    if not m and not _dia_source_record(fields):
        return None
    names = [f.get("name") for f in fields if isinstance(f, dict)]
    extra = () if m else tuple(n for n in names if isinstance(n, str) and n not in LSST_FIELDS)
    reader = avro.field_reader(schema_json, WANTED_FIELDS | frozenset(extra))
    return _Layout(reader, f"{m[1]}.{m[2]}" if m else None, extra, name)


def is_lsst(parsed: Any) -> bool:
    """Whether the LSST decoder takes a message: any Confluent wire-format message, or a
    container whose writer schema is ``lsst.vM_m.alert`` or holds a ``diaSource`` record
    (an LSST alert relayed by a community broker)."""
    if isinstance(parsed, WireHeader):
        return True
    if isinstance(parsed, AvroHeader):
        return bool(SCHEMA_NAME.match(parsed.schema_name)) or _layout(parsed.schema_json) is not None
    return False


@lru_cache(maxsize=avro.SCHEMA_CACHE_SIZE)
def _wire_layout(schema_json: bytes) -> _Layout:
    layout = _layout(schema_json)
    if layout is None:
        schema, _, name = avro.parse_schema_json(schema_json)
        raise DecodeError(f"writer schema {name or '(unnamed)'!r} is not a Rubin alert schema (no diaSource record)")
    return layout


_wire_layouts: dict[tuple[str | None, int], _Layout] = {}


def _layout_of_id(sid: int) -> _Layout:
    """The layout of a schema id, resolved once per id, registry and process (a schema
    never changes under its id); one dict lookup per message after the first."""
    key = (_registry.url if _registry is not None else None, sid)
    hit = _wire_layouts.get(key)
    if hit is None:
        hit = _wire_layouts[key] = _wire_layout(resolve_schema(sid))
    return hit


# ----------------------------------------------------------------------------- records
def _records(data: bytes, parsed: AvroHeader | WireHeader, full: bool = False) -> Any:
    """Yield (record, layout) of every alert in the message; full records when ``full``."""
    if isinstance(parsed, WireHeader):
        layout = _layout_of_id(parsed.schema_id)
        payload = data[parsed.payload_offset:]
        least = layout.reader.shape.min_record
        if len(payload) < least:
            raise DecodeError(f"corrupt LSST alert: the Avro datum of {len(payload):,} bytes is shorter than the "
                              f"{least:,} bytes any record of schema id {parsed.schema_id} takes")
        if full:
            avro.ItemBudget().admit_block(payload, 1, 0, layout.reader.full, layout.reader.shape)
            try:
                yield fastavro.schemaless_reader(io.BytesIO(payload), layout.reader.full, None), layout
            except Exception as exc:
                raise DecodeError(f"corrupt LSST alert: the Avro datum does not decode ({type(exc).__name__}: "
                                  f"{avro._one_line(exc)})") from None
            return
        yield from ((rec, layout) for rec in avro.read_fields(payload, 1, 0, layout.reader, what="LSST alert"))
        return
    layout = _layout(parsed.schema_json)
    if layout is None:
        raise DecodeError(f"writer schema {parsed.schema_name!r} is not a Rubin alert schema")
    budget = avro.ItemBudget()
    for b, (count, block) in enumerate(avro.iter_blocks(data, parsed)):
        if full:
            budget.admit_block(block, count, b, layout.reader.full, layout.reader.shape)
            fo = io.BytesIO(block)
            for i in range(count):
                check_cpu(f"LSST Avro block {b}, record {i}")
                try:
                    yield fastavro.schemaless_reader(fo, layout.reader.full, None), layout
                except Exception as exc:
                    raise DecodeError(f"corrupt LSST alert: record {i} of Avro block {b} does not decode "
                                      f"({type(exc).__name__}: {avro._one_line(exc)})") from None
        else:
            for rec in avro.read_fields(block, count, b, layout.reader, budget, what="LSST alert"):
                yield rec, layout


# ----------------------------------------------------------------------------- normalization
def _float(v: Any) -> float | None:
    if type(v) is float:
        return v if v - v == 0.0 else None
    if type(v) is int:
        try:
            x = float(v)
        except OverflowError:
            return None
        return x if math.isfinite(x) else None
    return None


def _int(v: Any) -> int | None:
    return v if type(v) is int and -(2**63) <= v < 2**63 else None


def mjd_tai_to_unix(mjd_tai: float) -> float:
    """Convert an MJD in the TAI time scale to Unix time (UTC, POSIX), s.

    TAI − UTC is 37 s from 2017-01-01 (:data:`MJD_LAST_LEAP`) on; earlier dates go
    through astropy's leap-second table.

    Parameters
    ----------
    mjd_tai : float
        Modified Julian Date, TAI, days (``midpointMjdTai``).

    Returns
    -------
    float
        Seconds since 1970-01-01T00:00:00 UTC, leap seconds not counted.
    """
    if mjd_tai >= MJD_LAST_LEAP + TAI_MINUS_UTC_S / 86400.0:
        return (mjd_tai - MJD_UNIX_EPOCH) * 86400.0 - TAI_MINUS_UTC_S
    from astropy.time import Time  # noqa: PLC0415 - rare: dates before 2017

    return float(Time(mjd_tai, format="mjd", scale="tai").utc.unix)


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of a decoded Avro value that JSON can hold: NaN/±Inf → None, bytes → None,
    datetimes → ISO 8601 UTC strings, nesting cut at 16 levels (None below)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if depth >= 16:
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, datetime):
        return format_time(value)
    return None  # bytes (cutout stamps), Decimal, UUID...


def broker_name(publisher: Any, schema_name: str) -> str:
    """The key under ``properties.annotations`` for a relaying broker: its ``publisher``
    lower-cased (``"Fink"`` → ``"fink"``), else ``"relay"``."""
    if isinstance(publisher, str):
        key = re.sub(r"[^a-z0-9]+", "_", publisher.strip().lower()).strip("_")[:40]
        if key and not key.startswith("ztf") and not key.startswith("lsst") and not key.startswith("rubin"):
            return key
    return "relay"


def _subset(rec: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """A few fields of a nested record, type-checked; None when absent or all null."""
    if not isinstance(rec, dict):
        return None
    out = {}
    for k in keys:
        if k in rec:
            v = rec[k]
            out["dec" if k == "decl" else k] = v if isinstance(v, (str, bool)) or v is None else (_int(v) if type(v) is int else _float(v))
    return out if any(v is not None for v in out.values()) else None


def _normalize(rec: dict[str, Any], layout: _Layout) -> Event:
    ds = rec.get("diaSource")
    if not isinstance(ds, dict):
        raise DecodeError(f"LSST alert: diaSource is {type(ds).__name__}, not a record")
    sid = _int(ds.get("diaSourceId"))
    if sid is None:
        raise DecodeError(f"LSST alert: diaSource.diaSourceId {ds.get('diaSourceId')!r:.40} is not a 64-bit integer")
    where = f"LSST alert diaSourceId {sid}"
    tkey = "midpointMjdTai" if "midpointMjdTai" in ds else "midPointTai"
    mjd = _float(ds.get(tkey))
    if mjd is None or not MJD_MIN <= mjd <= MJD_MAX:
        raise DecodeError(f"{where}: diaSource.{tkey} = {ds.get(tkey)!r:.40} is not an MJD within 1900-2200 "
                          f"({MJD_MIN:.0f}..{MJD_MAX:.0f})")
    dkey = "dec" if "dec" in ds else "decl"
    ra, dec = _float(ds.get("ra")), _float(ds.get(dkey))
    if ra is None or not 0.0 <= ra <= 360.0:
        raise DecodeError(f"{where}: diaSource.ra = {ds.get('ra')!r:.40} is not within [0, 360] deg")
    if dec is None or not -90.0 <= dec <= 90.0:
        raise DecodeError(f"{where}: diaSource.{dkey} = {ds.get(dkey)!r:.40} is not within [-90, 90] deg")
    ra = 0.0 if ra == 360.0 else ra + 0.0
    ra_err, dec_err = _float(ds.get("raErr")), _float(ds.get("decErr", ds.get("declErr")))
    radius = DEFAULT_ERROR_RADIUS_DEG
    if ra_err is not None and dec_err is not None and ra_err >= 0 and dec_err >= 0:
        radius = min(math.hypot(ra_err * math.cos(math.radians(dec)), dec_err), 180.0)
    unix = mjd_tai_to_unix(mjd)
    time_iso = format_time(_EPOCH + timedelta(milliseconds=round(unix * 1000.0)))

    props: dict[str, Any] = {"diaSourceId": sid, "mjd_tai": mjd}
    props["diaObjectId"] = _int(ds.get("diaObjectId"))
    props["ssObjectId"] = _int(ds.get("ssObjectId"))
    band = ds.get("band", ds.get("filterName"))
    props["band"] = band if isinstance(band, str) else None
    for src, dst in _FLUX_FIELDS:
        if src in ds:
            props[dst] = _float(ds[src])
    for k in _FLOAT_FIELDS:
        if k in ds:
            props[k] = _float(ds[k])
    for k in _INT_FIELDS:
        if k in ds:
            props[k] = _int(ds[k])
    for k in _BOOL_FIELDS:
        if k in ds:
            props[k] = ds[k] if isinstance(ds[k], bool) else None
    props["raErr_deg"], props["decErr_deg"] = ra_err, dec_err
    for k in ("observation_reason", "target_name"):
        if isinstance(rec.get(k), str):
            props[k] = rec[k]
    if _int(rec.get("alertId")) is not None:
        props["alertId"] = rec["alertId"]
    obj = _subset(rec.get("diaObject"), _OBJECT_FIELDS)
    if obj is not None:
        props["diaObject"] = obj
    ss = rec.get("ssSource") if rec.get("ssSource") is not None else rec.get("ssObject")
    ss_sub = _subset(ss, _SS_FIELDS)
    if ss_sub is not None:
        props["ssSource" if rec.get("ssSource") is not None else "ssObject"] = ss_sub
    if layout.version is not None:
        props["schema_version"] = layout.version
    elif isinstance(rec.get("lsst_schema_version"), str):  # Fink: "lsst.v10_0"
        m = re.fullmatch(r"(?:lsst\.)?v?(\d+)[._](\d+)", rec["lsst_schema_version"])
        props["schema_version"] = f"{m[1]}.{m[2]}" if m else rec["lsst_schema_version"]
    if layout.annotations:
        name = broker_name(rec.get("publisher"), layout.name)
        props["relayed_by"] = name
        props["annotations"] = {name: {k: json_safe(rec.get(k)) for k in layout.annotations}}
    upstream = props["diaObjectId"] or props["ssObjectId"]
    try:
        return Event(
            id=f"lsst:{sid}",
            source="lsst",
            messenger="em",
            mission=MISSION,
            instrument=INSTRUMENT,
            upstream_id=str(upstream if upstream else sid),
            alert_type="alert",
            time=time_iso,
            localization=PointLocalization(ra=ra, dec=dec, error_radius=radius, containment=None),
            properties=props,
            format="avro",
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DecodeError(f"{where}: {'.'.join(map(str, first['loc']))}: {avro._one_line(first['msg'])}") from None


def decode(data: bytes, parsed: AvroHeader | WireHeader) -> list[Event]:
    """Decode and normalize the Rubin alert(s) of one message.

    Parameters
    ----------
    data : bytes
        The message value (Confluent wire format) or an Avro object container.
    parsed : WireHeader or AvroHeader
        Its header (:func:`broker.sources.avro.read_wire_header` / ``read_header``).

    Returns
    -------
    list of Event
        One per alert: ``id`` ``"lsst:<diaSourceId>"``, ``source`` ``"lsst"``,
        ``mission`` ``"Rubin"``, ``instrument`` ``"LSSTCam"``, ``upstream_id`` the
        diaObjectId (else the ssObjectId, else the diaSourceId), ``time`` the DIASource's
        midpoint in UTC, a point localization (``ra``/``dec`` deg; error radius
        ``hypot(raErr cos dec, decErr)`` deg, :data:`DEFAULT_ERROR_RADIUS_DEG` when not
        given; containment None), and ``properties``: ``diaSourceId, diaObjectId,
        ssObjectId, mjd_tai`` (days, TAI), ``band``, ``psfFlux_njy, psfFluxErr_njy,
        apFlux_njy, apFluxErr_njy, scienceFlux_njy, scienceFluxErr_njy`` (nJy, where
        the schema has them), ``snr, reliability, visit, detector, isNegative,
        raErr_deg, decErr_deg, observation_reason, target_name, schema_version``,
        ``diaObject`` and ``ssSource``/``ssObject`` (a few fields each), and for a
        relayed alert ``relayed_by`` and ``annotations.<broker>``.

    Raises
    ------
    DecodeError
        Unknown schema id, a schema that is not a Rubin alert, corrupt data, a limit
        exceeded, or a DIASource without usable time or position.
    """
    return [_normalize(rec, layout) for rec, layout in _records(data, parsed)]


def decode_history(data: bytes, parsed: AvroHeader | WireHeader | None = None,
                   dia_source_id: int | None = None) -> dict[str, Any]:
    """Decode the histories and cutouts of one alert (what :func:`decode` skips).

    Parameters
    ----------
    data : bytes
        The message (wire format) or container.
    parsed : WireHeader or AvroHeader, optional
        Its header; read from ``data`` when omitted.
    dia_source_id : int, optional
        Which alert of a container; the first when omitted.

    Returns
    -------
    dict
        ``diaSourceId`` (int), ``prvDiaSources``, ``prvDiaForcedSources`` (lists of
        dict, Rubin field names, fluxes in nJy; [] when null),
        ``prvDiaNondetectionLimits`` (schemas before 8.0; [] otherwise) and
        ``cutouts``: ``{"difference", "science", "template"}`` → stamp bytes (FITS)
        or None.

    Raises
    ------
    DecodeError
        Corrupt data, unknown schema, or no alert with that ``dia_source_id``.
    """
    if parsed is None:
        parsed = avro.read_header(data) if data[:4] == avro.MAGIC else avro.read_wire_header(data)
    for rec, _ in _records(data, parsed, full=True):
        ds = rec.get("diaSource") or {}
        if dia_source_id is None or ds.get("diaSourceId") == dia_source_id:
            cut = {}
            for key in ("difference", "science", "template"):
                v = rec.get("cutout" + key.capitalize())
                cut[key] = (v.get("stampData") if isinstance(v, dict) else v) if v is not None else None
            return {
                "diaSourceId": ds.get("diaSourceId"),
                "prvDiaSources": rec.get("prvDiaSources") or [],
                "prvDiaForcedSources": rec.get("prvDiaForcedSources") or [],
                "prvDiaNondetectionLimits": rec.get("prvDiaNondetectionLimits") or [],
                "cutouts": cut,
            }
    raise DecodeError(f"no LSST alert with diaSourceId {dia_source_id} in this message" if dia_source_id is not None
                      else "message holds no LSST alert")


def upstream_topic(data: bytes, parsed: AvroHeader | WireHeader) -> str:
    """Rubin's Kafka topic of the alert's schema version: ``lsst-alerts-v<M>.<m>``.

    Rubin names its alert topics by schema version (``lsst-alerts-v9.0``,
    ``lsst-alerts-v10.0``); a relayed alert goes to the topic of the version its broker
    states (Fink's ``lsst_schema_version``), else to ``lsst-alerts-relayed``.

    Raises
    ------
    DecodeError
        Unknown schema id or a schema that is not a Rubin alert.
    """
    if isinstance(parsed, WireHeader):
        layout = _layout_of_id(parsed.schema_id)
    else:
        layout = _layout(parsed.schema_json)
        if layout is None:
            raise DecodeError(f"writer schema {parsed.schema_name!r} is not a Rubin alert schema")
    version = layout.version
    if version is None:  # relayed: the version the broker states (Fink's lsst_schema_version)
        for rec, _ in _records(data, parsed):
            m = re.fullmatch(r"(?:lsst\.)?v?(\d+)[._](\d+)", str(rec.get("lsst_schema_version") or ""))
            version = f"{m[1]}.{m[2]}" if m else None
            break
    return f"lsst-alerts-v{version}" if version else "lsst-alerts-relayed"


def to_wire(schema_json_or_id: int, record: dict[str, Any]) -> bytes:
    """Encode one alert record as Rubin sends it: Confluent wire format with a bundled schema.

    Parameters
    ----------
    schema_json_or_id : int
        The schema id (``M * 100 + m``) of a bundled schema.
    record : dict
        The alert as fastavro decodes it (e.g. a record of the package's sample file).

    Returns
    -------
    bytes
        ``b"\\x00" + id (4 bytes, big-endian) + Avro binary datum``.
    """
    text = bundled_schema_json(schema_json_or_id)
    if text is None:
        raise DecodeError(f"no bundled Rubin schema with id {schema_json_or_id}")
    _, parsed, _ = avro.parse_schema_json(text)
    out = io.BytesIO()
    out.write(b"\x00" + schema_json_or_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


DECODER = AlertDecoder(name="lsst", format="avro", accepts=is_lsst, decode=decode, upstream_topic=upstream_topic,
                       priority=30, describes="a Rubin/LSST alert (Confluent wire format or 'lsst.vM_m.alert')")
"""The Rubin/LSST decoder plugin (entry point ``lsst`` of ``mma_broker.sources``)."""
