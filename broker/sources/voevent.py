"""GCN Classic VOEvent XML (IVOA VOEvent 1.1/2.0, Seaman et al. 2011) → Event.

Parsing is safe: lxml with no network access, no DTD loading, no entity resolution and
``huge_tree`` off, fed in chunks while the element count and nesting depth are checked
against ``max_xml_elements`` and ``max_xml_depth`` (:mod:`broker.limits`), so an
oversized tree is refused before it is built. Elements are matched by local name,
because VOEvent 1.1 puts the STC block (``WhereWhen``) in its own namespace while 2.0
leaves it unqualified; every lookup is one pass over the tree (libxml2's own tag
filter), never a search per candidate subtree.

Streams accepted
----------------
* ``ivo://nasa.gsfc.gcn/...`` — GCN Classic notices, described by ``Packet_Type``
  through :data:`broker.sources.gcn_packets.PACKET_TYPES`;
* ``ivo://org.svom/...`` — SVOM notices, distributed by GCN as VOEvents on
  ``gcn.notices.svom.voevent.<instrument>`` (their packet types 20x are not Classic);
* ``ivo://gwnet/LVC...`` — LVC/LVK notices, handed to :func:`broker.sources.igwn.decode_voevent`.

Everything else (e.g. Gaia ``ivo://gaia.cam.uk``, ASAS-SN via ``ivo://voevent.4pisky.org``)
is a real VOEvent from another broker that this GCN decoder does not describe: rejected
with ``DecodeError("unsupported VOEvent stream ivo://...")`` so it lands in the DLQ with
a reason instead of being mislabelled ``source="gcn"``. ``role="utility"`` VOEvents
(GCN's IM_ALIVE heartbeats) carry no alert and are rejected too; ``role="test"`` notices
are kept and marked (``properties["role"] == "test"``).

Normalization
-------------
``id`` is ``"gcn:" + ivorn``; ``time`` is WhereWhen's ``ISOTime`` (UTC); the localization
is ``Position2D`` (``C1``, ``C2``, ``Error2Radius``), with the containment of
:data:`broker.sources.gcn_packets.CONTAINMENT`; no position when the error radius is
≥ 180° (all sky, e.g. SNEWS) or when position and error are all zero (GBM ALERT). A
position out of range (Dec outside ±90°, RA outside 0–360°, a negative error radius) or
a time that does not exist (past year 9999 once its offset is applied) is a DecodeError
naming the field; NaN and ±Inf values are treated as absent.
``alert_type`` comes from the packet type, or ``"retraction"`` when the notice says
``Retraction=true`` (AMON/IceCube, SNEWS).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from lxml import etree
from pydantic import ValidationError

from broker.errors import DecodeError
from broker.event import MAX_ID_CHARS, Event, PointLocalization, format_time, validation_reason
from broker.limits import check_cpu, current_limits, over_limit
from broker.sources.gcn import parse_utc
from broker.sources.gcn_packets import CONTAINMENT, GBM_SOURCE_CLASSES, PACKET_TYPES, PacketType
from broker.sources.decoder import AlertDecoder

logger = logging.getLogger(__name__)

GCN_PREFIX = "ivo://nasa.gsfc.gcn/"
SVOM_PREFIX = "ivo://org.svom/"
LVC_PREFIX = "ivo://gwnet/LVC"
_YEAR_S = 365.25 * 86400.0
_TRUE = {"true", "1", "yes"}
_TEST_FLAGS = ("Test_Submission", "Test", "Test_Notice", "InternalTest")
#: Bytes fed to the XML parser at a time (limits are checked between feeds).
_FEED_CHUNK = 64 * 1024
#: Longest ivorn accepted: ``"gcn:" + ivorn`` is the Event id (at most MAX_ID_CHARS).
MAX_IVORN_CHARS = MAX_ID_CHARS - len("igwn:")

#: Param name → property name, for numeric science values (unit in the property name).
_NUMERIC = {
    "Burst_Signif": "snr",
    "Data_Signif": "snr",
    "Det_Signif": "snr",
    "Inten_Sigma": "snr",
    "SNR": "snr",
    "Rate_Signif": "rate_snr",
    "Image_Signif": "image_snr",
    "Data_Integ": "integration_time_s",
    "Integ_Time": "integration_time_s",
    "Trig_Timescale": "trigger_timescale_s",
    "Data_Timescale": "data_timescale_s",
    "Time_Scale": "trigger_timescale_s",
    "Timescale": "trigger_timescale_s",
    "Trans_Duration": "duration_s",
    "Phi": "instrument_phi_deg",
    "Theta": "instrument_theta_deg",
    "Hardness_Ratio": "hardness_ratio",
    "signalness": "signalness",
    "src_error_50": "error_radius_50_deg",
    "src_error_90": "error_radius_90_deg",
    "Reliability": "reliability",
    "Sun_Distance": "sun_distance_deg",
    "Galactic_Long": "galactic_l_deg",
    "Galactic_Lat": "galactic_b_deg",
    "Galactic_Lon": "galactic_l_deg",
}
#: Param name → property name, for text values kept as they are.
_TEXT = {
    "Filter": "filter",
    "LightCurve_URL": "light_curve_url",
    "Lightcurve_Link": "light_curve_url",
    "LC_URL": "light_curve_url",
    "LocationMap_URL": "location_map_url",
    "HealPix_URL": "skymap_url",
    "skymap_fits": "skymap_url",
    "Trigger_Type": "trigger_type",
    "Slew_Status": "slew_status",
    "Notice_Level": "notice_level",
    "Source_Name": "known_source",
    "Spectral_class": "spectral_class",
    "Stream": "stream",
    "Rev": "revision",
}
#: Param name → property name, for booleans.
_FLAGS = {"Def_NOT_a_GRB": "not_a_grb", "GRB_Identified": "grb_identified", "Point_Source": "point_source",
          # Swift solution status: the source is in the on-board / ground catalog (a known source)
          "Target_in_Flt_Catalog": "in_flight_catalog", "Target_in_Gnd_Catalog": "in_ground_catalog"}


def _local(el: Any) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _find(root: Any, *path: str) -> Any:
    """The element reached by local names ``path`` (one or two names), or None.

    ``_find(root, "X")`` is the first element named X (``root`` included) in document
    order; ``_find(root, "X", "Y")`` the first Y in document order below an X, which
    is the first Y inside the first X that holds one. Both are one pass of libxml2's
    tag filter plus, per candidate Y, a walk up its at most ``max_xml_depth``
    ancestors: linear in the size of the tree.
    """
    if len(path) == 1:
        return next(root.iter("{*}" + path[0]), None)
    outer, inner = path
    for el in root.iter("{*}" + inner):
        if next(el.iterancestors("{*}" + outer), None) is not None:
            return el
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse(data: bytes) -> Any:
    """Parse VOEvent bytes safely and return the root element.

    The bytes are fed to a pull parser in chunks; its start/end events count the
    elements and track the depth, so a document over ``max_xml_elements`` or
    ``max_xml_depth`` is refused at most one chunk after the limit is passed.

    Raises
    ------
    DecodeError
        If the bytes are not well-formed XML, the root is not a VOEvent, or the
        document is over ``max_xml_depth`` or ``max_xml_elements`` (naming it).
    """
    limits = current_limits()
    max_depth, max_elements = limits.max_xml_depth, limits.max_xml_elements
    parser = etree.XMLPullParser(
        events=("start", "end"),
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True,
    )
    depth = elements = 0
    try:
        for offset in range(0, len(data), _FEED_CHUNK):
            parser.feed(data[offset : offset + _FEED_CHUNK])
            for event, _ in parser.read_events():
                if event == "start":
                    depth += 1
                    elements += 1
                    if depth > max_depth:
                        raise over_limit("max_xml_depth", depth, "VOEvent ?: XML element nesting")
                    if elements > max_elements:
                        raise over_limit("max_xml_elements", elements, "VOEvent ?: number of XML elements")
                else:
                    depth -= 1
            check_cpu("parsing VOEvent XML")
        root = parser.close()
    except etree.XMLSyntaxError as exc:
        raise DecodeError(f"VOEvent ?: malformed XML: {_one_line(exc)}") from None
    if _local(root) != "VOEvent":
        raise DecodeError(f"VOEvent ?: root element is <{_one_line(_local(root), 80)}>, not <VOEvent>")
    return root


def params(root: Any) -> dict[str, tuple[str | None, str | None]]:
    """All ``<Param>`` of ``<What>`` (groups included): name → (value, unit)."""
    what = _find(root, "What")
    out: dict[str, tuple[str | None, str | None]] = {}
    if what is None:
        return out
    for el in what.iter("{*}Param"):
        name = el.get("name")
        if name:
            out.setdefault(name, (el.get("value"), el.get("unit")))
    return out


def _float(value: str | None) -> float | None:
    """A finite float from Param text, else None (absent, not a number, NaN, ±Inf)."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _integer(value: str | None) -> int | None:
    """An integral Param value that fits in an Avro long (``"146"``, ``"146.0"``), else None."""
    x = _float(value)
    if x is None or x != int(x) or not -(2.0**63) <= x < 2.0**63:
        return None
    return int(x)


