"""Group keys and categories on real alerts; the best-localization rule. The stored groups
(arrival order, retraction, time windows) are tested on PostgreSQL in
tests/integration/test_localization_db.py."""

from __future__ import annotations

from collections import namedtuple

import pytest

from broker.enrich.groups import _best, category_of, group_key
from broker.sources import decode
from tests.conftest import DATA

USERGUIDE = DATA / "igwn" / "userguide"
GCN = DATA / "gcn" / "gwcelery-kafka"
SWIFT = DATA / "voevent" / "fink-mm" / "swift"


def _events(*paths):
    return [ev for p in paths for ev in decode(p.read_bytes())]


def test_every_form_of_an_lvk_superevent_is_one_group():
    files = sorted(USERGUIDE.glob("MS181101ab-*.json")) + sorted(USERGUIDE.glob("MS181101ab-*.avro")) \
        + sorted(USERGUIDE.glob("MS181101ab-*.xml"))
    events = [ev for p in files if "displayexample" not in p.name for ev in decode(p.read_bytes())]
    assert len(events) == 14 and {ev.format for ev in events} == {"json", "avro", "voevent"}
    assert {group_key(ev) for ev in events} == {"igwn:MS181101ab"}
    assert {category_of(ev) for ev in events} == {"gw"}
    [other] = _events(DATA / "igwn" / "fink-mm" / "MS230518e-initial.json")
    assert group_key(other) == "igwn:MS230518e"


def test_a_gbm_trigger_alert_flight_ground_final_are_one_group():
    events = _events(*(GCN / f"kafka_alert_fermi_{k}.json" for k in ("alert", "flight", "ground", "final")))
    assert [ev.alert_type for ev in events] == ["initial", "update", "update", "update"]
    assert {group_key(ev) for ev in events} == {"gcn:fermi:745121685"}
    assert {category_of(ev) for ev in events} == {"grb"}


def test_gbm_voevents_of_one_trigger_share_the_json_rule():
    flt, fin = _events(DATA / "voevent" / "gwcelery" / "fermi_grb_gcn.xml",
                       DATA / "voevent" / "gwcelery" / "fermi_final_gcn.xml")
    assert (flt.alert_type, fin.alert_type) == ("flt_pos", "fin_pos")
    assert group_key(flt) == group_key(fin) == "gcn:fermi:548848711"


def test_swift_notices_of_one_trigger_are_one_group_and_xrt_uvot_use_the_trigger_number():
    bat = _events(*(SWIFT / f"voevent_number={n}.xml" for n in (391, 392, 393, 405)))
    assert {ev.instrument for ev in bat} == {"BAT", None}
    assert {group_key(ev) for ev in bat} == {"gcn:swift:1118357"}
    xrt, uvot = _events(SWIFT / "voevent_number=4554.xml", SWIFT / "voevent_number=8582.xml")
    assert (xrt.instrument, uvot.instrument) == ("XRT", "UVOT")
    assert (group_key(xrt), group_key(uvot)) == ("gcn:swift:1120270", "gcn:swift:1121751")
    [guano] = _events(GCN / "kafka_alert_swift_targeted.json")
    assert group_key(guano) == "gcn:swift:694215995"


@pytest.mark.parametrize("path, key, category", [
    (GCN / "kafka_alert_icecube_gold.json", "gcn:icecube:137841_57034692_0", "neutrino"),
    (GCN / "kafka_alert_chime_detection.json", "gcn:chime:427325190", "frb"),
    (GCN / "kafka_alert_einteinprobe.json", "gcn:einstein-probe:01709015181", "xray"),
    (GCN / "kafka_alert_svom_wakeup.json", "gcn:svom:sb24022203", "grb"),
    (DATA / "voevent" / "fink-mm" / "integral" / "voevent_number=18790.xml", "gcn:integral:10042", "grb"),
    (DATA / "ztf" / "fink-client" / "ZTF19acihgng.avro", "ztf:ZTF19acihgng", "optical"),
])
def test_keys_and_categories_of_other_sources(path, key, category):
    ev = decode(path.read_bytes())[0]
    assert (group_key(ev), category_of(ev)) == (key, category)


def test_ztf_alerts_of_one_object_are_one_group():
    events = _events(*sorted((DATA / "ztf").rglob("*.avro")))
    by_object: dict[str, set[str]] = {}
    for ev in events:
        by_object.setdefault(ev.upstream_id, set()).add(group_key(ev))
    assert all(keys == {f"ztf:{obj}"} for obj, keys in by_object.items())


Row = namedtuple("Row", "localization_id area_90_deg2")


def test_best_localization_is_the_smallest_90_area_later_on_ties():
    rows = [Row(None, None), Row("flight", 600.0), Row("ground", 20.0), Row("final", 20.0), Row("map", 900.0)]
    assert _best(rows) == "final"
    assert _best([Row("a", None), Row("b", None)]) == "b"  # points without radius: the latest
    assert _best([Row(None, None)]) is None
