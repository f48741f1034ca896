"""GCN Kafka JSON notices of the unified schema (nasa-gcn/gcn-schema) → Event.

A notice is recognized by its ``$schema``, ``https://gcn.nasa.gov/schema/<version>/gcn/
notices/<path>.schema.json``. A JSON object without ``$schema`` that carries the core
``Reporter``/``Alert``/``DateTime`` fields (``mission``, ``alert_type``,
``trigger_time``) is accepted as well: gwcelery's recorded ``gcn.notices.swift.bat.guano``
fixture has no ``$schema``, so real Guano messages may lack it.

Normalization rules
-------------------
* ``time`` (T0), first found of (``properties["time_source"]`` says which):
  ``trigger_time`` (core/DateTime); the parent trigger's ``trigger_time`` (``parent_trigger``:
  a follow-up notice, e.g. Swift XRT/UVOT, whose ``id`` is the trigger's and whose
  trigger notice was decoded before in this process, :func:`remember_trigger`);
  ``observation_start``; ``alert_datetime``; the schema's own time field
  (``SCHEMAS[...].time_field``: the ALEXIS map's ``end_datetime``). None → DecodeError
  naming them all. A follow-up's own ``observation_start`` is kept in ``properties``
  when T0 is another time. Times without a zone are UTC (GCN's convention). A T0
  outside 1900-01-01 .. 2200-01-01 is a DecodeError naming the field. The parent's T0
  depends on what this process decoded before: a follow-up decoded alone has its
  ``observation_start`` as T0, and its event group (:mod:`broker.enrich.groups`, the
  same key as the trigger's) keeps the earliest T0 of its revisions.
* Notice types we hold no schema for (a ``$schema`` under ``gcn/notices/`` added after our
  copy) decode with the core fields: mission and instrument from the notice, else from
  the path (``gcn/notices/<mission>/<instrument>/<notice>``); position when ``ra``/``dec``
  are present, or the one target of ``data.targets`` (BOOM).
* ``localization``: ``healpix_file`` (base64 FITS) → :func:`broker.skymap.summarize_multiorder`;
  otherwise ``ra``/``dec`` with ``ra_dec_error`` → point. ``ra_dec_error`` may be a radius,
  ``[radius]`` or an ellipse ``[a, b, angle]`` (the circle of radius max(a, b) is used and
  the ellipse kept in ``properties``); MAXI ``rectangular_error_corners`` → the circle
  through the farthest corner; the early ``ra_uncertainty``/``dec_uncertainty`` [minus, plus]
  intervals (gcn-schema v1-v3) → the circle through the far corner of that box (kept in
  ``properties["error_box_deg"]``). ``containment`` is ``containment_probability``, else the
  core/Localization default 0.9. A ``ra``/``dec`` that is not finite or out of range
  ([0, 360], [-90, 90]; 360 is taken as 0), a negative or > 180 deg error and a
  containment outside [0, 1] (or [0, 100] %) are DecodeErrors naming the JSON path; a
  NaN error radius is no error radius. An unusable ``healpix_file`` is noted in
  ``properties["skymap_error"]`` and the point position is used.
* Numbers: NaN/±Infinity in the science values of ``_PROPERTIES`` drop the value; in
  passed-through fields (``flux``, ``classification`` ...) :class:`~broker.event.Event`
  stores them as null and notes it. An integer too large for a float is a DecodeError.
* ``id``: ``gcn:<mission>-<instrument>:<trigger id>:<alert_type>:<revision>:<digest>``,
  revision = ``record_number`` or, without it, ``alert_datetime``; digest = first 8 hex
  of sha256 of the canonical JSON (sorted keys, compact). The digest is needed because GCN
  notices without ``record_number`` (SVOM, CHIME, DSA-110) may share trigger, type and
  alert time while differing in content, and it keeps byte-identical redeliveries on
  the same id. No trigger id, event name or reference → ``gcn:<slug>:<sha256[:16]>``.
* ``upstream_topic``: the ``$schema`` path with ``/`` → ``.`` in lower case, except where
  GCN's real topic name differs (``SCHEMAS[...].topic``: Fermi GBM → ``gcn.notices.fermi.gbm``,
  IceCube gold/bronze → ``gcn.notices.icecube.gold_bronze_track_alerts``, SVOM →
  ``gcn.notices.svom``, KM3NeT → ``gcn.notices.km3net``, CHIME → ``gcn.notices.chime.frb``,
  as used by gcn.nasa.gov's subscription page and by gwcelery).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from pydantic import ValidationError

from broker.errors import DecodeError
from broker.event import (EARLIEST_TIME, LATEST_TIME, Event, HealpixLocalization, PointLocalization, format_time,
                          validation_reason)
from broker.limits import check_cpu, current_limits, over_limit
from broker.sources.decoder import AlertDecoder

logger = logging.getLogger(__name__)

_SCHEMA_RE = re.compile(r"^https?://gcn\.nasa\.gov/schema/[^/]+/gcn/notices/(?P<path>.+)\.schema\.json$")
_TIME_RE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,32}))? ?(Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)
"""Matched with ``fullmatch`` on the stripped text: no two adjacent variable-length
runs, so matching is linear (``\\s*(Z|...)?\\s*$`` backtracked quadratically: 100 kB of
spaces took 21 s in a red-team pass)."""
_MAX_TIME_CHARS = 64
"""Longest date-time text parsed (a 32-digit fraction and an offset fit)."""
_WHERE_CHARS = 80
_MESSENGERS = {"em": "em", "neutrino": "neutrino", "gw": "gw"}
_CORE_KEYS = ("mission", "alert_type", "trigger_time")
_NEUTRINO_MISSIONS = {"neutrino", "icecube", "km3net", "superk", "snews", "snews2", "antares", "baikal-gvd", "amon"}
"""Mission path segments of a ``$schema`` we hold no copy of that mean a neutrino notice."""
_SCHEMALESS_TOPICS = {("swift", "bat-guano"): "gcn.notices.swift.bat.guano"}


class SchemaInfo(NamedTuple):
    """What a notice schema family implies when the notice does not say it itself."""

    mission: str | None
    instrument: str | None
    messenger: str
    topic: str | None = None
    time_field: str = "trigger_time"


#: Schema path prefix (under gcn/notices/) → defaults. Longest matching prefix wins.
SCHEMAS: dict[str, SchemaInfo] = {
    "boom": SchemaInfo("Boom", None, "em"),
    "burstcube": SchemaInfo("BurstCube", None, "em"),
    "chime/frb": SchemaInfo("CHIME", "CHIME/FRB", "em", topic="gcn.notices.chime.frb"),
    "dsa110/frb": SchemaInfo("DSA-110", None, "em"),
    "einstein_probe/wxt": SchemaInfo("Einstein Probe", "WXT", "em"),
    "fermi/gbm": SchemaInfo("Fermi", "GBM", "em", topic="gcn.notices.fermi.gbm"),
    "fermi/lat": SchemaInfo("Fermi", "LAT", "em", time_field="observation_start"),
    "glowbug": SchemaInfo("GLOWBUG", None, "em"),
    "heasarc": SchemaInfo("HEASARC", None, "em", time_field="observation_start"),
    "icecube": SchemaInfo("IceCube", None, "neutrino"),  # e.g. GoldAndBronze of gcn-schema v1-v3
    "icecube/lvk_nu_track_search": SchemaInfo("IceCube", None, "neutrino"),
    "icecube/single_neutrino_alerts": SchemaInfo(
        "IceCube", "IC86", "neutrino", topic="gcn.notices.icecube.gold_bronze_track_alerts"
    ),
    "km3net": SchemaInfo("KM3NeT", None, "neutrino", topic="gcn.notices.km3net"),
    "maxi": SchemaInfo("MAXI", "GSC", "em"),
    "neutrino": SchemaInfo(None, None, "neutrino"),
    "superk": SchemaInfo("Super-Kamiokande", None, "neutrino"),
    "svom": SchemaInfo("SVOM", None, "em", topic="gcn.notices.svom"),
    "swift/bat": SchemaInfo("Swift", "BAT", "em"),
    # Proposed JSON for GCN Classic notices (gcn-schema PR #161, unreleased).
    "classic/agile": SchemaInfo("AGILE", None, "em"),
    "classic/alexis": SchemaInfo("ALEXIS", None, "em", time_field="end_datetime"),
    "classic/amon": SchemaInfo("AMON", None, "neutrino"),
    "classic/bepposax": SchemaInfo("BeppoSAX", None, "em"),
    "classic/calet_gbm": SchemaInfo("CALET", "GBM", "em"),
    "classic/counterpart": SchemaInfo(None, None, "em"),
    "classic/gecam": SchemaInfo("GECAM", None, "em"),
    "classic/hete": SchemaInfo("HETE", None, "em"),
    "classic/integral": SchemaInfo("INTEGRAL", None, "em"),
    "classic/konus": SchemaInfo("Konus-Wind", None, "em"),
    "classic/lvc": SchemaInfo("LVK", None, "gw"),
    "classic/maxi": SchemaInfo("MAXI", "GSC", "em"),
    "classic/milagro": SchemaInfo("MILAGRO", None, "em"),
    "classic/moa": SchemaInfo("MOA", None, "em"),
    "classic/near": SchemaInfo("NEAR", None, "em"),
    "classic/rxte": SchemaInfo("RXTE", None, "em"),
    "classic/sk_sn": SchemaInfo("Super-Kamiokande", None, "neutrino"),
    "classic/snews": SchemaInfo("SNEWS", None, "neutrino"),
    "classic/suzaku": SchemaInfo("Suzaku", "WAM", "em"),
}

#: Notice key → (property name, scale). Units follow gcn-schema core definitions.
_PROPERTIES: dict[str, tuple[str, float | None]] = {
    "rate_snr": ("rate_snr", None),
    "rate_duration": ("rate_duration_s", None),
    "image_snr": ("image_snr", None),
    "image_duration": ("image_duration_s", None),
    "snr": ("snr", None),
    "far": ("far_hz", None),
    "p_astro": ("p_astro", None),
    "t90": ("duration_s", None),
    "event_duration": ("duration_s", 1e-3),  # DSA-110: milliseconds
    "fluence": ("fluence_erg_cm2", None),
    "nu_energy": ("energy_gev", 1e3),  # IceCube: TeV
    "signalness": ("signalness", None),
    "dm": ("dm_pc_cm3", None),
    "dm_error": ("dm_error_pc_cm3", None),
    "luminosity_distance": ("distance_mpc", None),
    "net_count_rate": ("net_count_rate_cts_s", None),
    "importance": ("importance", None),
    "pval_generic": ("pval_generic", None),
    "pval_bayesian": ("pval_bayesian", None),
    "src_error_50": ("error_radius_50_deg", None),
    "ra_dec_error_50": ("error_radius_50_deg", None),
    "sun_distance": ("sun_distance_deg", None),
}
_PASSTHROUGH = (
    "classification", "event_name", "pipeline", "alert_topology", "number_of_events", "known_source",
    "trigger_type", "subtype", "notice_type", "data_archive_page", "light_curve_url", "ref_ID",
    "reference", "follow_up_event", "follow_up_type", "slew_status", "n_events_coincident",
    "most_probable_direction", "update_message", "record_number", "alert_tense", "flux", "flux_unit",
)


def parse_utc(text: str, where: str) -> datetime:
    """Parse a GCN date-time (ISO 8601, optional zone, 1–2 digit month/day) as aware UTC.

    GCN writes ``2024-08-24T02:14:40.43`` (no zone, UTC), ``...Z``, ``...+00:00`` and,
    in the Classic JSON translations, ``2008-8-25T21:08:50Z``.

    Raises
    ------
    DecodeError
        Naming ``where`` when the text is not a date-time, has a field out of range
        (month 13, offset +25:00) or lands outside the years 1..9999 once the offset
        and the rounding of a 7+ digit fraction are applied.
    """
    m = None
    if isinstance(text, str):
        stripped = text.strip()
        m = _TIME_RE.fullmatch(stripped) if len(stripped) <= _MAX_TIME_CHARS else None
    if not m:
        raise DecodeError(f"{where}: not an ISO 8601 date-time: {_short(text)}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
        if frac:
            t += timedelta(microseconds=round(int(frac[:7].ljust(7, "0")) / 10))
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            hh, mm = int(tz[1:3]), int(tz[-2:])
            if hh > 23 or mm > 59:
                raise ValueError(f"UTC offset {tz} out of range")
            t -= sign * timedelta(hours=hh, minutes=mm)
    except (ValueError, OverflowError) as exc:
        raise DecodeError(f"{where}: invalid date-time {_short(text)}: {exc}") from None
    return t


def _check_t0(t: datetime, where: str) -> datetime:
    """``t`` if within the years an alert's T0 can have (see :data:`broker.event.EARLIEST_TIME`)."""
    if not EARLIEST_TIME <= t.replace(tzinfo=None) < LATEST_TIME:
        raise DecodeError(f"{where} = {format_time(t)} is outside {EARLIEST_TIME:%Y-%m-%d} .. {LATEST_TIME:%Y-%m-%d}")
    return t