def _utc(text: str, where: str) -> datetime:
    """:func:`broker.sources.gcn.parse_utc`, with overflow at year 1/9999 a DecodeError."""
    try:
        return parse_utc(text, where)
    except DecodeError:
        raise
    except (OverflowError, ValueError) as exc:  # a fraction or offset past 9999-12-31 / before 0001-01-01
        raise DecodeError(f"{where}: time {_one_line(repr(text), 80)} is out of range ({_one_line(exc, 80)})") from None


def _describe(root: Any, ivorn: str, p: dict) -> tuple[PacketType, str]:
    """(packet type, GCN Kafka topic) of a GCN or SVOM VOEvent."""
    if ivorn.startswith(SVOM_PREFIX):
        instrument = (p.get("Instrument", (None, None))[0] or "").strip()
        if not instrument:
            raise DecodeError(f"VOEvent {ivorn}: SVOM notice without Instrument param")
        fragment = ivorn.rsplit("#", 1)[-1]
        kind = fragment.rsplit("_", 1)[-1]
        kind = kind[len(instrument) + 1 :] if kind.lower().startswith(instrument.lower() + "-") else kind
        name = f"SVOM_{instrument.upper()}"
        info = PacketType(name, "SVOM", instrument, "em", kind.lower().replace("-", "_") or "alert")
        return info, f"gcn.notices.svom.voevent.{instrument.lower()}"
    raw = p.get("Packet_Type", (None, None))[0]
    try:
        number = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DecodeError(f"VOEvent {ivorn}: no integer Packet_Type param (got {raw!r})") from None
    if number not in PACKET_TYPES:
        raise DecodeError(f"VOEvent {ivorn}: unknown GCN Classic packet type {number}")
    info = PACKET_TYPES[number]
    return info, f"gcn.classic.voevent.{info.name}"


