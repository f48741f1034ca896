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
from broker.sources import gcn, voevent

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


GCN_FILES = [p for p in FILES if _ivorn(p).startswith(("ivo://nasa.gsfc.gcn/", "ivo://org.svom/"))]
LVC_FILES = [p for p in FILES if _ivorn(p).startswith("ivo://gwnet/LVC")]
OTHER_FILES = [p for p in FILES if p not in GCN_FILES and p not in LVC_FILES]

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
    assert (len(FILES), len(GCN_FILES), len(LVC_FILES), len(OTHER_FILES)) == (27, 24, 1, 2)
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


def test_lvc_voevent_goes_to_igwn():
    [path] = LVC_FILES
    [event] = voevent.decode(path.read_bytes())
    assert event.source == "igwn" and event.messenger == "gw"
    assert voevent.upstream_topic(path.read_bytes()) == "gcn.classic.voevent.LVC_PRELIMINARY"


@pytest.mark.parametrize("path", OTHER_FILES, ids=_id)
def test_non_gcn_voevent_rejected(path):
    stream = _ivorn(path).split("#")[0]
    with pytest.raises(DecodeError, match=f"unsupported VOEvent stream {stream}"):
        voevent.decode(path.read_bytes())
    with pytest.raises(DecodeError, match="unsupported VOEvent stream"):
        voevent.upstream_topic(path.read_bytes())


def _real_root() -> tuple[Path, etree._Element]:
    path = DATA / "voevent/pygcn/gbm_flt_pos.xml"
    return path, etree.fromstring(path.read_bytes())


def test_no_wherewhen_is_one_line_error_naming_ivorn():
    path, root = _real_root()
    for el in root.xpath("//*[local-name()='WhereWhen']"):
        el.getparent().remove(el)
    with pytest.raises(DecodeError) as info:
        voevent.decode(etree.tostring(root))
    assert str(info.value) == f"VOEvent {_ivorn(path)}: no WhereWhen/ObsDataLocation time"


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
    assert len(ids) == len(set(ids)) == 25 + 78