def _short(value: Any, limit: int = _WHERE_CHARS) -> str:
    """A bounded repr of an input value for an error message, safe to encode as UTF-8."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"<{type(value).__name__} of {len(value)}>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _plain(text: str, limit: int = _WHERE_CHARS) -> str:
    """``text`` bounded and safe to encode as UTF-8 (for names taken from the input)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def schema_path(obj: dict) -> str | None:
    """The path of a notice's ``$schema`` under ``gcn/notices/`` (e.g. ``swift/bat/Guano``)."""
    m = _SCHEMA_RE.match(str(obj.get("$schema", "")))
    return m.group("path") if m else None


def is_gcn_notice(obj: dict) -> bool:
    """True for a GCN unified-schema notice (``$schema`` under gcn/notices, or the core
    fields ``mission``, ``alert_type`` and ``trigger_time`` without any ``$schema``)."""
    if "$schema" in obj:
        path = schema_path(obj)
        # core/* are schema building blocks (Localization, Reporter, ...), never a notice.
        return path is not None and not path.lower().startswith("core/")
    return all(k in obj for k in _CORE_KEYS)


def _schema_info(path: str | None) -> tuple[str | None, SchemaInfo | None]:
    if path is None:
        return None, None
    key = path.lower()
    best = None
    for prefix in SCHEMAS:
        if (key == prefix or key.startswith(prefix + "/")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best, (SCHEMAS[best] if best else None)


def upstream_topic(obj: dict) -> str:
    """GCN Kafka topic of a notice, e.g. ``gcn.notices.swift.bat.guano``.

    See the module docstring for the rule and its exceptions.

    Raises
    ------
    DecodeError
        For a notice without ``$schema`` whose mission/instrument has no known topic.
    """
    path = schema_path(obj)
    if path is None:
        key = (str(obj.get("mission", "")).lower(), str(obj.get("instrument", "")).lower())
        if key in _SCHEMALESS_TOPICS:
            return _SCHEMALESS_TOPICS[key]
        raise DecodeError(f"GCN notice without $schema: no known topic for mission/instrument {_short(key)}")
    _, info = _schema_info(path)
    if info is not None and info.topic:
        return info.topic
    return "gcn.notices." + path.lower().replace("/", ".")


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float, pointer: str, where: str) -> float:
    """``float(value)``; an integer beyond the float range is a DecodeError naming the path."""
    try:
        return float(value)
    except OverflowError:
        raise DecodeError(
            f"{where}: integer of {len(str(abs(value))):,} digits is too large for a float (at {pointer})"
        ) from None


