"""GCN Classic VOEvents: every real sample, checked against values read with lxml."""

from __future__ import annotations

import json
from pathlib import Path

import astropy.units as u
import pytest
from astropy.time import Time
from lxml import etree

from broker.errors import DecodeError
from broker.sources import decode as dispatch_decode
from broker.sources import gcn, gcn_packets, voevent

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = sorted((DATA / "voevent").rglob("*.xml"))


def _xp(path: Path, expr: str) -> list:
    return etree.parse(str(path)).xpath(expr)


def _ivorn(path: Path) -> str:
    return _xp(path, "/*[local-name()='VOEvent']/@ivorn")[0]


def _param(path: Path, name: str) -> str | None:
    found = _xp(path, f"//*[local-name()='What']//*[local-name()='Param'][@name='{name}']/@value")
    return found[0] if found else None


def _text(path: Path, local: str) -> str | None:
    found = _xp(path, f"//*[local-name()='WhereWhen']//*[local-name()='{local}']/text()")
    return found[0].strip() if found else None


def _id(path: Path) -> str:
    return str(path.relative_to(DATA / "voevent"))


LVC_FILES = [p for p in FILES if _ivorn(p).startswith(("ivo://gwnet/", "ivo://nasa.gsfc.gcn/LVC#"))]
GCN_STREAMS = [p for p in FILES if _ivorn(p).startswith(("ivo://nasa.gsfc.gcn/", "ivo://org.svom/")) and p not in LVC_FILES]
GCN_FILES = [p for p in GCN_STREAMS if _param(p, "Packet_Type") is not None]  # typed notices
ANTARES = [p for p in GCN_STREAMS if p not in GCN_FILES]  # GCN notices without Packet_Type
OTHER_FILES = [p for p in FILES if p not in GCN_STREAMS and p not in LVC_FILES]
USERGUIDE_XML = sorted((DATA / "igwn/userguide").glob("*.xml"))  # O4 user guide VOEvents

# GCN Classic notice type names of the packet types in the samples (gcn.nasa.gov topic list).
EXPECTED_NAME = {
    53: "INTEGRAL_WAKEUP", 61: "SWIFT_BAT_GRB_POS_ACK", 63: "SWIFT_BAT_GRB_LC", 65: "SWIFT_FOM_OBS",
    67: "SWIFT_XRT_POSITION", 81: "SWIFT_UVOT_POS", 97: "SWIFT_BAT_QL_POS", 110: "FERMI_GBM_ALERT",
    111: "FERMI_GBM_FLT_POS", 112: "FERMI_GBM_GND_POS", 115: "FERMI_GBM_FIN_POS",
    131: "FERMI_GBM_SUBTHRESH", 139: "MOA", 149: "SNEWS", 150: "LVC_PRELIMINARY",
    174: "ICECUBE_ASTROTRACK_BRONZE", 176: "ICECUBE_CASCADE",
}
EXPECTED_MISSION = {
    "Fermi": "Fermi", "SWIFT": "Swift", "INTEGRAL": "INTEGRAL", "AMON": "IceCube", "SNEWS": "SNEWS",
    "MOA": "MOA", "fsc": "SVOM",
}
EXPECTED_ALERT_TYPE = {
    53: "wakeup", 61: "grb_pos_ack", 110: "alert", 111: "flt_pos", 112: "gnd_pos", 115: "fin_pos",
    173: "gold", 174: "bronze", 176: "cascade",
}
CONTAINMENT = {"Fermi": 0.68, "Swift": 0.9, "INTEGRAL": 0.9, "IceCube": 0.9, "SVOM": 0.9}


def test_sample_counts():
    assert (len(FILES), len(GCN_FILES), len(ANTARES), len(LVC_FILES), len(OTHER_FILES)) == (39, 24, 2, 11, 2)
    assert all(_ivorn(p).startswith("ivo://nasa.gsfc.gcn/Antares_Alert#") for p in ANTARES)
    assert sorted(p.name.split("_")[0] for p in OTHER_FILES) == ["ASASSN", "Gaia16aac.xml"]


