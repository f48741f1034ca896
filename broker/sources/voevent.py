"""GCN Classic VOEvent XML (IVOA VOEvent 1.1/2.0, Seaman et al. 2011) → Event.

Parsing is safe: lxml with no network access, no DTD loading, no entity resolution and
``huge_tree`` off. Elements are matched by local name, because VOEvent 1.1 puts the STC
block (``WhereWhen``) in its own namespace while 2.0 leaves it unqualified.

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
≥ 180° (all sky, e.g. SNEWS) or when position and error are all zero (GBM ALERT).
``alert_type`` comes from the packet type, or ``"retraction"`` when the notice says
``Retraction=true`` (AMON/IceCube, SNEWS).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lxml import etree

from broker.errors import DecodeError
from broker.event import Event, PointLocalization, format_time
from broker.sources.gcn import parse_utc
from broker.sources.gcn_packets import CONTAINMENT, GBM_SOURCE_CLASSES, PACKET_TYPES, PacketType

logger = logging.getLogger(__name__)

GCN_PREFIX = "ivo://nasa.gsfc.gcn/"
SVOM_PREFIX = "ivo://org.svom/"
LVC_PREFIX = "ivo://gwnet/LVC"
_YEAR_S = 365.25 * 86400.0
_TRUE = {"true", "1", "yes"}
_TEST_FLAGS = ("Test_Submission", "Test", "Test_Notice", "InternalTest")

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
_FLAGS = {"Def_NOT_a_GRB": "not_a_grb", "GRB_Identified": "grb_identified", "Point_Source": "point_source"}


def _local(el: Any) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _find(root: Any, *path: str) -> Any:
    """First descendant chain matching local names ``path`` (any depth for the first)."""
    for el in root.iter():
        if _local(el) == path[0]:
            node = el
            for name in path[1:]:
                node = next((c for c in node.iter() if c is not node and _local(c) == name), None)
                if node is None:
                    break
            if node is not None:
                return node
    return None


def parse(data: bytes) -> Any:
    """Parse VOEvent bytes safely and return the root element.

    Raises
    ------
    DecodeError
        If the bytes are not well-formed XML or the root is not a VOEvent.
    """
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
    )
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise DecodeError(f"VOEvent ?: malformed XML: {exc}") from None
    if _local(root) != "VOEvent":
        raise DecodeError(f"VOEvent ?: root element is <{_local(root)}>, not <VOEvent>")
    return root


def params(root: Any) -> dict[str, tuple[str | None, str | None]]:
    """All ``<Param>`` of ``<What>`` (groups included): name → (value, unit)."""
    what = _find(root, "What")
    out: dict[str, tuple[str | None, str | None]] = {}
    if what is None:
        return out
    for el in what.iter():
        if _local(el) == "Param" and el.get("name"):
            out.setdefault(el.get("name"), (el.get("value"), el.get("unit")))
    return out


def _float(value: str | None) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


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


def _localization(root: Any, info: PacketType) -> PointLocalization | None:
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
        ra, dec = math.degrees(ra), math.degrees(dec)
        radius = math.degrees(radius) if radius is not None else None
    if radius is not None and radius >= 180.0:
        return None  # all-sky "position" (SNEWS, RADec undefined)
    if ra == 0.0 and dec == 0.0 and not radius:
        return None  # no position yet (Fermi GBM ALERT)
    if not radius:
        radius = None
    containment = CONTAINMENT.get((info.mission, info.instrument)) if radius is not None else None
    return PointLocalization(ra=ra % 360.0, dec=dec, error_radius=radius, containment=containment)


def _properties(ivorn: str, role: str, info: PacketType, p: dict) -> dict[str, Any]:
    props: dict[str, Any] = {"ivorn": ivorn, "role": role, "packet_type_name": info.name}
    packet = _float(p.get("Packet_Type", (None, None))[0])
    if packet is not None:
        props["packet_type"] = int(packet)
    serial = _float(p.get("Pkt_Ser_Num", (None, None))[0])
    if serial is not None:
        props["packet_serial_number"] = int(serial)
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
        props["energy_gev"] = energy * {"tev": 1e3, "gev": 1.0, "pev": 1e6}.get(unit, 1.0)
    for key, out in (("Most_Likely_Index", "most_likely"), ("Sec_Most_Likely_Index", "second_most_likely")):
        index = _float(p.get(key, (None, None))[0])
        if index is not None and info.mission == "Fermi":
            props[out] = GBM_SOURCE_CLASSES.get(int(index), f"UNKNOWN_{int(index)}")
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
    t0 = parse_utc(iso.text.strip(), f"VOEvent {ivorn} ISOTime")

    alert_type = info.alert_type
    if (p.get("Retraction", (None, None))[0] or "").strip().lower() in _TRUE:
        alert_type = "retraction"
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
            localization=_localization(root, info),
            properties=_properties(ivorn, role, info, p),
            format="voevent",
        )
    ]