def _num(value: Any, pointer: str = "", where: str = "GCN notice") -> float | None:
    """A finite float, or None for a missing, non-numeric, NaN or infinite value."""
    if not _is_number(value):
        return None
    value = _float(value, pointer, where)
    return value if math.isfinite(value) else None


def _coord(raw: int | float, name: str, pointer: str, where: str) -> float:
    """``ra`` in [0, 360] (360 → 0) or ``dec`` in [-90, 90], checked before any use."""
    value = _float(raw, pointer, where)
    lo, hi = (0.0, 360.0) if name == "ra" else (-90.0, 90.0)
    if not math.isfinite(value):
        raise DecodeError(f"{where}: {name} = {_short(raw)} is not a finite number (at {pointer})")
    if not lo <= value <= hi:
        raise DecodeError(f"{where}: {name} = {_short(raw)} is outside [{lo:g}, {hi:g}] (at {pointer})")
    return 0.0 if value == 360.0 else value + 0.0  # + 0.0: -0.0 → 0.0


def _radius(raw: Any, pointer: str, where: str) -> float | None:
    """An error radius in [0, 180] deg; None when absent or NaN/infinite (no usable error)."""
    value = _num(raw, pointer, where)
    if value is not None and not 0.0 <= value <= 180.0:
        raise DecodeError(f"{where}: error radius {_short(raw)} deg is outside [0, 180] (at {pointer})")
    return value