@pytest.mark.parametrize("path", GCN_FILES, ids=_id)
def test_gcn_voevent_normalized_from_file_values(path):
    data = path.read_bytes()
    [event] = voevent.decode(data)
    [dispatched] = dispatch_decode(data)  # the dispatcher adds the category (broker.category)
    assert dispatched.category is not None
    assert dispatched.model_copy(update={"category": None, "category_rule": None}) == event
    ivorn = _ivorn(path)
    assert event.id == f"gcn:{ivorn}"
    assert event.source == "gcn" and event.format == "voevent"
    assert event.properties["ivorn"] == ivorn
    assert event.properties["role"] == etree.parse(str(path)).getroot().get("role")

    iso = _text(path, "ISOTime")
    expected = Time(iso.replace("Z", ""), scale="utc")
    assert abs((Time(event.time[:-1], scale="utc") - expected).to_value(u.ms)) < 1.0

    authority = ivorn.split("/")[3].split("#")[0]
    assert event.mission == EXPECTED_MISSION[authority]
    packet = int(_param(path, "Packet_Type"))
    assert event.properties["packet_type"] == packet
    if ivorn.startswith("ivo://org.svom/"):
        instrument = _param(path, "Instrument")
        assert voevent.upstream_topic(data) == f"gcn.notices.svom.voevent.{instrument.lower()}"
        assert event.upstream_id == _param(path, "Burst_Id")
        assert ivorn.endswith(f"{instrument.lower()}-{event.alert_type}")
    else:
        assert voevent.upstream_topic(data) == f"gcn.classic.voevent.{EXPECTED_NAME[packet]}"
        if _param(path, "TrigID"):
            assert event.upstream_id == _param(path, "TrigID")
    if packet in EXPECTED_ALERT_TYPE:
        assert event.alert_type == EXPECTED_ALERT_TYPE[packet]
    if (_param(path, "Retraction") or "").lower() == "true":
        assert event.alert_type == "retraction"

    ra, dec, err = (_text(path, name) for name in ("C1", "C2", "Error2Radius"))
    loc = event.localization
    if ra is None or float(err or 0) >= 180 or (float(ra) == float(dec) == float(err or 0) == 0):
        assert loc is None
    else:
        assert loc.type == "point"
        assert loc.ra == pytest.approx(float(ra)) and loc.dec == pytest.approx(float(dec))
        if float(err):
            assert loc.error_radius == pytest.approx(float(err))
            assert loc.containment == CONTAINMENT.get(event.mission)


def test_neutrino_and_fermi_science_values():
    [cascade] = voevent.decode((DATA / "voevent/fink-mm/icecube/voevent_number=825.xml").read_bytes())
    path = DATA / "voevent/fink-mm/icecube/voevent_number=825.xml"
    assert cascade.messenger == "neutrino"
    assert cascade.properties["energy_gev"] == pytest.approx(float(_param(path, "energy")) * 1e3)  # TeV
    assert cascade.properties["far_hz"] == pytest.approx(float(_param(path, "FAR")) / (365.25 * 86400))
    assert cascade.properties["signalness"] == pytest.approx(float(_param(path, "signalness")))
    assert cascade.properties["skymap_url"] == _param(path, "skymap_fits")
    path = DATA / "voevent/gwcelery/fermi_grb_gcn.xml"
    [flt] = voevent.decode(path.read_bytes())
    assert _param(path, "Most_Likely_Index") == "4" and flt.properties["most_likely"] == "GRB"
    assert flt.properties["most_likely_prob"] == pytest.approx(float(_param(path, "Most_Likely_Prob")) / 100)


def _json_counterpart(path: Path) -> Path | None:
    """The igwn.gwalert JSON of the same superevent and alert type (LVK user guide), if any."""
    found = DATA / "igwn/userguide" / f"{_param(path, 'GraceID')}-{_lvc_alert_type(path)}.json"
    return found if found.exists() else None


def _lvc_alert_type(path: Path) -> str:
    """AlertType, or retraction when Param Retraction is true (read with lxml)."""
    if (_param(path, "Retraction") or "").lower() == "true":
        return "retraction"
    return _param(path, "AlertType").lower()