def _root_and_ivorn(data: bytes) -> tuple[Any, str]:
    root = parse(data)
    ivorn = (root.get("ivorn") or "").strip()
    if not ivorn:
        raise DecodeError("VOEvent ?: no ivorn attribute")
    if len(ivorn) > MAX_IVORN_CHARS:  # it is in every error message and in Event.id
        raise DecodeError(f"VOEvent ?: ivorn is {len(ivorn):,} characters long, over {MAX_IVORN_CHARS}")
    return root, ivorn


def _check_stream(ivorn: str) -> None:
    if not (ivorn.startswith(GCN_PREFIX) or ivorn.startswith(SVOM_PREFIX)):
        stream = ivorn.split("#", 1)[0]
        raise DecodeError(f"unsupported VOEvent stream {stream}: not a GCN or SVOM notice ({ivorn})")


def upstream_topic(data: bytes) -> str:
    """GCN Kafka topic of a VOEvent: ``gcn.classic.voevent.<NOTICE_TYPE_NAME>``.

    SVOM VOEvents → ``gcn.notices.svom.voevent.<instrument>`` (their real GCN topic).

    Raises
    ------
    DecodeError
        Malformed XML, no ivorn, a non-GCN stream or an unknown packet type.
    """
    root, ivorn = _root_and_ivorn(data)
    p = params(root)
    if ivorn.startswith(LVC_PREFIX):
        return _describe(root, ivorn, p)[1]
    _check_stream(ivorn)
    return _describe(root, ivorn, p)[1]


