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
* LVC/LVK notices of every era (:func:`is_lvc`): ``ivo://gwnet/gcn_sender`` (O2, GW170817,
  until December 2018), ``ivo://gwnet/LVC`` (since) and GCN's re-issue
  ``ivo://nasa.gsfc.gcn/LVC#`` — handed to :func:`broker.sources.igwn.decode_voevent`, which
  gives the superevent id and alert type of their igwn.gwalert JSON counterparts;
* anything else, read generically (:func:`_decode_generic`) when it carries what an Event
  needs — the WhereWhen ``ISOTime`` (T0) and a ``Position2D`` or a sky map URL Param —
  else rejected with a reason naming what is missing: GCN streams without ``Packet_Type``
  or of a packet number we do not describe (ANTARES, ``source="gcn"``; a ``Packet_Type``
  that is not an integer is a corrupt notice and rejected), and VOEvents of
  other brokers (Gaia ``ivo://gaia.cam.uk``, ASAS-SN via ``ivo://voevent.4pisky.org``,
  ``source="voevent"``), mission from :data:`STREAMS` or the stream's name, every named
  Param kept under ``properties["params"]``, the time system (``AstroCoordSystem`` id:
  Gaia's is ``TDB-ICRS-BARY``, kept as given, not converted) under ``time_system``.

``role="utility"`` VOEvents (GCN's IM_ALIVE heartbeats) carry no alert and are rejected;
``role="test"`` notices are kept and marked (``properties["role"] == "test"``). A GCN
Classic notice's ``ISOTime`` is its trigger's time (also in XRT/UVOT follow-ups): it is
remembered (:func:`broker.sources.gcn.remember_trigger`) as the parent T0 of GCN JSON
follow-up notices of the same trigger number.

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
import re
from datetime import datetime
from typing import Any

from lxml import etree
from pydantic import ValidationError

from broker.errors import DecodeError
from broker.event import MAX_ID_CHARS, Event, PointLocalization, format_time, validation_reason
from broker.limits import check_cpu, current_limits, over_limit
from broker.sources.gcn import parse_utc, remember_trigger
from broker.sources.gcn_packets import CONTAINMENT, GBM_SOURCE_CLASSES, PACKET_TYPES, PacketType
from broker.sources.decoder import AlertDecoder

logger = logging.getLogger(__name__)

GCN_PREFIX = "ivo://nasa.gsfc.gcn/"
SVOM_PREFIX = "ivo://org.svom/"
LVC_PREFIX = "ivo://gwnet/LVC"
LVC_PREFIXES = ("ivo://gwnet/LVC", "ivo://gwnet/gcn_sender")
"""LVC-issued VOEvent streams: ``gcn_sender`` until December 2018 (O2, GW170817), ``LVC`` since."""
MAX_GENERIC_PARAMS = 200
"""Named Params kept under ``properties["params"]`` of a VOEvent without packet description."""
MAX_PARAM_CHARS = 1000
"""Characters kept of each such Param value (and of the ``Why`` description)."""
MAX_PARAM_NAME_CHARS = 200
"""Characters kept of each such Param name."""
#: Streams without a GCN Classic packet type: stream → (mission, instrument, messenger).
STREAMS: dict[str, tuple[str, str | None, str]] = {
    "ivo://gaia.cam.uk/alerts": ("Gaia", None, "em"),
    "ivo://voevent.4pisky.org/ASASSN": ("ASAS-SN", None, "em"),
    "ivo://voevent.4pisky.org/GAIA": ("Gaia", None, "em"),  # 4PiSky's relay of Gaia alerts
    "ivo://nasa.nsstc.gbm/UntargetedSubGRB": ("Fermi", "GBM", "em"),  # GBM untargeted sub-threshold search
    "ivo://HESS/GRB": ("H.E.S.S.", None, "em"),
    "ivo://nasa.gsfc.gcn/Antares_Alert": ("ANTARES", None, "neutrino"),
    "ivo://amon/icecube_hese": ("IceCube", None, "neutrino"),
    "ivo://amon/icecube_ehe": ("IceCube", None, "neutrino"),
}
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


def _stream(ivorn: str) -> str:
    """The stream of an ivorn: everything before ``#`` (``ivo://gaia.cam.uk/alerts``)."""
    return ivorn.split("#", 1)[0]


def is_lvc(ivorn: str, p: dict) -> bool:
    """True for an LVC/LVK notice, of any era, decoded by :func:`broker.sources.igwn.decode_voevent`.

    ``ivo://gwnet/gcn_sender#`` (LVC-issued, O2 and until December 2018),
    ``ivo://gwnet/LVC#`` (LVC-issued, O3 on), and GCN's own re-issue
    ``ivo://nasa.gsfc.gcn/LVC#`` of a GW packet type (150-153, 163, 164) with a
    ``GraceID`` (LVC_COUNTERPART, 154, is a GCN notice about a counterpart, not a GW alert).
    """
    if ivorn.startswith(LVC_PREFIXES):
        return True
    if ivorn.startswith(GCN_PREFIX + "LVC#") and p.get("GraceID", (None, None))[0]:
        info = PACKET_TYPES.get(_integer(p.get("Packet_Type", (None, None))[0]) or -1)
        return info is not None and info.messenger == "gw"
    return False


def _generic_info(ivorn: str, source: str) -> PacketType:
    """Mission, instrument and messenger of a stream without a GCN Classic packet type:
    :data:`STREAMS` when known, else the stream's last path segment (or its authority)."""
    stream = _stream(ivorn)
    if stream in STREAMS:
        mission, instrument, messenger = STREAMS[stream]
    else:
        rest = stream.removeprefix("ivo://").strip("/")
        mission = (rest.rsplit("/", 1)[-1] if "/" in rest else rest) or "unknown"
        instrument = None
        messenger = "neutrino" if any(k in stream.lower() for k in ("antares", "icecube", "km3net", "amon")) else "em"
    name = re.sub(r"[^A-Z0-9]+", "_", mission.upper()).strip("_") or "UNKNOWN"
    return PacketType(name, mission, instrument, messenger, "alert")


def upstream_topic(data: bytes) -> str:
    """Topic of a VOEvent: GCN Kafka's ``gcn.classic.voevent.<NOTICE_TYPE_NAME>``.

    SVOM VOEvents → ``gcn.notices.svom.voevent.<instrument>`` (their real GCN topic); a GCN
    stream without a known packet type → ``gcn.classic.voevent.<STREAM>`` (no such topic
    exists upstream: the name says where it came from); a non-GCN stream →
    ``voevent.<authority>.<path>`` (``voevent.gaia.cam.uk.alerts``: these arrive over
    VOEvent transport, not GCN Kafka).

    Raises
    ------
    DecodeError
        Malformed XML or no ivorn.
    """
    root, ivorn = _root_and_ivorn(data)
    p = params(root)
    if is_lvc(ivorn, p) or _packet_type(ivorn, p) is not None:
        return _describe(root, ivorn, p)[1]
    if ivorn.startswith(GCN_PREFIX):
        return f"gcn.classic.voevent.{_generic_info(ivorn, 'gcn').name}"
    rest = _stream(ivorn).removeprefix("ivo://").strip("/")
    return "voevent." + (re.sub(r"[^a-z0-9.]+", ".", rest.lower().replace("/", ".")).strip(".") or "unknown")


def _packet_type(ivorn: str, p: dict) -> int | None:
    """The GCN Classic packet type of a GCN or SVOM notice when it is one we describe, else
    None (no ``Packet_Type``, or a number we have no description of: read generically).

    Raises
    ------
    DecodeError
        A ``Packet_Type`` Param whose value is not an integer.
    """
    if ivorn.startswith(SVOM_PREFIX):
        return 0
    if not ivorn.startswith(GCN_PREFIX):
        return None
    raw = p.get("Packet_Type", (None, None))[0]
    if raw is None:
        return None  # no packet type at all (ANTARES): read generically
    number = _integer(raw)
    if number is None:  # present but not a number: a corrupt notice, not a new kind
        raise DecodeError(f"VOEvent {ivorn}: no integer Packet_Type param (got {raw!r})")
    return number if number in PACKET_TYPES else None


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


def _sky_map_url(p: dict) -> str | None:
    """A sky map reference among the Params (``skymap_fits``, ``HealPix_URL``, ...): the
    first Param whose name holds ``skymap`` or ``healpix`` and whose value is a URL."""
    for name, (value, _unit) in p.items():
        low = name.lower()
        if ("skymap" in low or "healpix" in low) and value and value.strip().lower().startswith(("http://", "https://")):
            return value.strip()
    return None


def _generic_properties(root: Any, ivorn: str, role: str, p: dict) -> dict[str, Any]:
    """Properties of a VOEvent we have no packet description for: the known science Params
    (as for GCN notices), then every named Param under ``params`` (at most
    :data:`MAX_GENERIC_PARAMS`, values cut at :data:`MAX_PARAM_CHARS`), the stream, the
    time system (``AstroCoordSystem`` id, e.g. ``TDB-ICRS-BARY`` for Gaia) and the
    ``Why`` inference's description."""
    props: dict[str, Any] = {"ivorn": ivorn, "role": role, "stream": _stream(ivorn), "time_source": "ISOTime"}
    for name, (value, _unit) in p.items():
        if name in _NUMERIC and (x := _float(value)) is not None:
            props.setdefault(_NUMERIC[name], x)
        elif name in _TEXT and value:
            props.setdefault(_TEXT[name], value.strip())
    props["params"] = {name[:MAX_PARAM_NAME_CHARS]: (value or "")[:MAX_PARAM_CHARS]
                       for name, (value, _unit) in list(p.items())[:MAX_GENERIC_PARAMS]}
    system = _find(root, "WhereWhen", "AstroCoordSystem")
    if system is not None and system.get("id"):
        props["time_system"] = _one_line(system.get("id"), 80)
    why = _find(root, "Why")
    if why is not None:
        text = " ".join(t.strip() for t in why.itertext() if t.strip())
        if text:
            props["why"] = _one_line(text, MAX_PARAM_CHARS)
    is_test = role == "test" or any((p.get(f, (None, None))[0] or "").lower() in _TRUE for f in _TEST_FLAGS)
    if is_test:
        props["role"] = "test"
    return props


def _decode_generic(root: Any, ivorn: str, role: str, p: dict, source: str) -> Event:
    """A VOEvent without a GCN Classic packet type we describe: a GCN stream without
    ``Packet_Type`` (ANTARES) or of an unknown type, or a non-GCN stream (Gaia, ASAS-SN).

    Read when it carries what an Event needs, else rejected saying what is missing: the
    event time (WhereWhen ``ISOTime``) and a position (``Position2D``) or a sky map
    reference (a ``skymap``/``healpix`` URL Param). ``role`` was checked by the caller.
    """
    info = _generic_info(ivorn, source)
    iso = _find(root, "WhereWhen", "ISOTime")
    if iso is None or not (iso.text or "").strip():
        raise DecodeError(f"VOEvent {ivorn}: no WhereWhen ISOTime: an Event needs the event time T0")
    t0 = _utc(iso.text.strip(), f"VOEvent {ivorn} ISOTime")
    localization = _localization(root, info, ivorn)
    skymap_url = _sky_map_url(p)
    if localization is None and skymap_url is None:
        raise DecodeError(f"VOEvent {ivorn}: no WhereWhen Position2D and no sky map URL Param: "
                          "an Event needs a position or a sky map")
    props = _generic_properties(root, ivorn, role, p)
    if skymap_url is not None:
        props.setdefault("skymap_url", skymap_url)
    number = _integer(p.get("Packet_Type", (None, None))[0])
    if number is not None:
        props["packet_type"] = number
    alert_type = "retraction" if (p.get("Retraction", (None, None))[0] or "").strip().lower() in _TRUE else "alert"
    try:
        return Event(id=f"{source}:{ivorn}", source=source, messenger=info.messenger, mission=info.mission,
                     instrument=info.instrument, upstream_id=_upstream_id(ivorn, p), alert_type=alert_type,
                     time=format_time(t0), localization=localization, properties=props, format="voevent")
    except ValidationError as exc:
        raise DecodeError(f"VOEvent {ivorn}: {validation_reason(exc)}") from None


def decode(data: bytes) -> list[Event]:
    """Decode and normalize one VOEvent message.

    Parameters
    ----------
    data : bytes
        The VOEvent XML exactly as received (GCN Kafka ``gcn.classic.voevent.*`` value,
        or a VOEvent of another stream).

    Returns
    -------
    list of Event
        One Event, ``format="voevent"``: ``source="gcn"`` for GCN and SVOM notices,
        ``source="voevent"`` for other streams (Gaia, ASAS-SN); LVC VOEvents of every era
        are decoded by :func:`broker.sources.igwn.decode_voevent` (``source="igwn"``).

    Raises
    ------
    DecodeError
        One line naming the ivorn (or ``?``): malformed XML, no ivorn, a utility
        (heartbeat) VOEvent, or a VOEvent missing what an Event needs (the WhereWhen
        time; for streams without a GCN packet description, a position or sky map URL).
    """
    root, ivorn = _root_and_ivorn(data)
    p = params(root)
    if is_lvc(ivorn, p):
        from broker.sources import igwn

        result = igwn.decode_voevent(root, data)
        return list(result) if isinstance(result, (list, tuple)) else [result]
    role = (root.get("role") or "observation").strip().lower()
    if role == "utility":
        raise DecodeError(f"VOEvent {ivorn}: role 'utility' (heartbeat) carries no alert")
    if _packet_type(ivorn, p) is None:
        source = "gcn" if ivorn.startswith(GCN_PREFIX) else "voevent"
        return [_decode_generic(root, ivorn, role, p, source)]
    info, _topic = _describe(root, ivorn, p)

    iso = _find(root, "WhereWhen", "ISOTime")
    if iso is None or not (iso.text or "").strip():
        raise DecodeError(f"VOEvent {ivorn}: no WhereWhen ISOTime: an Event needs the event time T0")
    t0 = _utc(iso.text.strip(), f"VOEvent {ivorn} ISOTime")

    alert_type = info.alert_type
    if (p.get("Retraction", (None, None))[0] or "").strip().lower() in _TRUE:
        alert_type = "retraction"
    localization = _localization(root, info, ivorn)
    properties = _properties(ivorn, role, info, p)
    properties["time_source"] = "ISOTime"
    upstream_id = _upstream_id(ivorn, p)
    try:
        event = Event(
            id=f"gcn:{ivorn}",
            source="gcn",
            messenger=info.messenger,
            mission=info.mission,
            instrument=info.instrument,
            upstream_id=upstream_id,
            alert_type=alert_type,
            time=format_time(t0),
            localization=localization,
            properties=properties,
            format="voevent",
        )
    except ValidationError as exc:
        raise DecodeError(f"VOEvent {ivorn}: {validation_reason(exc)}") from None
    if p.get("TrigID", (None, None))[0] and alert_type != "retraction" and properties.get("role") != "test":
        # GCN Classic: ISOTime is the trigger's time (Burst_TJD/SOD), also in follow-ups
        remember_trigger(info.mission, upstream_id, t0)
    return [event]


DECODER = AlertDecoder(name="voevent", format="voevent", accepts=lambda data: True,
                       decode=lambda data, parsed: decode(data), upstream_topic=lambda data, parsed: upstream_topic(data),
                       priority=10, describes="a GCN Classic VOEvent")
"""GCN Classic VOEvent XML (entry point ``voevent`` of ``mma_broker.sources``): takes
every XML message (LVC VOEvents go on to :mod:`broker.sources.igwn`)."""
