"""IGWN (LIGO/Virgo/KAGRA) alerts: ``igwn.gwalert`` JSON and Avro, and LVC VOEvents.

The formats are those of the LVK Alert User Guide (emfollow.docs.ligo.org/userguide,
"Alert Contents") and the ``igwn-gwalert-schema`` package (Avro schema
``igwn.alerts.v1_0.Alert``). Each alert becomes one :class:`~broker.event.Event`:

* ``source="igwn"``, ``messenger="gw"``, ``mission="LVK"``, ``instrument`` the joined
  detector list (``"H1,L1,V1"``) or None, ``upstream_id`` the superevent id,
  ``alert_type`` lower case.
* ``time`` is the event time T0 (``event.time``). A retraction carries no event, so its
  ``time`` is the notice's ``time_created``; ``properties["time_source"]`` says which
  (``"event.time"`` or ``"time_created"``).
* ``id`` of a gwalert is ``igwn:{superevent_id}:{alert_type}:{time_created}`` with
  ``time_created`` compact UTC (``20181101T223449Z``): the gwalert has no sequence
  number, and GraceDB stamps each notice. When the notice carries an external
  coincidence, ``:ext:{gcn_notice_id}`` is appended, because an ordinary update and a
  RAVEN ext-update can share a superevent, type and second (the user guide's own
  samples do). The same notice sent as JSON and as Avro gets the same id.
  A VOEvent's id is ``igwn:{ivorn}``.
* The base64/bytes multi-order sky map is summarized by
  :func:`broker.skymap.summarize_multiorder` into ``localization`` and never copied
  into ``properties``; the RAVEN combined map, when present, is summarized into
  ``properties["external_coinc"]["combined_localization"]``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import datetime, timezone
from typing import Any

from broker.errors import DecodeError
from broker.event import EARLIEST_TIME, LATEST_TIME, MAX_ID_CHARS, Event, HealpixLocalization, check_text, format_time
from broker.limits import check_cpu, current_limits, over_limit
from broker.sources.decoder import AlertDecoder

log = logging.getLogger(__name__)

TOPIC = "igwn.gwalert"
ALERT_TYPES = ("earlywarning", "preliminary", "initial", "update", "retraction")
VOEVENT_IVORN_PREFIX = "ivo://gwnet/LVC"
VOEVENT_IVORN_PREFIXES = (VOEVENT_IVORN_PREFIX, "ivo://gwnet/gcn_sender", "ivo://nasa.gsfc.gcn/LVC#")
"""LVC VOEvent streams of every era: LVC-issued ``gcn_sender`` (O2, until December 2018)
and ``LVC`` (since), and GCN's own re-issue ``ivo://nasa.gsfc.gcn/LVC#`` of each notice."""
_SCHEMA_NAME = re.compile(r"^igwn\.alerts(\.v\d+(_\d+)*)?\.Alert$")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _short(value: Any, limit: int = 80) -> str:
    """A bounded repr of an input value for an error message, safe to encode as UTF-8."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"<{type(value).__name__} of {len(value)}>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _parse_time(value: Any, what: str) -> datetime:
    """Parse an ISO 8601 time (``Z``, offset or naive = UTC) as an aware UTC datetime.

    A time that leaves the years 1..9999 once its offset is applied (``0001-01-01T00:00
    +01:00``) is a DecodeError, as is any text ``datetime.fromisoformat`` refuses.
    """
    if not isinstance(value, str) or not value.strip():
        raise DecodeError(f"{what} missing or not a string: {_short(value)}")
    text = value.strip()
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except ValueError:
        raise DecodeError(f"{what} is not an ISO 8601 time: {_short(value)}") from None
    except OverflowError:
        raise DecodeError(f"{what} is out of range once converted to UTC: {_short(value)}") from None


def _check_t0(t: datetime, what: str) -> datetime:
    """``t`` if within the years an alert time can have (:data:`broker.event.EARLIEST_TIME` ..)."""
    if not EARLIEST_TIME <= t.replace(tzinfo=None) < LATEST_TIME:
        raise DecodeError(f"{what} = {format_time(t)} is outside {EARLIEST_TIME:%Y-%m-%d} .. {LATEST_TIME:%Y-%m-%d}")
    return t


def _compact_utc(t: datetime) -> str:
    """``20181101T223449Z`` (with ``.ffffff`` only when the time has fractional seconds)."""
    frac = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return t.strftime("%Y%m%dT%H%M%S") + frac + "Z"


def _float_or_none(value: Any, what: str) -> float | None:
    """``float(value)``, None for None. NaN/±Infinity are kept (Event stores them as null).

    Raises
    ------
    DecodeError
        For a value that is no number, or an integer too large for a float.
    """
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DecodeError(f"{what} is not a number: {_short(value)}") from None
    except OverflowError:
        raise DecodeError(f"{what} is an integer of {len(str(abs(value))):,} digits, too large for a float") from None


def _summarize(blob: Any, what: str, sid: str) -> HealpixLocalization | None:
    """Summarize a sky map given as base64 text (JSON) or raw bytes (Avro)."""
    if blob is None or blob == "" or blob == b"":
        return None
    if isinstance(blob, str):
        if len(blob) // 4 * 3 > current_limits().max_skymap_bytes:
            raise over_limit("max_skymap_bytes", len(blob) // 4 * 3, f"igwn {sid}: {what} decoded size in bytes")
        try:
            blob = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"igwn {sid}: {what} is not valid base64 ({_one_line(exc)})") from None
    if not isinstance(blob, (bytes, bytearray)):
        raise DecodeError(f"igwn {sid}: {what} must be base64 text or bytes, got {type(blob).__name__}")
    from broker.skymap import summarize_multiorder  # numpy, astropy: only for alerts with a sky map

    try:
        return summarize_multiorder(bytes(blob))
    except DecodeError as exc:
        raise DecodeError(f"igwn {sid}: {what}: {_one_line(exc)}") from None


def is_igwn_alert(obj: dict) -> bool:
    """True if a decoded JSON object is an ``igwn.gwalert`` notice.

    GraceDB superevent records and igwn-alert (LVAlert) messages lack ``alert_type``
    or ``superevent_id`` at top level and are not gwalerts.
    """
    return isinstance(obj, dict) and "superevent_id" in obj and "alert_type" in obj


def is_igwn_schema(header: Any) -> bool:
    """True if an Avro container's writer schema is the IGWN alert schema.

    Parameters
    ----------
    header : AvroHeader
        From ``broker.sources.avro.read_header``; only ``schema_name`` is used
        (``igwn.alerts.Alert`` or versioned ``igwn.alerts.v1_0.Alert``).
    """
    return bool(_SCHEMA_NAME.match(str(getattr(header, "schema_name", "") or "")))


def _external_coinc(ext: Any, sid: str) -> dict[str, Any] | None:
    if ext is None:
        return None
    if not isinstance(ext, dict):
        raise DecodeError(f"igwn {sid}: external_coinc must be an object, got {type(ext).__name__}")
    notice_id = ext.get("gcn_notice_id")
    # ASCII digits only: str.isdigit() is also true for "²", which int() refuses
    if isinstance(notice_id, str) and re.fullmatch(r"[0-9]{1,30}", notice_id.strip()):
        notice_id = int(notice_id)
    out = {
        "gcn_notice_id": notice_id,
        "ivorn": ext.get("ivorn"),
        "observatory": ext.get("observatory"),
        "search": ext.get("search"),
        "time_difference_s": _float_or_none(ext.get("time_difference"), f"igwn {sid}: 'external_coinc.time_difference'"),
        "time_coincidence_far_hz": _float_or_none(
            ext.get("time_coincidence_far"), f"igwn {sid}: 'external_coinc.time_coincidence_far'"),
        "time_sky_position_coincidence_far_hz": _float_or_none(
            ext.get("time_sky_position_coincidence_far"),
            f"igwn {sid}: 'external_coinc.time_sky_position_coincidence_far'"),
    }
    combined = _summarize(ext.get("combined_skymap"), "external_coinc.combined_skymap", sid)
    if combined is not None:
        out["combined_localization"] = combined.model_dump(mode="json")
    return out


def _normalize(alert: dict, fmt: str) -> Event:
    """Normalize one gwalert given as a dict (JSON object or Avro record)."""
    sid = alert.get("superevent_id")
    if not isinstance(sid, str) or not sid.strip():
        raise DecodeError(f"igwn gwalert: 'superevent_id' missing or empty: {_short(sid)}")
    sid = sid.strip()
    if len(sid) > MAX_ID_CHARS:  # checked first: every later message names it
        raise DecodeError(f"igwn gwalert: 'superevent_id' is {len(sid):,} characters long, over {MAX_ID_CHARS}")
    try:
        check_text(sid, "'superevent_id'")
    except ValueError as exc:
        raise DecodeError(f"igwn gwalert: {exc}") from None
    raw_type = alert.get("alert_type")
    alert_type = raw_type.strip().lower() if isinstance(raw_type, str) else ""
    if alert_type not in ALERT_TYPES:
        raise DecodeError(f"igwn {sid}: 'alert_type' {raw_type!r} is not one of {', '.join(ALERT_TYPES)}")
    if "time_created" not in alert:
        raise DecodeError(f"igwn {sid}: 'time_created' missing")
    what = f"igwn {sid}: 'time_created'"
    created = _check_t0(_parse_time(alert["time_created"], what), what)
    urls = alert.get("urls") or {}
    if not isinstance(urls, dict):
        raise DecodeError(f"igwn {sid}: 'urls' must be an object, got {type(urls).__name__}")

    props: dict[str, Any] = {"time_created": format_time(created), "urls": dict(urls)}
    event = alert.get("event")
    localization = None
    instrument = None
    if event is None:
        t0, props["time_source"] = created, "time_created"
    elif not isinstance(event, dict):
        raise DecodeError(f"igwn {sid}: 'event' must be an object or null, got {type(event).__name__}")
    else:
        t0 = _check_t0(_parse_time(event.get("time"), f"igwn {sid}: 'event.time'"), f"igwn {sid}: 'event.time'")
        props["time_source"] = "event.time"
        instruments = event.get("instruments") or []
        if not isinstance(instruments, list) or not all(isinstance(i, str) for i in instruments):
            raise DecodeError(f"igwn {sid}: 'event.instruments' must be a list of strings: {instruments!r}")
        instrument = ",".join(instruments) or None
        for key in ("classification", "properties"):
            if not isinstance(event.get(key) or {}, dict):
                raise DecodeError(f"igwn {sid}: 'event.{key}' must be an object, got {type(event[key]).__name__}")
        props.update({
            "far_hz": _float_or_none(event.get("far"), f"igwn {sid}: 'event.far'"),
            "significant": event.get("significant"),
            "group": event.get("group"),
            "pipeline": event.get("pipeline"),
            "search": event.get("search"),
            "instruments": list(instruments),
            "classification": dict(event.get("classification") or {}),
            "properties": dict(event.get("properties") or {}),
        })
        for key, name in (("duration", "duration_s"), ("central_frequency", "central_frequency_hz")):
            value = _float_or_none(event.get(key), f"igwn {sid}: 'event.{key}'")
            if value is not None:
                props[name] = value
        localization = _summarize(event.get("skymap"), "event.skymap", sid)

    ext = _external_coinc(alert.get("external_coinc"), sid)
    event_id = f"igwn:{sid}:{alert_type}:{_compact_utc(created)}"
    if ext is not None:
        props["external_coinc"] = ext
        event_id += f":ext:{ext['gcn_notice_id'] if ext['gcn_notice_id'] is not None else ext['ivorn']}"
    return Event(
        id=event_id, source="igwn", messenger="gw", mission="LVK", instrument=instrument,
        upstream_id=sid, alert_type=alert_type, time=format_time(t0), localization=localization,
        properties=props, format=fmt,
    )


def decode_json(obj: dict) -> Event:
    """Normalize an ``igwn.gwalert`` JSON notice.

    Parameters
    ----------
    obj : dict
        The parsed JSON object (``event.skymap`` is a base64 multi-order FITS file).

    Returns
    -------
    Event
        With ``format="json"``; see the module docstring for ids and times.

    Raises
    ------
    DecodeError
        One line naming the field: ``superevent_id`` or ``time_created`` missing,
        unknown ``alert_type``, unparseable ``event.time``, corrupt ``event.skymap``.
    """
    return _normalize(obj, "json")


def decode_avro(data: bytes, header: Any) -> list[Event]:
    """Normalize every alert in an Avro object container of ``igwn.alerts.Alert``.

    Parameters
    ----------
    data : bytes
        The whole container, as upstream sent it.
    header : AvroHeader
        Its parsed header; only ``schema_name`` is checked here, fastavro reads the
        records with the embedded writer schema (IGWN alert rates are low).

    Returns
    -------
    list of Event
        One per record, ``format="avro"``.

    Raises
    ------
    DecodeError
        If the schema is not the IGWN alert schema, the container is corrupt, or a
        record fails normalization (see :func:`decode_json`).
    """
    from broker.sources import avro

    if not is_igwn_schema(header):
        raise DecodeError(f"igwn: Avro schema {getattr(header, 'schema_name', None)!r} is not igwn.alerts.Alert")
    try:
        records = avro.read_records(data, header)  # bounded decompression and item counts
    except DecodeError as exc:  # a limit or a truncation, already named
        raise DecodeError(f"igwn: {exc}") from None
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(f"igwn: corrupt Avro container ({type(exc).__name__}: {_one_line(exc)})") from None
    if not records:
        raise DecodeError("igwn: Avro container holds no alert")
    events = []
    for rec in records:
        events.append(_normalize(rec, "avro"))
        check_cpu("igwn Avro records")
    log.debug("igwn: %d alert(s) in Avro container (%s)", len(events), header.schema_name)
    return events


def _local(el) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _voevent_params(root) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Top-level ``What/Param`` values and ``What/Group/Param`` values by group name."""
    top: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    what = next((c for c in root if _local(c) == "What"), None)
    if what is None:
        return top, groups
    for child in what:
        if _local(child) == "Param" and child.get("name"):
            top[child.get("name")] = (child.get("value") or "").strip()
        elif _local(child) == "Group":
            name = child.get("name") or child.get("type") or ""
            groups[name] = {p.get("name"): (p.get("value") or "").strip()
                            for p in child if _local(p) == "Param" and p.get("name")}
    return top, groups