def _sep_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (Vincenty formula), deg."""
    l1, b1, l2, b2 = map(math.radians, (ra1, dec1, ra2, dec2))
    dl = l2 - l1
    num = math.hypot(math.cos(b2) * math.sin(dl), math.cos(b1) * math.sin(b2) - math.sin(b1) * math.cos(b2) * math.cos(dl))
    den = math.sin(b1) * math.sin(b2) + math.cos(b1) * math.cos(b2) * math.cos(dl)
    return math.degrees(math.atan2(num, den))


def _corners(corners: list, where: str) -> list[tuple[float, float]]:
    """MAXI ``rectangular_error_corners``: each an ``[ra, dec]`` pair, checked like ra/dec."""
    out = []
    for i, corner in enumerate(corners):
        pointer = f"/rectangular_error_corners/{i}"
        if not (isinstance(corner, list) and len(corner) >= 2 and _is_number(corner[0]) and _is_number(corner[1])):
            raise DecodeError(f"{where}: a corner is not an [ra, dec] pair of numbers: {_short(corner)} (at {pointer})")
        out.append((_coord(corner[0], "ra", f"{pointer}/0", where), _coord(corner[1], "dec", f"{pointer}/1", where)))
        if i % 1024 == 1023:
            check_cpu(f"{where} rectangular_error_corners")
    return out


def _asymmetric(err: list) -> bool:
    """An early ``ra_uncertainty`` of the form [minus, plus]: two numbers, the first negative."""
    return len(err) == 2 and all(_is_number(v) for v in err) and err[0] < 0 <= err[1]


def _point(obj: dict, props: dict, where: str) -> PointLocalization | None:
    """The point localization from ``ra``/``dec`` and the error fields; None without a position.

    Every value is range-checked before it is computed on (the great-circle distance
    to the MAXI corners), so an out-of-range one is reported as such, with its path.
    """
    if not (_is_number(obj.get("ra")) and _is_number(obj.get("dec"))):
        return None
    ra = _coord(obj["ra"], "ra", "/ra", where)
    dec = _coord(obj["dec"], "dec", "/dec", where)
    err_key = "ra_dec_error" if "ra_dec_error" in obj else "ra_uncertainty"
    err = obj.get(err_key)
    radius = None
    if err_key == "ra_uncertainty" and isinstance(err, list) and _asymmetric(err):
        # early core/Localization (gcn-schema v1-v3, e.g. IceCube and BurstCube examples):
        # asymmetric [minus, plus] intervals on RA and Dec, deg; the circle through the
        # box's far corner encloses them (RA interval times cos Dec on the sky)
        dec_err = obj.get("dec_uncertainty") if isinstance(obj.get("dec_uncertainty"), list) else []
        ra_half = max(abs(_num(v, f"/ra_uncertainty/{i}", where) or 0.0) for i, v in enumerate(err[:2]))
        dec_half = max([abs(_num(v, f"/dec_uncertainty/{i}", where) or 0.0) for i, v in enumerate(dec_err[:2])] or [0.0])
        radius = _radius(math.hypot(ra_half * math.cos(math.radians(dec)), dec_half), f"/{err_key}", where)
        props["error_box_deg"] = {"ra": err[:2], "dec": dec_err[:2]}
    elif isinstance(err, list):
        # core/Localization: [semi-major, semi-minor (default = major), position angle (default 0)]
        vals = [_num(v, f"/{err_key}/{i}", where) for i, v in enumerate(err[:3])]
        if vals and None not in vals:
            major = _radius(err[0], f"/{err_key}/0", where)
            minor = _radius(err[1], f"/{err_key}/1", where) if len(vals) > 1 else major
            radius = max(major, minor)
            if len(vals) > 1:
                props["error_ellipse_deg"] = [major, minor, vals[2] if len(vals) > 2 else 0.0]
    else:
        radius = _radius(err, f"/{err_key}", where)
    corners = obj.get("rectangular_error_corners")
    if radius is None and isinstance(corners, list) and corners:
        radius = max(_sep_deg(ra, dec, c_ra, c_dec) for c_ra, c_dec in _corners(corners, where))
        props["error_rectangle_corners_deg"] = corners
    raw = obj.get("containment_probability")
    containment = _num(raw, "/containment_probability", where)
    if containment is not None and containment > 1:  # percent (Classic SNEWS translation)
        containment /= 100.0
    if containment is not None and not 0.0 <= containment <= 1.0:
        raise DecodeError(f"{where}: containment_probability = {_short(raw)} is outside [0, 1] "
                          "(or [0, 100] %) (at /containment_probability)")
    if radius is not None and containment is None:
        containment = 0.9  # core/Localization.schema.json default
    return PointLocalization(ra=ra, dec=dec, error_radius=radius, containment=containment if radius else None)


def _healpix(obj: dict, where: str, props: dict) -> HealpixLocalization | None:
    """Summarize an inline base64 FITS sky map; None (with the reason in props) if unusable.

    The decoded size is bounded by ``max_skymap_bytes`` before decoding. A map over a
    limit or unreadable is noted and skipped; running out of the CPU budget is not (it
    stops the whole decode).
    """
    text = obj["healpix_file"]
    if isinstance(text, str) and len(text) // 4 * 3 > current_limits().max_skymap_bytes:
        reason = str(over_limit("max_skymap_bytes", len(text) // 4 * 3, "healpix_file decoded size in bytes"))
        props["skymap_error"] = reason
        logger.warning("%s: %s; using the point position if any", where, reason)
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        props["skymap_error"] = f"healpix_file is not base64: {exc}"
        logger.warning("%s: healpix_file is not base64 (%s); using the point position if any", where, exc)
        return None
    if not (raw.startswith(b"SIMPLE") or raw.startswith(b"\x1f\x8b")):
        props["skymap_error"] = "healpix_file is not a FITS file"
        logger.warning("%s: healpix_file is not a FITS (or gzipped FITS) file", where)
        return None
    from broker.skymap import summarize_multiorder

    url = obj.get("healpix_url")
    try:
        return summarize_multiorder(raw, skymap_url=url if isinstance(url, str) else None)
    except ValidationError as exc:  # a summary out of range: the map is unusable, the point is not
        props["skymap_error"] = f"sky map summary out of range: {validation_reason(exc)}"
        logger.warning("%s: %s; using the point position if any", where, props["skymap_error"])
        return None
    except DecodeError as exc:
        check_cpu(f"{where} healpix_file")  # a map that used up the budget ends the decode
        props["skymap_error"] = str(exc)
        logger.warning("%s: healpix_file unusable (%s); using the point position if any", where, exc)
        return None


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts if p)
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "unknown"


def _text_field(obj: dict, key: str, default: str | None, where: str) -> str | None:
    """``obj[key]`` when a non-empty string, else ``default``; another type is a DecodeError."""
    value = obj.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise DecodeError(f"{where}: '{key}' must be a string, got {type(value).__name__} (at /{key})")
    return value


TIME_FIELDS = ("trigger_time", "observation_start", "alert_datetime")
"""The notice fields T0 is taken from, in order of preference (the parent trigger's
``trigger_time`` comes between the first and the second; see :func:`_t0`)."""
PARENT_TRIGGER = "parent_trigger"
"""``time_source`` of a follow-up notice whose T0 is its trigger's ``trigger_time``."""
MAX_REMEMBERED_TRIGGERS = 10_000
"""Trigger times kept for follow-up notices (oldest forgotten first): at GCN's rate of
a few hundred triggers a day, weeks of triggers."""

