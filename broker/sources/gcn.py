"""GCN Kafka JSON notices of the unified schema (nasa-gcn/gcn-schema) → Event.

A notice is recognized by its ``$schema``, ``https://gcn.nasa.gov/schema/<version>/gcn/
notices/<path>.schema.json``. A JSON object without ``$schema`` that carries the core
``Reporter``/``Alert``/``DateTime`` fields (``mission``, ``alert_type``,
``trigger_time``) is accepted as well: gwcelery's recorded ``gcn.notices.swift.bat.guano``
fixture has no ``$schema``, so real Guano messages may lack it.

Normalization rules
-------------------
* ``time``: ``trigger_time`` (core/DateTime). Schemas that have no trigger time use
  their own T0 field (``SCHEMAS[...].time_field``: Fermi LAT flares and HEASARC
  archive alerts → ``observation_start``). Missing → DecodeError naming the field.
  Times without a zone are UTC (GCN's convention).
* ``localization``: ``healpix_file`` (base64 FITS) → :func:`broker.skymap.summarize_multiorder`;
  otherwise ``ra``/``dec`` with ``ra_dec_error`` → point. ``ra_dec_error`` may be a radius,
  ``[radius]`` or an ellipse ``[a, b, angle]`` (the circle of radius max(a, b) is used and
  the ellipse kept in ``properties``); MAXI ``rectangular_error_corners`` → the circle
  through the farthest corner. ``containment`` is ``containment_probability``, else the
  core/Localization default 0.9.
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
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from broker.errors import DecodeError
from broker.event import Event, HealpixLocalization, PointLocalization, format_time

logger = logging.getLogger(__name__)

_SCHEMA_RE = re.compile(r"^https?://gcn\.nasa\.gov/schema/[^/]+/gcn/notices/(?P<path>.+)\.schema\.json$")
_TIME_RE = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)
_MESSENGERS = {"em": "em", "neutrino": "neutrino", "gw": "gw"}
_CORE_KEYS = ("mission", "alert_type", "trigger_time")
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
    "classic/alexis": SchemaInfo("ALEXIS", None, "em"),
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
        Naming ``where`` when the text is not a date-time.
    """
    m = _TIME_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise DecodeError(f"{where}: not an ISO 8601 date-time: {text!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError as exc:
        raise DecodeError(f"{where}: invalid date-time {text!r}: {exc}") from None
    if frac:
        t += timedelta(microseconds=round(int(frac[:7].ljust(7, "0")) / 10))
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        t -= sign * timedelta(hours=hh, minutes=mm)
    return t


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
        raise DecodeError(f"GCN notice without $schema: no known topic for mission/instrument {key}")
    _, info = _schema_info(path)
    if info is not None and info.topic:
        return info.topic
    return "gcn.notices." + path.lower().replace("/", ".")


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _sep_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (Vincenty formula), deg."""
    l1, b1, l2, b2 = map(math.radians, (ra1, dec1, ra2, dec2))
    dl = l2 - l1
    num = math.hypot(math.cos(b2) * math.sin(dl), math.cos(b1) * math.sin(b2) - math.sin(b1) * math.cos(b2) * math.cos(dl))
    den = math.sin(b1) * math.sin(b2) + math.cos(b1) * math.cos(b2) * math.cos(dl)
    return math.degrees(math.atan2(num, den))


def _point(obj: dict, props: dict) -> PointLocalization | None:
    ra, dec = _num(obj.get("ra")), _num(obj.get("dec"))
    if ra is None or dec is None:
        return None
    err = obj.get("ra_dec_error", obj.get("ra_uncertainty"))
    radius = None
    if isinstance(err, list):
        # core/Localization: [semi-major, semi-minor (default = major), position angle (default 0)]
        vals = [_num(v) for v in err[:3]]
        if vals and None not in vals:
            major = vals[0]
            minor = vals[1] if len(vals) > 1 else major
            radius = max(major, minor)
            if len(vals) > 1:
                props["error_ellipse_deg"] = [major, minor, vals[2] if len(vals) > 2 else 0.0]
    else:
        radius = _num(err)
    corners = obj.get("rectangular_error_corners")
    if radius is None and isinstance(corners, list) and corners:
        radius = max(_sep_deg(ra, dec, float(c[0]), float(c[1])) for c in corners)
        props["error_rectangle_corners_deg"] = corners
    containment = _num(obj.get("containment_probability"))
    if containment is not None and containment > 1:  # percent (Classic SNEWS translation)
        containment /= 100.0
    if radius is not None and containment is None:
        containment = 0.9  # core/Localization.schema.json default
    return PointLocalization(ra=ra, dec=dec, error_radius=radius, containment=containment if radius else None)


def _healpix(obj: dict, where: str, props: dict) -> HealpixLocalization | None:
    """Summarize an inline base64 FITS sky map; None (with the reason in props) if unusable."""
    try:
        raw = base64.b64decode(obj["healpix_file"], validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        props["skymap_error"] = f"healpix_file is not base64: {exc}"
        logger.warning("%s: healpix_file is not base64 (%s); using the point position if any", where, exc)
        return None
    if not (raw.startswith(b"SIMPLE") or raw.startswith(b"\x1f\x8b")):
        props["skymap_error"] = "healpix_file is not a FITS file"
        logger.warning("%s: healpix_file is not a FITS (or gzipped FITS) file", where)
        return None
    from broker.skymap import summarize_multiorder

    try:
        return summarize_multiorder(raw, skymap_url=obj.get("healpix_url"))
    except DecodeError as exc:
        props["skymap_error"] = str(exc)
        logger.warning("%s: healpix_file unusable (%s); using the point position if any", where, exc)
        return None


def _slug(*parts: str | None) -> str:
    text = "-".join(p for p in parts if p)
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "unknown"


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
        When the notice has no T0 (``trigger_time`` or its schema's equivalent), no
        mission, or an unparsable date-time; the message names the field.
    """
    path = schema_path(obj)
    where = f"GCN notice {path or obj.get('mission', '?')}"
    _, info = _schema_info(path)
    info = info or SchemaInfo(None, None, "em")
    mission = obj.get("mission") or info.mission
    if not mission:
        raise DecodeError(f"{where}: no 'mission' field and schema {path!r} does not imply one")
    instrument = obj.get("instrument") or info.instrument
    messenger = _MESSENGERS.get(str(obj.get("messenger", "")).lower(), info.messenger)

    time_field = "trigger_time" if "trigger_time" in obj else info.time_field
    if time_field not in obj:
        raise DecodeError(f"{where}: no '{time_field}' (event time T0)")
    t0 = parse_utc(obj[time_field], f"{where} {time_field}")

    stem = path.rsplit("/", 1)[-1].split(".")[0].lower() if path else "notice"
    alert_type = re.sub(r"[^a-z0-9]+", "_", str(obj.get("alert_type") or obj.get("notice_type") or stem).lower()).strip("_")
    upstream_id = _first(obj.get("id")) or _first(obj.get("event_name")) or obj.get("ref_ID")

    is_test = obj.get("alert_tense") == "test" or stem == "test"
    props: dict[str, Any] = {"role": "test" if is_test else "observation"}
    if path:
        props["schema"] = path
    if isinstance(obj.get("id"), list) and len(obj["id"]) > 1:
        props["ids"] = [str(i) for i in obj["id"]]
    for key, (name, scale) in _PROPERTIES.items():
        value = _num(obj.get(key))
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
        localization = _point(obj, props)

    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
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
        mission=str(mission),
        instrument=str(instrument) if instrument else None,
        upstream_id=str(upstream_id),
        alert_type=alert_type,
        time=format_time(t0),
        localization=localization,
        properties=props,
        format="json",
    )