def _lvc_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", LVC_FILES + USERGUIDE_XML, ids=_lvc_id)
def test_lvc_voevent_of_every_era_goes_to_igwn(path):
    """O2 (gcn_sender: GW170817 as LVC and as GCN sent it), the user guide's samples of
    2018-11 (gcn_sender), 2019-03 (ivo://gwnet/LVC), O3 (hop-client) and O4: superevent id,
    alert type and T0 as the file says; where the user guide has the igwn.gwalert JSON of
    the same superevent and type, the JSON decodes to the same superevent id and type."""
    data = path.read_bytes()
    [event] = voevent.decode(data)
    assert event.source == "igwn" and event.messenger == "gw" and event.id == f"igwn:{_ivorn(path)}"
    assert event.upstream_id == _param(path, "GraceID")
    assert event.alert_type == _lvc_alert_type(path)
    iso = _text(path, "ISOTime")
    assert abs((Time(event.time[:-1], scale="utc") - Time(iso.replace("Z", ""), scale="utc")).to_value(u.ms)) < 1.0
    info = gcn_packets.PACKET_TYPES[int(_param(path, "Packet_Type"))]
    assert info.name.startswith("LVC_") and voevent.upstream_topic(data) == f"gcn.classic.voevent.{info.name}"
    counterpart = _json_counterpart(path)
    if counterpart is not None:
        obj = json.loads(counterpart.read_bytes())
        [from_json] = dispatch_decode(counterpart.read_bytes())
        assert (event.upstream_id, event.alert_type) == (obj["superevent_id"], obj["alert_type"].lower())
        assert (from_json.upstream_id, from_json.alert_type) == (event.upstream_id, event.alert_type)


def test_lvc_pairs_cover_every_era():
    """The real VOEvent/JSON pairs of the test above: 14 of the 17 LVC VOEvents have a JSON
    alert of the same superevent and type (the three O2/O3 ones have none: no JSON then)."""
    eras = sorted({p.parent.name for p in LVC_FILES + USERGUIDE_XML})
    assert eras == ["gwcelery-O2", "hop-client", "userguide", "userguide-2018-11", "userguide-2019-03"]
    assert len(LVC_FILES + USERGUIDE_XML) == 17
    assert len([p for p in LVC_FILES + USERGUIDE_XML if _json_counterpart(p)]) == 14


def test_retraction_of_2018_keeps_alerttype_and_says_retraction():
    """The user guide's 2018 retraction: AlertType Preliminary with Retraction=true (lxml)."""
    path = DATA / "voevent/lvc-eras/userguide-2018-11/MS181101ab-4-Retraction.xml"
    assert (_param(path, "AlertType"), _param(path, "Retraction")) == ("Preliminary", "true")
    [event] = voevent.decode(path.read_bytes())
    assert event.is_retraction


def test_gw170817_as_lvc_and_gcn_sent_it():
    """G298048 (GW170817) Initial: the LVC-issued ivo://gwnet/gcn_sender VOEvent and GCN's
    re-issue ivo://nasa.gsfc.gcn/LVC# give one superevent, alert type and T0, two ids."""
    folder = DATA / "voevent/lvc-eras/gwcelery-O2"
    [lvc] = voevent.decode((folder / "G298048-1-Initial.xml").read_bytes())
    [gcn_copy] = voevent.decode((folder / "G298048-1-Initial.gcn.xml").read_bytes())
    assert (lvc.upstream_id, lvc.alert_type, lvc.time) == (gcn_copy.upstream_id, gcn_copy.alert_type, gcn_copy.time)
    assert lvc.upstream_id == "G298048" and lvc.id != gcn_copy.id
    assert lvc.properties["far_hz"] == pytest.approx(float(_param(folder / "G298048-1-Initial.xml", "FAR")))