MAX_TRIGGER_KEY_CHARS = 256
"""Longest mission + trigger id remembered (characters)."""

_triggers: "OrderedDict[tuple[str, str], datetime]" = OrderedDict()
_triggers_lock = threading.Lock()


def _trigger_key(mission: str, trigger_id: Any) -> tuple[str, str]:
    """(mission as in the event-group key, trigger id): Swift, SWIFT and swift are one mission."""
    return re.sub(r"[^a-z0-9]+", "-", str(mission).lower()).strip("-"), str(trigger_id).strip()


def remember_trigger(mission: str, trigger_id: Any, t0: datetime) -> None:
    """Keep a trigger's T0, for the follow-up notices that carry only its id.

    Called by the decoders for every notice whose T0 is its own trigger time (GCN JSON
    ``trigger_time``, a GCN Classic VOEvent's ``ISOTime``). Bounded to
    :data:`MAX_REMEMBERED_TRIGGERS` per process, oldest forgotten first, and to keys of at
    most :data:`MAX_TRIGGER_KEY_CHARS` (longer ones are not kept); thread-safe.

    Parameters
    ----------
    mission : str
        Mission of the notice (any case: ``SWIFT`` and ``Swift`` are one).
    trigger_id : str or int
        The trigger's ``id`` (JSON) or ``TrigID`` (VOEvent).
    t0 : datetime
        Trigger time, aware UTC.
    """
    key = _trigger_key(mission, trigger_id)
    if len(key[0]) + len(key[1]) > MAX_TRIGGER_KEY_CHARS:
        return  # no real trigger id is this long; 10,000 such keys could hold gigabytes
    with _triggers_lock:
        _triggers[key] = t0
        _triggers.move_to_end(key)
        while len(_triggers) > MAX_REMEMBERED_TRIGGERS:
            _triggers.popitem(last=False)


