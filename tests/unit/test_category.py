"""Event.category on the real alerts of tests/data, through the production decoders.

The expected (category, rule) of each file was written from reading the file (the field
named in the comment), not computed with broker.category. Every alert under
tests/data/{gcn,voevent,igwn,ztf} that the decoders accept must be in the table, so a new
data file needs its expected category here.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from broker.category import CATEGORIES, RULES, categorize, set_category
from broker.errors import DecodeError
from broker.event import Event
from broker.serde import PAST_SCHEMAS_DIR, SINGLE_OBJECT_MAGIC, EventCodec, Provenance
from broker.sources import decode
from tests.conftest import DATA, ROOT

G = "gcn/gcn-schema/gcn/notices/"
C = "gcn/gcn-schema-pr161-classic/gcn/notices/classic/"
S = "gcn/gcn-schema-pr306-swift/gcn/notices/swift/"
K = "gcn/gwcelery-kafka/"
V = "voevent/"

#: file under tests/data → (category, rule) of its Event(s); the field that says so in the comment.
EXPECTED: dict[str, tuple[str, str]] = {
    # --- GCN Kafka JSON (gcn-schema examples) ---
    G + "burstcube/alert.example.json": ("grb", "classification"),  # classification {"GRB": 0.95, ...}
    G + "burstcube/test.example.json": ("grb", "classification"),
    G + "chime/frb.detection.example.json": ("frb", "gcn_schema"),  # $schema chime/frb
    G + "chime/frb.retraction.example.json": ("frb", "gcn_schema"),
    G + "chime/frb.subsequent.example.json": ("frb", "gcn_schema"),  # known_source "FRB 20231013B": a repeat
    G + "chime/frb.update.example.json": ("frb", "gcn_schema"),
    G + "dsa110/frb.detection.example.json": ("frb", "gcn_schema"),
    G + "dsa110/frb.retraction.example.json": ("frb", "gcn_schema"),
    G + "dsa110/frb.subsequent.example.json": ("frb", "gcn_schema"),
    G + "dsa110/frb.update.example.json": ("frb", "gcn_schema"),
    G + "einstein_probe/wxt/alert.example.json": ("x_ray_transient", "gcn_schema"),  # "Candidate X-ray transient"
    G + "fermi/gbm/trigger.alert.example.json": ("grb", "grb_monitor_presumed"),  # no classification yet
    G + "fermi/gbm/trigger.final.example.json": ("grb", "grb_monitor_presumed"),
    G + "fermi/gbm/trigger.flight1.example.json": ("not_astrophysical", "classification"),  # {"BELOW_HORIZON": 1}
    G + "fermi/gbm/trigger.flight2.example.json": ("unknown", "classification"),  # {"UNRELIABLE_LOCATION": 1}
    G + "fermi/gbm/trigger.flight3.example.json": ("grb", "classification"),  # {"GRB": 0.85, "GENERIC_SGR": 0.14}
    G + "fermi/gbm/trigger.ground1.example.json": ("grb", "grb_monitor_presumed"),
    G + "fermi/gbm/trigger.ground2.example.json": ("grb", "grb_monitor_presumed"),
    G + "fermi/lat/flare.example.json": ("known_source", "gcn_schema"),  # flare of OQ 334 vs reference_catalog 3FGL
    G + "glowbug/Alert.example.json": ("grb", "grb_monitor_presumed"),  # classification holds only GW labels
    G + "heasarc/archive_alert.example.json": ("archive_data", "gcn_schema"),  # IXPE data of the Crab archived
    G + "icecube/lvk_nu_track_search.example.json": ("coincidence", "gcn_schema"),  # search on S230914ak
    G + "icecube/single_neutrino_alerts.gold_bronze_track_alerts.example.json":
        ("neutrino_track", "alert_topology"),  # alert_topology "Track", pipeline "Bronze Track Alert"
    G + "km3net/alert.example.json": ("neutrino_track", "alert_topology"),  # alert_topology "Track"
    G + "km3net/alert.multiplet.example.json": ("neutrino_multiplet", "alert_topology"),  # "Multiplet"
    G + "maxi/gsc.known.example.json": ("known_source", "gcn_schema"),  # maxi/gsc.known: Swift J1858.6-0814
    G + "maxi/gsc.known.retraction.example.json": ("known_source", "gcn_schema"),
    G + "maxi/gsc.unknown.circle.example.json": ("grb", "grb_event_name"),  # event_name "GRB 230220A"
    G + "maxi/gsc.unknown.ellipse.example.json": ("grb", "grb_event_name"),
    G + "maxi/gsc.unknown.noerror.example.json": ("grb", "grb_event_name"),
    G + "maxi/gsc.unknown.rectangle.example.json": ("grb", "grb_event_name"),
    G + "maxi/gsc.unknown.retraction.example.json": ("grb", "grb_event_name"),
    G + "superk/sn_alert.real.example.json": ("supernova_neutrinos", "gcn_schema"),
    G + "superk/sn_alert.test.example.json": ("supernova_neutrinos", "gcn_schema"),
    G + "svom/eclairs/trigger.catalog.example.json": ("known_source", "svom_event_name"),  # event_name ["M1"]
    G + "svom/eclairs/trigger.not-slewing.example.json": ("grb", "grb_monitor_presumed"),
    G + "svom/eclairs/trigger.slewing.example.json": ("grb", "grb_monitor_presumed"),
    G + "svom/eclairs/trigger.wakeup.example.json": ("grb", "grb_monitor_presumed"),
    G + "svom/grm/trigger.example.json": ("grb", "grb_monitor_presumed"),
    G + "swift/bat/Guano.Retraction.example.json": ("grb", "grb_monitor_presumed"),  # no classification
    G + "swift/bat/Guano.example.json": ("grb", "classification"),  # {"GRB": 1}
    G + "swift/bat/guano.loc_arc_min.example.json": ("grb", "classification"),
    G + "swift/bat/guano.loc_map.example.json": ("grb", "classification"),
    # --- proposed JSON of GCN Classic notices (gcn-schema PR 161) ---
    C + "agile/Ground_alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "agile/MCAL_alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "amon/astrotrack_alert.example.json": ("neutrino_track", "amon_notice_type"),  # "Astrotrack Bronze"
    C + "amon/burst_alert.example.json": ("grb", "amon_notice_type"),  # "Burst": HAWC burst monitor
    C + "amon/cascade_alert.example.json": ("neutrino_cascade", "amon_notice_type"),  # "Cascade"
    C + "amon/coincidence_alert.example.json": ("coincidence", "amon_notice_type"),  # "Neutrino-EM Coincidence"
    C + "amon/ehe_alert.example.json": ("neutrino_track", "amon_notice_type"),  # "EHE"
    C + "amon/hese_alert.example.json": ("neutrino_track", "amon_notice_type"),  # "HESE"
    C + "bepposax/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "calet_gbm/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "counterpart/grb_alert.example.json": ("counterpart", "gcn_schema"),  # notice_type GRB_Counterpart
    C + "counterpart/lvc_alert.example.json": ("counterpart", "gcn_schema"),  # LVC_Counterpart of S190412
    C + "gecam/alert.example.json": ("known_source", "classification"),  # {"KNOWN_SOURCE": 1}
    C + "hete/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "integral/grb_alert.example.json": ("grb", "grb_monitor_presumed"),  # notice_type Wakeup
    C + "integral/spiacs_alert.example.json": ("grb", "grb_monitor_presumed"),  # "SPI_ACS GRB Trigger"
    C + "konus/alert.example.json": ("grb", "classification"),  # {"GRB": 1}
    C + "maxi/known_alert.example.json": ("known_source", "classification"),  # {"x-ray-star": 1}, "Known"
    C + "maxi/unknown_alert.example.json": ("x_ray_transient", "maxi_notice_type"),  # notice_type "Unknown"
    C + "milagro/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "moa/alert.example.json": ("microlensing", "gcn_schema"),
    C + "near/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "rxte/alert.example.json": ("grb", "grb_monitor_presumed"),
    C + "sk_sn/alert.example.json": ("supernova_neutrinos", "gcn_schema"),
    C + "snews/alert.example.json": ("supernova_neutrinos", "gcn_schema"),
    C + "suzaku/alert.example.json": ("grb", "grb_monitor_presumed"),  # mission "SUZAKU", WAM
    C + "alexis/alert.example.json": ("unknown", "fallback"),  # ALEXIS map transient: no class, no GRB monitor
    C + "lvc/alert.example.json": ("unknown", "fallback"),  # Classic LVC JSON as a GCN notice: no igwn group
    G + "boom/alert.example.json": ("unknown", "fallback"),  # BOOM optical target, classification_scores only
    # IceCube-230416A as gcn-schema v1.0.0 wrote it (no alert_topology; "Bronze" only in additional_info)
    "gcn/gcn-schema-v1.0.0/gcn/notices/icecube/GoldAndBronze.update.example.json": ("neutrino_track", "gcn_schema"),
    # --- Swift BAT/XRT/UVOT notices of gcn-schema PR 306 (trigger 1253910 and others) ---
    # on-board catalog match: classification {"EXO_0748-676": 1.0, "unknown": 0.0} (trigger 1236151)
    S + "bat/position.rate_trigger.update.known_source.example.json": ("known_source", "swift_bat_source_name"),
    **{S + f"{n}.example.json": ("grb", "grb_monitor_presumed") for n in (
        "bat/lightcurve.rate_trigger.initial", "bat/lightcurve.rate_trigger.update",
        "bat/position.image_trigger.initial", "bat/position.image_trigger.update",
        "bat/position.image_trigger.update.false_trigger", "bat/position.rate_trigger.initial",
        "bat/position.rate_trigger.update", "bat/scaled_map.rate_trigger.initial",
        *(f"uvot/{k}" for k in ("image.U.initial", "image.U.update", "image.blocked.initial", "image.blocked.update",
                                "image.white.initial", "image.white.update", "position.initial",
                                "source_list.U.initial", "source_list.U.update", "source_list.white.initial",
                                "source_list.white.update1", "source_list.white.update2",
                                "source_list.white.update3")),
        *(f"xrt/{k}" for k in ("image.initial", "image.update", "lightcurve.initial", "position.initial",
                               "position.update", "spectrum.LRPD.initial", "spectrum.LRPD.update",
                               "spectrum.WT.initial", "spectrum.WT.update", "sper.initial", "sper.updateN")))},
    # --- gwcelery's recorded GCN Kafka messages ---
    K + "kafka_alert_chime_detection.json": ("frb", "gcn_schema"),
    K + "kafka_alert_chime_retraction.json": ("frb", "gcn_schema"),
    K + "kafka_alert_einteinprobe.json": ("x_ray_transient", "gcn_schema"),
    K + "kafka_alert_fermi_alert.json": ("grb", "grb_monitor_presumed"),
    K + "kafka_alert_fermi_final.json": ("grb", "grb_monitor_presumed"),
    K + "kafka_alert_fermi_flight.json": ("grb", "classification"),
    K + "kafka_alert_fermi_ground.json": ("grb", "grb_monitor_presumed"),
    K + "kafka_alert_icecube_bronze.json": ("neutrino_track", "alert_topology"),  # "Bronze Track Alert"
    K + "kafka_alert_icecube_gold.json": ("neutrino_track", "alert_topology"),  # "Gold Track Alert"
    K + "kafka_alert_icecube_retraction.json": ("neutrino_track", "alert_topology"),
    K + "kafka_alert_svom_wakeup.json": ("grb", "grb_monitor_presumed"),
    K + "kafka_alert_swift_targeted.json": ("grb", "classification"),
    # --- GCN Classic VOEvents ---
    V + "fink-mm/fermi/voevent_number=193.xml": ("grb", "grb_monitor_presumed"),  # FIN_POS, no class
    V + "fink-mm/fermi/voevent_number=2750.xml": ("grb", "grb_monitor_presumed"),  # GND_POS
    V + "fink-mm/fermi/voevent_number=699.xml": ("not_astrophysical", "gbm_most_likely"),  # Most_Likely_Index 3
    V + "fink-mm/icecube/voevent_number=3028.xml": ("neutrino_track", "gcn_packet_type"),  # ASTROTRACK_BRONZE
    V + "fink-mm/icecube/voevent_number=825.xml": ("neutrino_cascade", "gcn_packet_type"),  # ICECUBE_CASCADE
    V + "fink-mm/integral/voevent_number=18790.xml": ("grb", "grb_monitor_presumed"),  # INTEGRAL_WAKEUP
    V + "fink-mm/swift/voevent_number=391.xml": ("grb", "grb_monitor_presumed"),  # BAT_QL_POS, no flags
    V + "fink-mm/swift/voevent_number=392.xml": ("grb", "grb_identified"),  # GRB_Identified true
    V + "fink-mm/swift/voevent_number=393.xml": ("grb", "grb_identified"),
    V + "fink-mm/swift/voevent_number=405.xml": ("grb", "grb_identified"),
    V + "fink-mm/swift/voevent_number=4554.xml": ("grb", "grb_monitor_presumed"),  # XRT position of a BAT GRB
    V + "fink-mm/swift/voevent_number=8582.xml": ("grb", "grb_identified"),
    V + "gwcelery/fermi_final_gcn.xml": ("grb", "grb_monitor_presumed"),
    V + "gwcelery/fermi_grb_gcn.xml": ("grb", "gbm_most_likely"),  # Most_Likely_Index 4 (GRB), 98 %
    V + "gwcelery/fermi_initial_grb_gcn.xml": ("grb", "grb_monitor_presumed"),
    V + "gwcelery/fermi_subthresh_grb_gcn.xml": ("grb", "grb_monitor_presumed"),
    V + "gwcelery/snews_gcn.xml": ("supernova_neutrinos", "gcn_packet_type"),  # Packet_Type 149
    V + "gwcelery/svom_catalog_gcn.xml": ("known_source", "known_source_name"),  # Source_Name "Cen X-3"
    V + "gwcelery/svom_grb_gcn.xml": ("grb", "grb_monitor_presumed"),  # ECLAIRs wakeup, no Source_Name
    V + "gwcelery/swift_grb_gcn.xml": ("grb", "grb_identified"),
    V + "hop-client/S200302c-1-Preliminary.xml": ("gw_cbc", "igwn_group"),  # Param Group "CBC"
    V + "pygcn/gbm_flt_pos.xml": ("grb", "gbm_most_likely"),
    V + "voevent-parse/MOA_Lensing_Event_2015-07-10T14-50-54.00.xml": ("microlensing", "gcn_packet_type"),
    V + "voevent-parse/SWIFT_bat_position_v2.0_example.xml": ("grb", "grb_identified"),
    V + "voevent-parse/SWIFT_xrt_position_v1.1_example.xml": ("grb", "grb_monitor_presumed"),
    # ANTARES through GCN without Packet_Type (2019): track alerts by their stream
    V + "mwa_trigger/Antares_1438351269.xml": ("neutrino_track", "voevent_stream"),
    V + "mwa_trigger/Antares_1439919723.xml": ("neutrino_track", "voevent_stream"),
    # non-GCN VOEvent streams (source "voevent")
    V + "voevent-parse/ASASSN_2016-09-25.47_2016fvf_PTSS-16nqb_PS16ejf.xml": ("optical_transient", "voevent_stream"),
    V + "voevent-parse/Gaia16aac.xml": ("optical_transient", "voevent_stream"),
    # LVC VOEvents of earlier eras: O2 GW170817 (LVC's and GCN's), the user guide's 2018/2019 samples
    **{V + f"lvc-eras/{n}": ("gw_cbc", "igwn_group") for n in (
        "gwcelery-O2/G298048-1-Initial.gcn.xml", "gwcelery-O2/G298048-1-Initial.xml",
        *(f"userguide-{era}/MS181101ab-{k}.xml" for era in ("2018-11", "2019-03")
          for k in ("1-Preliminary", "2-Initial", "3-Update")))},
    **{V + f"lvc-eras/userguide-{era}/MS181101ab-4-Retraction.xml": ("unknown", "igwn_no_group")
       for era in ("2018-11", "2019-03")},
    # --- IGWN (every one a CBC MDC superevent; retractions carry no event) ---
    "igwn/fink-mm/MS230518e-initial.json": ("gw_cbc", "igwn_group"),  # event.group "CBC"
    **{f"igwn/userguide/MS181101ab-{n}": ("gw_cbc", "igwn_group") for n in (
        "1-EarlyWarning.xml", "2-Preliminary.xml", "3-Initial.xml", "4-Update.xml", "6-Update.xml",
        "earlywarning.json", "ext-update.json", "initial.json", "preliminary.avro", "preliminary.json",
        "update.json")},
    **{f"igwn/userguide/MS181101ab-{n}": ("unknown", "igwn_no_group") for n in (
        "5-Retraction.xml", "retraction.avro", "retraction.json")},
}

#: ZTF files whose candidate has ssnamenr set with ssdistnr 0.0 arcsec (read with fastavro:
#: numbered asteroids 110778, 50566, 33734, 28300, 67586, 23895, 110854, 17495, 49597, 54737).
ZTF_SSO = {f"ztf/kowalski/20231012/{n}.avro" for n in (
    "2475433850015015001", "2475433850015015010", "2475433850015015041", "2475433850215015019",
    "2475433850215015020", "2475433850315015003", "2475433850315015004", "2475433850315015008",
    "2475433850315015010", "2475433850315015012")}


def _alert_files() -> list[str]:
    """Every file under the alert folders that the production decoders accept."""
    found = []
    for folder in ("gcn", "voevent", "igwn", "ztf"):
        for path in sorted((DATA / folder).rglob("*")):
            if path.is_file() and "skymaps" not in path.parts:
                try:
                    decode(path.read_bytes())
                except DecodeError:
                    continue
                found.append(path.relative_to(DATA).as_posix())
    return found


ALERT_FILES = _alert_files()


def test_every_decodable_alert_has_an_expected_category():
    ztf = {f for f in ALERT_FILES if f.startswith("ztf/")}
    missing = sorted(set(ALERT_FILES) - set(EXPECTED) - ztf)
    assert not missing, f"add the expected category of: {missing}"
    assert not set(EXPECTED) - set(ALERT_FILES), "files in the table that do not decode"
    assert ZTF_SSO <= ztf and len(ztf) == 34  # 36 alerts: one file holds three


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_alert_category(name):
    events = decode((DATA / name).read_bytes())
    assert events
    for event in events:
        assert (event.category, event.category_rule) == EXPECTED[name], name
        assert categorize(event) == EXPECTED[name]  # pure: the same from the Event alone


@pytest.mark.parametrize("name", sorted(f for f in ALERT_FILES if f.startswith("ztf/")))
def test_ztf_category(name):
    events = decode((DATA / name).read_bytes())
    want = ("solar_system_object", "ztf_ssnamenr") if name in ZTF_SSO else ("optical_transient", "ztf_candidate")
    assert [(e.category, e.category_rule) for e in events] == [want] * len(events)


def test_svom_cen_x3_is_not_a_grb():
    """The case of the issue: a SVOM ECLAIRs notice triggered by Cen X-3 (VOEvent Source_Name)."""
    (event,) = decode((DATA / V / "gwcelery/svom_catalog_gcn.xml").read_bytes())
    assert event.mission == "SVOM" and event.properties["known_source"] == "Cen X-3"
    assert event.category == "known_source" and event.category != "grb"
    (grb,) = decode((DATA / V / "gwcelery/svom_grb_gcn.xml").read_bytes())  # same instrument, a GRB
    assert grb.category == "grb"


def test_swift_catalog_flag_makes_a_known_source():
    """A real BAT position notice with its solution-status flags set as for a catalogued
    source (Target_in_Flt_Catalog, Def_NOT_a_GRB true; GRB_Identified false): the repository
    holds no such notice, so the flags of a real one are rewritten."""
    data = (DATA / V / "gwcelery/swift_grb_gcn.xml").read_bytes()
    for name, value in (("Target_in_Flt_Catalog", b"true"), ("Def_NOT_a_GRB", b"true"),
                        ("GRB_Identified", b"false")):
        data, n = re.subn(rb'(name="%s"\s+value=")[a-z]+"' % name.encode(), rb'\g<1>' + value + b'"', data)
        assert n == 1, name
    (event,) = decode(data)
    assert event.properties["in_flight_catalog"] is True
    assert (event.category, event.category_rule) == ("known_source", "swift_catalog_flag")
    # Def_NOT_a_GRB alone (no catalog flag): not a GRB, and nothing says what it is
    data = data.replace(b'name="Target_in_Flt_Catalog"    value="true"', b'name="Target_in_Flt_Catalog"    value="false"')
    (event,) = decode(data)
    assert (event.category, event.category_rule) == ("unknown", "def_not_a_grb")


def test_igwn_burst_group():
    """No real IGWN Burst-group alert is in tests/data (every sample is a CBC MDC event):
    the rule is checked on the real MS181101ab preliminary with event.group rewritten."""
    data = (DATA / "igwn/userguide/MS181101ab-preliminary.json").read_bytes()
    burst, n = re.subn(rb'"group":\s*"CBC"', b'"group": "Burst"', data)
    assert n == 1
    (event,) = decode(burst)
    assert (event.category, event.category_rule) == ("gw_burst", "igwn_group")


def test_category_and_rule_are_documented():
    page = (ROOT / "docs" / "categories.md").read_text(encoding="utf-8")
    seen = {v for v in EXPECTED.values()}
    assert {c for c, _ in seen} <= set(CATEGORIES) and {r for _, r in seen} <= set(RULES)
    for name in list(CATEGORIES) + list(RULES):
        assert f"`{name}`" in page, f"docs/categories.md does not describe {name}"


def _event(**props) -> Event:
    return Event(id="gcn:x", source="gcn", messenger="em", mission="Fermi", instrument="GBM", upstream_id="1",
                 alert_type="flt_pos", time="2024-01-01T00:00:00.000Z", format="json", properties=props)


@pytest.mark.parametrize("props, want", [
    ({"classification": ["GRB"]}, ("grb", "grb_monitor_presumed")),  # not a dict: decides nothing
    ({"classification": {"GRB": "high"}}, ("grb", "grb_monitor_presumed")),
    ({"classification": {"SGR_1806_20": 0.7, "GRB": 0.3}}, ("sgr_burst", "classification")),
    ({"most_likely": 5}, ("grb", "grb_monitor_presumed")),
    ({"not_a_grb": True, "classification": {"GRB": 1.0}}, ("unknown", "def_not_a_grb")),
    ({"not_a_grb": True, "classification": {"SOLAR_FLARE": 1.0}}, ("solar_flare", "classification")),
    ({"packet_type_name": "FERMI_POINTDIR"}, ("unknown", "fallback")),
    ({"packet_type_name": "SWIFT_BAT_KNOWN_SRC"}, ("known_source", "gcn_packet_type")),
    ({"event_name": ["GRB 240101A"]}, ("grb", "grb_event_name")),
])
def test_odd_properties_never_raise(props, want):
    assert categorize(_event(**props)) == want


def test_set_category_keeps_a_category_and_fills_fields_set():
    event = _event()
    assert event.category is None
    assert set_category(event) is event and event.category == "grb"
    assert {"category", "category_rule"} <= event.model_fields_set
    assert event.to_json_dict()["category_rule"] == "grb_monitor_presumed"
    kept = _event().model_copy(update={"category": "tgf", "category_rule": "by hand"})
    assert set_category(kept).category == "tgf"


# --- the Avro form: old records still decode ---------------------------------------

def _past_schema():
    (path,) = [p for p in PAST_SCHEMAS_DIR.iterdir() if p.name.endswith(".avsc")]
    return path, fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


def test_past_schema_file_is_named_by_its_fingerprint_and_lacks_category():
    path, schema = _past_schema()
    assert path.name == f"event-{fingerprint(to_parsing_canonical_form(schema), 'CRC-64-AVRO')}.avsc"
    assert [f["name"] for f in schema["fields"]][-1] == "provenance"


def test_record_of_the_previous_schema_still_decodes():
    """A record encoded with the schema before categories (the stored past version) is read,
    and gets the category of its Event; an old reader reads new records' known fields."""
    _, old = _past_schema()
    (event,) = decode((DATA / V / "gwcelery/svom_catalog_gcn.xml").read_bytes())
    codec = EventCodec()
    new = codec.encode(event, Provenance("ingest", "1", "h"))
    rec = fastavro.schemaless_reader(io.BytesIO(new[10:]), old)  # an old reader on the new bytes
    assert rec["id"] == event.id and "category" not in rec
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO")))
    fastavro.schemaless_writer(buf, old, rec)
    data = buf.getvalue()
    assert data[:10] != codec.header and codec.can_read(data)
    back, prov = codec.decode(data)
    assert prov.component == "ingest"
    assert back == event and (back.category, back.category_rule) == ("known_source", "known_source_name")
    again, _ = codec.decode(new)
    assert again == event
    with pytest.raises(DecodeError):
        codec.decode(SINGLE_OBJECT_MAGIC + b"\x00" * 8 + new[10:])


def test_lsst_sources_of_known_solar_system_objects():
    """Rubin's diaSource.ssObjectId is 0 when the source is not associated (the real Fink-relayed
    v10.0 alerts bundled), an id when it is; the rule reads the Event the LSST decoder made."""
    path = DATA / "relayed/fink/lsst/part-2-918301-first2.avro"
    events = decode(path.read_bytes())
    assert [e.properties["ssObjectId"] for e in events] == [0, 0]
    assert {(e.category, e.category_rule) for e in events} == {("optical_transient", "lsst_dia_source")}
    from broker.category import categorize

    associated = events[0].model_copy(update={"properties": {**events[0].properties, "ssObjectId": 21474836497}})
    assert categorize(associated) == ("solar_system_object", "lsst_ss_object")
    with_record = events[0].model_copy(update={"properties": {**events[0].properties, "ssSource": {"phaseAngle": 9.1}}})
    assert categorize(with_record) == ("solar_system_object", "lsst_ss_object")