def _localization(root: Any, info: PacketType, ivorn: str) -> PointLocalization | None:
    pos = _find(root, "WhereWhen", "Position2D")
    if pos is None:
        return None
    c1, c2, err = (_find(pos, name) for name in ("C1", "C2", "Error2Radius"))
    ra = _float(c1.text) if c1 is not None else None
    dec = _float(c2.text) if c2 is not None else None
    radius = _float(err.text) if err is not None else None
    if ra is None or dec is None:
        return None
    if (pos.get("unit") or "deg").lower().startswith("rad"):
        ra, dec = _finite(math.degrees(ra)), _finite(math.degrees(dec))
        radius = _finite(math.degrees(radius)) if radius is not None else None
        if ra is None or dec is None:
            return None
    if radius is not None and radius >= 180.0:
        return None  # all-sky "position" (SNEWS, RADec undefined)
    if ra == 0.0 and dec == 0.0 and not radius:
        return None  # no position yet (Fermi GBM ALERT)
    if not -90.0 <= dec <= 90.0:
        raise DecodeError(f"VOEvent {ivorn}: Position2D C2 (Dec) = {dec!r} deg is outside [-90, 90]")
    if not 0.0 <= ra <= 360.0:
        raise DecodeError(f"VOEvent {ivorn}: Position2D C1 (RA) = {ra!r} deg is outside [0, 360]")
    if radius is not None and radius < 0.0:
        raise DecodeError(f"VOEvent {ivorn}: Position2D Error2Radius = {radius!r} deg is negative")
    if not radius:
        radius = None
    containment = CONTAINMENT.get((info.mission, info.instrument)) if radius is not None else None
    return PointLocalization(ra=ra % 360.0, dec=dec, error_radius=radius, containment=containment)


def _properties(ivorn: str, role: str, info: PacketType, p: dict) -> dict[str, Any]:
    props: dict[str, Any] = {"ivorn": ivorn, "role": role, "packet_type_name": info.name}
    packet = _integer(p.get("Packet_Type", (None, None))[0])
    if packet is not None:
        props["packet_type"] = packet
    serial = _integer(p.get("Pkt_Ser_Num", (None, None))[0])
    if serial is not None:
        props["packet_serial_number"] = serial
    for name, (value, unit) in p.items():
        if name in _NUMERIC and (x := _float(value)) is not None:
            props.setdefault(_NUMERIC[name], x)
        elif name in _TEXT and value:
            props.setdefault(_TEXT[name], value.strip())
        elif name in _FLAGS and value is not None:
            props[_FLAGS[name]] = value.strip().lower() in _TRUE
    far = _float(p.get("FAR", (None, None))[0])
    if far is not None:
        unit = (p["FAR"][1] or "").replace(" ", "").lower()
        props["far_hz"] = far / _YEAR_S if unit in ("yr^-1", "/yr", "1/yr", "yr-1") else far
    if info.name == "SWIFT_UVOT_POS":
        # The UVOT packet carries magnitudes in units of 0.01 mag (socket packet
        # definition); the VOEvent copies the integers and labels them "mag".
        for key, out in (("Burst_Mag", "magnitude"), ("Mag_Error", "magnitude_error")):
            if (x := _float(p.get(key, (None, None))[0])) is not None:
                props[out] = x / 100.0
    energy = _float(p.get("energy", (None, None))[0])
    if energy is not None:
        unit = (p["energy"][1] or "").lower()
        props["energy_gev"] = _finite(energy * {"tev": 1e3, "gev": 1.0, "pev": 1e6}.get(unit, 1.0))
    for key, out in (("Most_Likely_Index", "most_likely"), ("Sec_Most_Likely_Index", "second_most_likely")):
        index = _integer(p.get(key, (None, None))[0])
        if index is not None and info.mission == "Fermi":
            props[out] = GBM_SOURCE_CLASSES.get(index, f"UNKNOWN_{index}")
            prob = _float(p.get(key.replace("Index", "Prob"), (None, None))[0])
            if prob is not None:
                props[out + "_prob"] = prob / 100.0
    for key in ("Long_short", "Duration_class"):
        if p.get(key, (None, None))[0]:
            props["grb_class"] = p[key][0].strip().lower()
    is_test = role == "test" or any((p.get(f, (None, None))[0] or "").lower() in _TRUE for f in _TEST_FLAGS)
    if is_test:
        props["role"] = "test"
    return props