def _first_text(root, path: tuple[str, ...]) -> str | None:
    """Text of the first element reached by following local names, or None."""
    nodes = [root]
    for name in path:
        nodes = [c for n in nodes for c in n if _local(c) == name]
    if not nodes:
        return None
    return (nodes[0].text or "").strip() or None


def _voevent_float(params: dict[str, str], key: str, ivorn: str) -> float | None:
    """Param ``key`` as a float; None when absent, NaN or ±Inf (``FAR="inf"``)."""
    x = _float_or_none(params.get(key) or None, f"VOEvent {ivorn}: Param {key}")
    return x if x is not None and x - x == 0.0 else None  # inf - inf and nan - nan are nan


_VOEVENT_INT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


def _voevent_int(value: str | None) -> int | None:
    """A Param's unsigned integer value (at most 18 digits), else None."""
    return int(value) if value and _VOEVENT_INT.fullmatch(value) else None


def _voevent_time(text: str, what: str) -> datetime:
    """:func:`_parse_time`, with a time pushed past year 1/9999 by its offset a DecodeError."""
    try:
        return _parse_time(text, what)
    except OverflowError:
        raise DecodeError(f"{what} is out of range once converted to UTC: {text[:60]!r}") from None


def decode_voevent(root, data: bytes, *, skymap_fits: bytes | None = None) -> Event:
    """Normalize an LVC GCN Classic VOEvent of any era (:data:`VOEVENT_IVORN_PREFIXES`).

    Parameters
    ----------
    root : lxml.etree._Element
        Root ``VOEvent`` element of the parsed XML.
    data : bytes
        The raw XML (kept for the dispatcher's uniform call; not re-parsed).
    skymap_fits : bytes, optional
        A local copy of the sky map the VOEvent points to (``skymap_fits`` Param).
        VOEvents carry only the URL, so without it ``localization`` is None.

    Returns
    -------
    Event
        ``id = "igwn:" + ivorn``, ``format="voevent"``; ``alert_type`` from ``AlertType``,
        or ``retraction`` when Param ``Retraction`` is true (the O2/2018 form, which kept
        the retracted notice's AlertType); ``time`` from
        ``WhereWhen//ISOTime`` (``Who/Date`` if absent, noted in ``time_source``);
        ``properties`` as for gwalerts, plus ``skymap_url``, ``pkt_ser_num``,
        ``packet_type`` and ``role``.

    Raises
    ------
    DecodeError
        If the ivorn is not LVC's, ``GraceID`` or ``AlertType`` is missing or unknown,
        a time or number does not parse, or ``skymap_fits`` is not a sky map.
    """
    from pydantic import ValidationError

    from broker.event import MAX_ID_CHARS, validation_reason

    ivorn = (root.get("ivorn") or "").strip()
    if not ivorn.startswith(VOEVENT_IVORN_PREFIXES):
        raise DecodeError(f"VOEvent ivorn {ivorn[:80]!r} is not an LVC one ({', '.join(VOEVENT_IVORN_PREFIXES)}...)")
    if len(ivorn) > MAX_ID_CHARS - len("igwn:"):  # in every message below and in Event.id
        raise DecodeError(f"VOEvent ?: ivorn is {len(ivorn):,} characters long, over {MAX_ID_CHARS - len('igwn:')}")
    top, groups = _voevent_params(root)
    sid = top.get("GraceID")
    if not sid:
        raise DecodeError(f"VOEvent {ivorn}: Param GraceID missing")
    alert_type = top.get("AlertType", "").lower()
    if top.get("Retraction", "").lower() in ("true", "1"):
        alert_type = "retraction"  # until O3 a retraction kept the AlertType of what it retracted
    if alert_type not in ALERT_TYPES:
        raise DecodeError(f"VOEvent {ivorn}: Param AlertType {top.get('AlertType')!r} is not one of "
                          f"{', '.join(ALERT_TYPES)}")
    created_text = _first_text(root, ("Who", "Date"))
    iso_time = _first_text(root, ("WhereWhen", "ObsDataLocation", "ObservationLocation", "AstroCoords",
                                  "Time", "TimeInstant", "ISOTime"))
    if iso_time is None and created_text is None:
        raise DecodeError(f"VOEvent {ivorn}: neither WhereWhen ISOTime nor Who/Date present")
    props: dict[str, Any] = {"role": root.get("role")}
    if created_text is not None:
        props["time_created"] = format_time(_voevent_time(created_text, f"VOEvent {ivorn}: Who/Date"))
    t0 = _voevent_time(iso_time or created_text, f"VOEvent {ivorn}: ISOTime")
    props["time_source"] = "event.time" if iso_time else "time_created"
    props["urls"] = {"gracedb": top["EventPage"]} if top.get("EventPage") else {}
    for key, name in (("Pkt_Ser_Num", "pkt_ser_num"), ("Packet_Type", "packet_type")):
        if (number := _voevent_int(top.get(key))) is not None:
            props[name] = number

    instruments = [i.strip() for i in top.get("Instruments", "").split(",") if i.strip()]
    significant = _voevent_int(top.get("Significant"))
    if alert_type != "retraction":
        props.update({
            "far_hz": _voevent_float(top, "FAR", ivorn),
            "significant": None if significant is None else bool(significant),
            "group": top.get("Group"),
            "pipeline": top.get("Pipeline"),
            "search": top.get("Search"),
            "instruments": instruments,
            "classification": {k: _voevent_float(groups.get("Classification", {}), k, ivorn)
                               for k in groups.get("Classification", {})},
            "properties": {k: _voevent_float(groups.get("Properties", {}), k, ivorn)
                           for k in groups.get("Properties", {})},
        })
        for key, name in (("Duration", "duration_s"), ("CentralFreq", "central_frequency_hz")):
            value = _voevent_float(top, key, ivorn)
            if value is not None:
                props[name] = value
    skymap_url = groups.get("GW_SKYMAP", {}).get("skymap_fits") or None
    if skymap_url:
        props["skymap_url"] = skymap_url
    ext = groups.get("External Coincidence")
    if ext:
        notice_id = ext.get("External_GCN_Notice_Id")
        notice_number = _voevent_int(notice_id)
        props["external_coinc"] = {
            "gcn_notice_id": notice_id if notice_number is None else notice_number,
            "ivorn": ext.get("External_Ivorn"),
            "observatory": ext.get("External_Observatory"),
            "search": ext.get("External_Search"),
            "time_difference_s": _voevent_float(ext, "Time_Difference", ivorn),
            "time_coincidence_far_hz": _voevent_float(ext, "Time_Coincidence_FAR", ivorn),
            "time_sky_position_coincidence_far_hz": _voevent_float(ext, "Time_Sky_Position_Coincidence_FAR", ivorn),
            "joint_skymap_url": ext.get("joint_skymap_fits"),
        }
    localization = None
    if skymap_fits is not None:
        try:
            from broker.skymap import summarize_multiorder

            localization = summarize_multiorder(skymap_fits, skymap_url=skymap_url)
        except DecodeError as exc:
            raise DecodeError(f"VOEvent {ivorn}: local sky map: {_one_line(exc)}") from None
    try:
        return Event(
            id=f"igwn:{ivorn}", source="igwn", messenger="gw", mission="LVK",
            instrument=",".join(instruments) or None, upstream_id=sid, alert_type=alert_type,
            time=format_time(t0), localization=localization, properties=props, format="voevent",
        )
    except ValidationError as exc:
        raise DecodeError(f"VOEvent {ivorn}: {validation_reason(exc)}") from None


def _decode_json_message(data: bytes, obj: dict) -> list[Event]:
    """A gwalert JSON message: checked against the upstream JSON schema, then normalized."""
    from broker.validation import default_validator  # jsonschema: only for JSON alerts

    default_validator().validate_igwn(obj)
    return [decode_json(obj)]


JSON_DECODER = AlertDecoder(name="igwn.json", format="json", accepts=is_igwn_alert, decode=_decode_json_message,
                            upstream_topic=lambda data, obj: TOPIC, priority=10,
                            describes="an IGWN gwalert (no 'superevent_id')")
"""IGWN gwalerts as JSON (entry point ``igwn.json`` of ``mma_broker.sources``)."""

AVRO_DECODER = AlertDecoder(name="igwn.avro", format="avro", accepts=is_igwn_schema, decode=decode_avro,
                            upstream_topic=lambda data, header: TOPIC, priority=20,
                            describes="an IGWN gwalert (schema 'igwn.alerts.Alert')")
"""IGWN gwalerts as Avro (entry point ``igwn.avro``); after ZTF, as the dispatcher always tried them."""