@pytest.mark.parametrize("path", OTHER_FILES, ids=_id)
def test_non_gcn_voevent_read_from_file_values(path):
    """Gaia and ASAS-SN (4PiSky) VOEvents: time, position and role as lxml reads them."""
    data = path.read_bytes()
    [event] = voevent.decode(data)
    [dispatched] = dispatch_decode(data)
    assert dispatched.model_copy(update={"category": None, "category_rule": None}) == event
    ivorn = _ivorn(path)
    stream, fragment = ivorn.split("#", 1)
    assert event.source == "voevent" and event.id == f"voevent:{ivorn}" and event.format == "voevent"
    assert event.upstream_id == fragment and event.properties["stream"] == stream
    assert event.mission == {"ivo://gaia.cam.uk/alerts": "Gaia", "ivo://voevent.4pisky.org/ASASSN": "ASAS-SN"}[stream]
    assert event.properties["role"] == etree.parse(str(path)).getroot().get("role")
    expected = Time(_text(path, "ISOTime").replace("+00:00", ""), scale="utc")
    assert abs((Time(event.time[:-1], scale="utc") - expected).to_value(u.ms)) < 1.0
    loc = event.localization
    assert loc.ra == pytest.approx(float(_text(path, "C1"))) and loc.dec == pytest.approx(float(_text(path, "C2")))
    assert loc.error_radius == pytest.approx(float(_text(path, "Error2Radius")))
    assert voevent.upstream_topic(data).startswith("voevent.")


def _without(path: Path, local: str) -> bytes:
    root = etree.fromstring(path.read_bytes())
    for el in root.xpath(f"//*[local-name()='{local}']"):
        el.getparent().remove(el)
    return etree.tostring(root)


@pytest.mark.parametrize("path", OTHER_FILES, ids=_id)
def test_non_gcn_voevent_missing_what_an_event_needs_is_rejected_saying_what(path):
    ivorn = _ivorn(path)
    with pytest.raises(DecodeError) as info:
        voevent.decode(_without(path, "Position2D"))
    assert str(info.value) == (f"VOEvent {ivorn}: no WhereWhen Position2D and no sky map URL Param: "
                               "an Event needs a position or a sky map")
    with pytest.raises(DecodeError, match=r"no WhereWhen ISOTime: an Event needs the event time T0"):
        voevent.decode(_without(path, "ISOTime"))
    # a sky map reference instead of a position is enough
    root = etree.fromstring(_without(path, "Position2D"))
    what = root.xpath("//*[local-name()='What']")[0]
    etree.SubElement(what, "Param", name="skymap_fits", value="https://example.org/map.fits")
    [event] = voevent.decode(etree.tostring(root))
    assert event.localization is None and event.properties["skymap_url"] == "https://example.org/map.fits"
    root.set("role", "utility")
    with pytest.raises(DecodeError, match="utility"):
        voevent.decode(etree.tostring(root))


@pytest.mark.parametrize("path", ANTARES, ids=lambda p: p.name)
def test_antares_notice_without_packet_type(path):
    """Real ANTARES neutrino notices through GCN (ivo://nasa.gsfc.gcn/Antares_Alert, no
    Packet_Type; 2019): time, position, trigger id and role as lxml reads them."""
    data = path.read_bytes()
    assert _param(path, "Packet_Type") is None
    [event] = voevent.decode(data)
    assert event.source == "gcn" and event.id == f"gcn:{_ivorn(path)}"
    assert (event.mission, event.messenger) == ("ANTARES", "neutrino")
    assert event.upstream_id == _param(path, "TrigID")
    assert abs((Time(event.time[:-1], scale="utc") - Time(_text(path, "ISOTime"), scale="utc")).to_value(u.ms)) < 1
    loc = event.localization
    c1, c2 = (float(_xp(path, f"//*[local-name()='Position2D']//*[local-name()='{c}']/text()")[0]) for c in ("C1", "C2"))
    assert (loc.ra, loc.dec) == (pytest.approx(c1), pytest.approx(c2))  # not the observatory's Position3D
    assert loc.error_radius == pytest.approx(float(_text(path, "Error2Radius"))) and loc.containment is None
    assert event.properties["params"]["pvalue"] == _param(path, "pvalue")
    assert voevent.upstream_topic(data) == "gcn.classic.voevent.ANTARES"