def _upstream_id(ivorn: str, p: dict) -> str:
    for key in ("TrigID", "Trans_Num", "Burst_Id", "GraceID"):
        value = p.get(key, (None, None))[0]
        if value:
            return value.strip()
    run, event = p.get("run_id", (None, None))[0], p.get("event_id", (None, None))[0]
    if run and event:
        return f"{run.strip()}_{event.strip()}"
    return ivorn.rsplit("#", 1)[-1]


def decode(data: bytes) -> list[Event]:
    """Decode and normalize one VOEvent message.

    Parameters
    ----------
    data : bytes
        The VOEvent XML exactly as received (GCN Kafka ``gcn.classic.voevent.*`` value).

    Returns
    -------
    list of Event
        One Event (``source="gcn"``, ``format="voevent"``); LVC VOEvents are decoded by
        :func:`broker.sources.igwn.decode_voevent` (``source="igwn"``).

    Raises
    ------
    DecodeError
        One line naming the ivorn (or ``?``): malformed XML, no ivorn, no WhereWhen time,
        an unsupported stream, a utility (heartbeat) VOEvent or an unknown packet type.
    """
    root, ivorn = _root_and_ivorn(data)
    if ivorn.startswith(LVC_PREFIX):
        from broker.sources import igwn

        result = igwn.decode_voevent(root, data)
        return list(result) if isinstance(result, (list, tuple)) else [result]
    _check_stream(ivorn)
    role = (root.get("role") or "observation").strip().lower()
    if role == "utility":
        raise DecodeError(f"VOEvent {ivorn}: role 'utility' (heartbeat) carries no alert")
    p = params(root)
    info, _topic = _describe(root, ivorn, p)

    iso = _find(root, "WhereWhen", "ISOTime")
    if iso is None or not (iso.text or "").strip():
        raise DecodeError(f"VOEvent {ivorn}: no WhereWhen/ObsDataLocation time")
    t0 = _utc(iso.text.strip(), f"VOEvent {ivorn} ISOTime")

    alert_type = info.alert_type
    if (p.get("Retraction", (None, None))[0] or "").strip().lower() in _TRUE:
        alert_type = "retraction"
    localization = _localization(root, info, ivorn)
    properties = _properties(ivorn, role, info, p)
    try:
        return [
            Event(
                id=f"gcn:{ivorn}",
                source="gcn",
                messenger=info.messenger,
                mission=info.mission,
                instrument=info.instrument,
                upstream_id=_upstream_id(ivorn, p),
                alert_type=alert_type,
                time=format_time(t0),
                localization=localization,
                properties=properties,
                format="voevent",
            )
        ]
    except ValidationError as exc:
        raise DecodeError(f"VOEvent {ivorn}: {validation_reason(exc)}") from None


DECODER = AlertDecoder(name="voevent", format="voevent", accepts=lambda data: True,
                       decode=lambda data, parsed: decode(data), upstream_topic=lambda data, parsed: upstream_topic(data),
                       priority=10, describes="a GCN Classic VOEvent")
"""GCN Classic VOEvent XML (entry point ``voevent`` of ``mma_broker.sources``): takes
every XML message (LVC VOEvents go on to :mod:`broker.sources.igwn`)."""