def parent_trigger_time(mission: str, trigger_id: Any) -> datetime | None:
    """T0 of the trigger ``trigger_id`` of ``mission`` if a notice of it was decoded in
    this process (:func:`remember_trigger`), else None."""
    with _triggers_lock:
        return _triggers.get(_trigger_key(mission, trigger_id))


def forget_triggers() -> None:
    """Forget every remembered trigger time (tests; a process starting afresh)."""
    with _triggers_lock:
        _triggers.clear()


def _t0(obj: dict, info: SchemaInfo, mission: str, upstream_id: Any, where: str) -> tuple[datetime, str]:
    """(T0, time source) of a notice: ``trigger_time``; else the parent trigger's T0 (the
    notice's ``id`` is its trigger's, e.g. Swift XRT/UVOT follow-ups of a BAT trigger);
    else ``observation_start``; else ``alert_datetime``; else the schema's own time field
    (:attr:`SchemaInfo.time_field`, e.g. the ALEXIS map's ``end_datetime``).

    Raises
    ------
    DecodeError
        When none is present (naming all of them), or the one chosen does not parse or
        lies outside 1900..2200.
    """
    def parsed(key: str) -> datetime:
        return _check_t0(parse_utc(obj[key], f"{where} {key}"), f"{where} {key}")

    if "trigger_time" in obj:
        return parsed("trigger_time"), "trigger_time"
    if upstream_id is not None:
        parent = parent_trigger_time(mission, upstream_id)
        if parent is not None:
            return parent, PARENT_TRIGGER
    for key in TIME_FIELDS[1:] + ((info.time_field,) if info.time_field not in TIME_FIELDS else ()):
        if key in obj:
            return parsed(key), key
    named = ", ".join(f"'{k}'" for k in TIME_FIELDS)
    parent = f", nor a trigger notice of id {_short(str(upstream_id))} seen before" if upstream_id is not None else ""
    raise DecodeError(f"{where}: no event time T0: none of {named}{parent}")