def test_gcn_stream_without_packet_type_is_read_generically():
    """A GCN VOEvent without Packet_Type (as AMON/ANTARES notices come): a real IceCube
    cascade VOEvent with its Packet_Type removed keeps its time, position and messenger."""
    path = DATA / "voevent/fink-mm/icecube/voevent_number=825.xml"
    root = etree.fromstring(path.read_bytes())
    for el in root.xpath("//*[local-name()='Param'][@name='Packet_Type']"):
        el.getparent().remove(el)
    data = etree.tostring(root)
    [event] = voevent.decode(data)
    assert event.source == "gcn" and event.mission == "AMON" and event.messenger == "neutrino"
    assert event.localization.ra == pytest.approx(float(_text(path, "C1")))
    assert abs((Time(event.time[:-1], scale="utc") - Time(_text(path, "ISOTime"), scale="utc")).to_value(u.ms)) < 1
    assert voevent.upstream_topic(data) == "gcn.classic.voevent.AMON"


def _real_root() -> tuple[Path, etree._Element]:
    path = DATA / "voevent/pygcn/gbm_flt_pos.xml"
    return path, etree.fromstring(path.read_bytes())


def test_no_wherewhen_is_one_line_error_naming_ivorn():
    path, root = _real_root()
    for el in root.xpath("//*[local-name()='WhereWhen']"):
        el.getparent().remove(el)
    with pytest.raises(DecodeError) as info:
        voevent.decode(etree.tostring(root))
    assert str(info.value) == f"VOEvent {_ivorn(path)}: no WhereWhen ISOTime: an Event needs the event time T0"


def test_no_ivorn_and_malformed_xml():
    _, root = _real_root()
    del root.attrib["ivorn"]
    with pytest.raises(DecodeError, match=r"^VOEvent \?: no ivorn"):
        voevent.decode(etree.tostring(root))
    data = (DATA / "voevent/gwcelery/swift_grb_gcn.xml").read_bytes()
    with pytest.raises(DecodeError, match=r"^VOEvent \?: malformed XML") as info:
        voevent.decode(data[: len(data) // 2])
    assert "\n" not in str(info.value)


def test_utility_role_rejected_test_role_kept():
    _, root = _real_root()
    root.set("role", "utility")
    with pytest.raises(DecodeError, match="utility"):
        voevent.decode(etree.tostring(root))
    root.set("role", "test")
    [event] = voevent.decode(etree.tostring(root))
    assert event.properties["role"] == "test"


def test_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    data = (DATA / "voevent/gwcelery/swift_grb_gcn.xml").read_text()
    body = data.split("?>", 1)[1]
    doctype = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret}">]>'
    evil = doctype + body.replace("<Description>", "<Description>&xxe;", 1)
    try:
        events = voevent.decode(evil.encode())
    except DecodeError:
        return
    assert all("TOP-SECRET" not in e.to_json() for e in events)


def test_ids_unique_across_all_samples():
    ids = [e.id for p in GCN_FILES + LVC_FILES for e in voevent.decode(p.read_bytes())]
    json_files = sorted((DATA / "gcn").rglob("*.json"))
    contents = {json.dumps(json.loads(p.read_bytes()), sort_keys=True) for p in json_files}
    for content in contents:
        obj = json.loads(content)
        if gcn.is_gcn_notice(obj):
            try:
                ids.append(gcn.decode(obj).id)
            except DecodeError:
                pass
    # One real duplicate: the user guide's 2018-11 Update reuses its Initial's ivorn
    # (ivo://gwnet/gcn_sender#MS181101ab-2-Initial), and a VOEvent's id is its ivorn.
    dupes = {i for i in ids if ids.count(i) > 1}
    assert dupes == {"igwn:ivo://gwnet/gcn_sender#MS181101ab-2-Initial"}
    assert len(ids) - 1 == len(set(ids)) == 34 + 115  # 35 VOEvents (one duplicate id), 115 JSON contents


def test_non_gcn_voevent_groups_as_optical():
    """A Gaia alert's event group is its own (``voevent:<alert name>``), of category optical."""
    from broker.enrich.groups import category_of, group_key

    [event] = voevent.decode((DATA / "voevent/voevent-parse/Gaia16aac.xml").read_bytes())
    assert group_key(event) == "voevent:Gaia16aac" and category_of(event) == "optical"
    [antares] = voevent.decode((DATA / "voevent/mwa_trigger/Antares_1438351269.xml").read_bytes())
    assert group_key(antares) == "gcn:antares:1438351269" and category_of(antares) == "neutrino"