def _info_from_path(path: str | None) -> SchemaInfo:
    """Defaults of a notice schema we do not know (a notice type added upstream later):
    mission and instrument from the ``$schema`` path, ``gcn/notices/<mission>/<instrument>/
    <notice>``; a path of two parts names the mission only."""
    parts = [p for p in (path or "").split("/") if p]
    mission = parts[0] if len(parts) >= 2 else None
    instrument = parts[1] if len(parts) >= 3 else None
    messenger = "neutrino" if (mission or "").lower() in _NEUTRINO_MISSIONS else "em"
    return SchemaInfo(mission, instrument, messenger)


def _single_target(obj: dict) -> dict | None:
    """The one target of a BOOM-style notice (``data.targets`` holding exactly one object
    with numeric ``ra``/``dec``), else None."""
    data = obj.get("data")
    targets = data.get("targets") if isinstance(data, dict) else None
    if isinstance(targets, list) and len(targets) == 1 and isinstance(targets[0], dict):
        t = targets[0]
        if _is_number(t.get("ra")) and _is_number(t.get("dec")):
            return t
    return None


def decode(obj: dict) -> Event:
    """Normalize one GCN unified-schema JSON notice.

    Parameters
    ----------
    obj : dict
        The parsed notice (``json.loads`` of the Kafka message value).

    Returns
    -------
    Event
        ``source="gcn"``, ``format="json"``; see the module docstring for the rules.

    Raises
    ------
    DecodeError
        When the notice has no T0 (none of ``trigger_time``, a parent trigger seen
        before, ``observation_start``, ``alert_datetime``, its schema's own time field),
        no mission (neither in the notice nor in its ``$schema`` path), or an unparsable
        date-time; the message names the field.
    """
    path = schema_path(obj)
    where = f"GCN notice {_plain(str(path or obj.get('mission', '?')))}"
    _, info = _schema_info(path)
    info = info or _info_from_path(path)
    mission = _text_field(obj, "mission", info.mission, where)
    if not mission:
        raise DecodeError(f"{where}: no 'mission' field and schema {_short(path)} does not imply one")
    instrument = _text_field(obj, "instrument", info.instrument, where)
    messenger = _MESSENGERS.get(str(obj.get("messenger", "")).lower(), info.messenger)

    stem = path.rsplit("/", 1)[-1].split(".")[0].lower() if path else "notice"
    alert_type = re.sub(r"[^a-z0-9]+", "_", str(obj.get("alert_type") or obj.get("notice_type") or stem).lower()).strip("_")
    target = _single_target(obj)
    upstream_id = (_first(obj.get("id")) or _first(obj.get("event_name")) or obj.get("ref_ID")
                   or (target or {}).get("event_name"))
    if isinstance(upstream_id, (dict, list)):
        upstream_id = None  # not an identifier (a hostile or future shape): the digest names the notice

    t0, time_source = _t0(obj, info, mission, upstream_id, where)

    is_test = obj.get("alert_tense") == "test" or stem == "test"
    props: dict[str, Any] = {"role": "test" if is_test else "observation", "time_source": time_source}
    for key in ("observation_start",):  # a follow-up's own time, when T0 is another
        if key in obj and key != time_source and isinstance(obj[key], str):
            try:
                props[key] = format_time(_check_t0(parse_utc(obj[key], f"{where} {key}"), f"{where} {key}"))
            except DecodeError:
                pass  # a second time that does not parse is not this notice's T0: leave it out
    if path:
        props["schema"] = path
    if isinstance(obj.get("id"), list) and len(obj["id"]) > 1:
        props["ids"] = [str(i) for i in obj["id"]]
    for key, (name, scale) in _PROPERTIES.items():
        raw = obj.get(key)
        value = _num(raw, f"/{key}", where)
        if value is None and isinstance(raw, float) and not math.isfinite(raw):
            value = raw  # NaN/±Infinity: the Event stores null and notes it (nonfinite_to_null)
        if value is not None and name not in props:
            props[name] = value * scale if scale else value
    for key in _PASSTHROUGH:
        if obj.get(key) is not None:
            props[key.lower()] = obj[key]
    if obj.get("duration_class"):
        props["grb_class"] = str(obj["duration_class"]).lower()
    if obj.get("healpix_url"):
        props["skymap_url"] = obj["healpix_url"]
    if obj.get("alert_datetime"):
        props["alert_time"] = format_time(parse_utc(obj["alert_datetime"], f"{where} alert_datetime"))

    localization = _healpix(obj, where, props) if obj.get("healpix_file") else None
    if localization is None:
        localization = _point(obj, props, where)
    if localization is None and target is not None:  # BOOM: the one target of data.targets
        localization = _point(target, props, where + " data.targets[0]")
        props["target"] = {k: v for k, v in target.items() if k in ("event_name", "ra", "dec", "classification_scores",
                                                                      "gcn_crossmatch")}
    if time_source == "trigger_time" and upstream_id is not None:
        remember_trigger(mission, upstream_id, t0)

    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate ("\ud800" in the JSON) must not stop the digest;
    # Event rejects it, naming the field, if it reaches one.
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    slug = _slug(mission, instrument)
    if upstream_id is None:
        event_id = f"gcn:{slug}:{digest[:16]}"
        upstream_id = digest[:16]
    else:
        revision = obj.get("record_number")
        if revision is None and obj.get("alert_datetime"):
            revision = props["alert_time"]
        rev = f":{revision}" if revision is not None else ""
        key = re.sub(r"\s+", "_", str(upstream_id))
        event_id = f"gcn:{slug}:{key}:{alert_type}{rev}:{digest[:8]}"

    return Event(
        id=event_id,
        source="gcn",
        messenger=messenger,
        mission=mission,
        instrument=instrument,
        upstream_id=str(upstream_id),
        alert_type=alert_type,
        time=format_time(t0),
        localization=localization,
        properties=props,
        format="json",
    )


def _decode_message(data: bytes, obj: dict) -> list[Event]:
    """A unified-schema notice: checked against its GCN JSON schema, then normalized."""
    from broker.validation import default_validator  # jsonschema: only for JSON notices

    default_validator().validate_gcn(obj)
    return [decode(obj)]


DECODER = AlertDecoder(name="gcn", format="json", accepts=is_gcn_notice, decode=_decode_message,
                       upstream_topic=lambda data, obj: upstream_topic(obj), priority=20,
                       describes="a GCN unified-schema notice (no '$schema')")
"""GCN Kafka JSON notices (entry point ``gcn`` of ``mma_broker.sources``); after IGWN
JSON, as the dispatcher always tried them."""
