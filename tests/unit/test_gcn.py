"""GCN unified-schema JSON notices: every real sample, checked against the file itself."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord
from astropy.time import Time

from broker.errors import DecodeError
from broker.sources import decode as dispatch_decode
from broker.sources import gcn

DATA = Path(__file__).resolve().parents[1] / "data" / "gcn"
SCHEMA_EXAMPLES = sorted((DATA / "gcn-schema" / "gcn" / "notices").rglob("*.example.json"))
CLASSIC_EXAMPLES = sorted((DATA / "gcn-schema-pr161-classic").rglob("*.example.json"))
SWIFT_EXAMPLES = sorted((DATA / "gcn-schema-pr306-swift").rglob("*.example.json"))
V1_EXAMPLES = sorted((DATA / "gcn-schema-v1.0.0").rglob("*.example.json"))  # an earlier schema version
GWCELERY = sorted((DATA / "gwcelery-kafka").glob("*.json"))
ALL_FILES = SCHEMA_EXAMPLES + CLASSIC_EXAMPLES + SWIFT_EXAMPLES + V1_EXAMPLES + GWCELERY

# Alert / DateTime keys (gcn-schema core/Alert, core/DateTime; ``notice_type`` in the Classic
# translations): a file with none of them is a schema fragment example (core/Localization,
# core/Reporter, ...), not a notice.
NOTICE_KEYS = ("trigger_time", "alert_datetime", "alert_type", "alert_tense", "notice_type")
# The T0 rule of issue 12, read here from the files: the first of these present (a parent
# trigger comes second, and is never known in the table test: every decode starts afresh).
# end_datetime: the ALEXIS map notice (Classic translation), which has none of the others.
T0_FIELDS = ("trigger_time", "observation_start", "alert_datetime", "end_datetime")


@pytest.fixture(autouse=True)
def _no_remembered_triggers():
    """Each test starts with no trigger times remembered (gcn.remember_trigger)."""
    gcn.forget_triggers()
    yield
    gcn.forget_triggers()


def _load(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _is_notice(obj: dict) -> bool:
    return any(k in obj for k in NOTICE_KEYS)


def _t0_field(obj: dict) -> str | None:
    return next((k for k in T0_FIELDS if k in obj), None)


NOTICES = [p for p in ALL_FILES if _is_notice(_load(p))]
FRAGMENTS = [p for p in ALL_FILES if not _is_notice(_load(p))]


def _id(path: Path) -> str:
    return str(path.relative_to(DATA))


def test_sample_counts():
    """Every real file is either a notice or a core fragment; the counts are pinned."""
    assert (len(SCHEMA_EXAMPLES), len(CLASSIC_EXAMPLES), len(SWIFT_EXAMPLES), len(V1_EXAMPLES), len(GWCELERY)) == (
        49, 28, 33, 1, 12)
    assert all("/core/" in str(p) for p in FRAGMENTS) and len(FRAGMENTS) == 5
    assert len(NOTICES) == 118
    assert all(_t0_field(_load(p)) for p in NOTICES)  # every notice has one of the T0 fields
    fields = [_t0_field(_load(p)) for p in NOTICES]
    assert {f: fields.count(f) for f in T0_FIELDS} == {
        "trigger_time": 89, "observation_start": 26, "alert_datetime": 2, "end_datetime": 1}


@pytest.mark.parametrize("path", FRAGMENTS, ids=_id)
def test_core_fragments_are_not_notices(path):
    assert not gcn.is_gcn_notice(_load(path))


def test_circular_is_not_a_notice():
    assert not gcn.is_gcn_notice(_load(DATA / "gcn-schema" / "gcn" / "circulars.example.json"))


@pytest.mark.parametrize("path", NOTICES, ids=_id)
def test_notice_normalized_from_file_values(path):
    obj = _load(path)
    assert gcn.is_gcn_notice(obj)
    event = gcn.decode(obj)
    gcn.forget_triggers()
    [same] = dispatch_decode(path.read_bytes())  # the dispatcher adds the category (broker.category)
    assert same.category is not None
    assert same.model_copy(update={"category": None, "category_rule": None}) == event

    assert event.source == "gcn" and event.format == "json"
    field = _t0_field(obj)
    assert event.properties["time_source"] == field
    expected = Time(obj[field].replace("Z", "").replace(" ", "T"), scale="utc")
    got = Time(event.time[:-1], scale="utc")
    assert abs((got - expected).to_value(u.ms)) < 1.0
    if field != "observation_start" and isinstance(obj.get("observation_start"), str):
        assert event.properties["observation_start"].startswith(obj["observation_start"][:19])
    if "mission" in obj:
        assert event.mission == obj["mission"]
    if "instrument" in obj:
        assert event.instrument == obj["instrument"]
    if "messenger" in obj:
        assert event.messenger == obj["messenger"].lower()
    if "alert_type" in obj:
        assert event.alert_type == obj["alert_type"].lower()
        assert event.is_retraction == (obj["alert_type"].lower() == "retraction")
    if "id" in obj:
        first = obj["id"][0] if isinstance(obj["id"], list) else obj["id"]
        assert event.upstream_id == str(first)
        assert str(first).replace(" ", "_") in event.id
    assert event.id.startswith("gcn:")
    if obj.get("alert_tense") == "test":
        assert event.properties["role"] == "test"
    if "far" in obj:
        assert event.properties["far_hz"] == pytest.approx(obj["far"])
    if "healpix_url" in obj:
        assert event.properties["skymap_url"] == obj["healpix_url"]

    loc = event.localization
    targets = (obj.get("data") or {}).get("targets") if isinstance(obj.get("data"), dict) else None
    if obj.get("ra") is not None and obj.get("dec") is not None:
        assert loc is not None and loc.type == "point"
        assert loc.ra == pytest.approx(obj["ra"]) and loc.dec == pytest.approx(obj["dec"])
        err = obj.get("ra_dec_error", obj.get("ra_uncertainty"))
        if isinstance(err, list) and len(err) == 2 and err[0] < 0:  # early [minus, plus] interval
            err = None  # test_early_asymmetric_uncertainty_box_is_enclosed
        if isinstance(err, (int, float)):
            assert loc.error_radius == pytest.approx(err)
        elif isinstance(err, list) and len(err) >= 2:
            assert loc.error_radius == pytest.approx(max(err[0], err[1]))
        elif isinstance(err, list):
            assert loc.error_radius == pytest.approx(err[0])
        if err != 0 and (err is not None or "ra_uncertainty" in obj):
            p = obj.get("containment_probability", 0.9)
            assert loc.containment == pytest.approx(p / 100 if p > 1 else p)
    elif targets and len(targets) == 1:  # BOOM: the one target's position
        assert (loc.ra, loc.dec) == (pytest.approx(targets[0]["ra"]), pytest.approx(targets[0]["dec"]))
        assert event.upstream_id == targets[0]["event_name"]
    else:
        assert loc is None


def test_ids_unique_per_revision_across_all_json_samples():
    """Different notice content → different id; the same content (gwcelery's copies of the
    gcn-schema Fermi examples, re-indented) → the same id, so redeliveries upsert."""
    by_content: dict[str, set[str]] = {}
    for p in NOTICES:
        content = json.dumps(_load(p), sort_keys=True)
        by_content.setdefault(content, set()).add(gcn.decode(_load(p)).id)
    assert all(len(ids) == 1 for ids in by_content.values())
    all_ids = [next(iter(ids)) for ids in by_content.values()]
    assert len(set(all_ids)) == len(all_ids) == len(by_content)
    assert len(NOTICES) - len(by_content) == 3  # the three identical Fermi GBM copies


def test_ids_deterministic():
    path = DATA / "gwcelery-kafka" / "kafka_alert_fermi_ground.json"
    assert gcn.decode(_load(path)).id == gcn.decode(json.loads(path.read_text())).id


@pytest.mark.parametrize(
    "relpath, topic",
    [
        ("gcn-schema/gcn/notices/swift/bat/Guano.example.json", "gcn.notices.swift.bat.guano"),
        ("gcn-schema/gcn/notices/einstein_probe/wxt/alert.example.json", "gcn.notices.einstein_probe.wxt.alert"),
        ("gcn-schema/gcn/notices/icecube/lvk_nu_track_search.example.json", "gcn.notices.icecube.lvk_nu_track_search"),
        (
            "gcn-schema/gcn/notices/icecube/single_neutrino_alerts.gold_bronze_track_alerts.example.json",
            "gcn.notices.icecube.gold_bronze_track_alerts",
        ),
        ("gcn-schema/gcn/notices/superk/sn_alert.real.example.json", "gcn.notices.superk.sn_alert"),
        ("gcn-schema/gcn/notices/dsa110/frb.detection.example.json", "gcn.notices.dsa110.frb"),
        ("gcn-schema/gcn/notices/chime/frb.detection.example.json", "gcn.notices.chime.frb"),
        ("gcn-schema/gcn/notices/fermi/gbm/trigger.final.example.json", "gcn.notices.fermi.gbm"),
        ("gcn-schema/gcn/notices/maxi/gsc.known.example.json", "gcn.notices.maxi.gsc.known"),
        ("gwcelery-kafka/kafka_alert_swift_targeted.json", "gcn.notices.swift.bat.guano"),
    ],
)
def test_upstream_topic(relpath, topic):
    assert gcn.upstream_topic(_load(DATA / relpath)) == topic


def test_icecube_energy_in_gev_and_far():
    obj = _load(DATA / "gwcelery-kafka" / "kafka_alert_icecube_gold.json")
    event = gcn.decode(obj)
    assert event.messenger == "neutrino"
    assert event.properties["energy_gev"] == pytest.approx(obj["nu_energy"] * 1000.0)
    assert event.properties["far_hz"] == pytest.approx(obj["far"])


def test_maxi_rectangle_gives_circumscribed_circle():
    obj = _load(DATA / "gcn-schema/gcn/notices/maxi/gsc.unknown.rectangle.example.json")
    loc = gcn.decode(obj).localization
    centre = SkyCoord(obj["ra"] * u.deg, obj["dec"] * u.deg)
    corners = SkyCoord([c[0] for c in obj["rectangular_error_corners"]] * u.deg,
                       [c[1] for c in obj["rectangular_error_corners"]] * u.deg)
    assert loc.error_radius == pytest.approx(centre.separation(corners).max().deg, rel=1e-9)
    assert loc.containment == pytest.approx(obj["containment_probability"])


def test_fermi_gbm_final_is_68_percent_and_long():
    obj = _load(DATA / "gcn-schema/gcn/notices/fermi/gbm/trigger.final.example.json")
    event = gcn.decode(obj)
    assert event.localization.containment == pytest.approx(0.68)
    assert event.properties["grb_class"] == "long"
    assert event.id.startswith(f"gcn:fermi-gbm:{obj['id'][0]}:update:{obj['record_number']}:")


def test_burstcube_test_schema_marked_test():
    event = gcn.decode(_load(DATA / "gcn-schema/gcn/notices/burstcube/test.example.json"))
    assert event.properties["role"] == "test"


def test_placeholder_healpix_file_falls_back_to_point_with_reason():
    obj = _load(DATA / "gcn-schema/gcn/notices/burstcube/alert.example.json")
    event = gcn.decode(obj)
    assert event.localization.type == "point"
    assert "base64" in event.properties["skymap_error"]


def _guano_with_real_map() -> tuple[Path, dict]:
    """The Guano loc_map example carries a placeholder; put the real Swift BAT map in it."""
    fits_path = DATA / "skymaps" / "swift_skymap.multiorder.fits"
    obj = _load(DATA / "gcn-schema/gcn/notices/swift/bat/guano.loc_map.example.json")
    obj["healpix_file"] = base64.b64encode(fits_path.read_bytes()).decode()
    return fits_path, obj


def test_inline_healpix_file_goes_to_skymap_summary():
    from broker.skymap import summarize_multiorder

    fits_path, obj = _guano_with_real_map()
    loc = gcn.decode(obj).localization
    assert loc.type == "healpix"
    assert loc == summarize_multiorder(fits_path.read_bytes(), skymap_url=obj.get("healpix_url"))


def test_inline_healpix_areas_match_ligo_skymap():
    import ligo.skymap.postprocess as ligo_skymap  # a test dependency: fail, never skip
    from ligo.skymap.io import read_sky_map

    fits_path, obj = _guano_with_real_map()
    loc = gcn.decode(obj).localization
    expected = ligo_skymap.crossmatch(read_sky_map(str(fits_path), moc=True), contours=(0.5, 0.9))
    assert loc.area_50 == pytest.approx(expected.contour_areas[0], rel=1e-6)
    assert loc.area_90 == pytest.approx(expected.contour_areas[1], rel=1e-6)


def test_bad_time_is_one_line_decode_error():
    obj = _load(DATA / "gcn-schema/gcn/notices/swift/bat/Guano.example.json")
    obj["trigger_time"] = "yesterday"
    with pytest.raises(DecodeError, match="trigger_time") as info:
        gcn.decode(obj)
    assert "\n" not in str(info.value)


SWIFT = DATA / "gcn-schema-pr306-swift" / "gcn" / "notices" / "swift"


def test_swift_follow_ups_take_their_bat_trigger_t0_and_group():
    """Swift trigger 1253910 (gcn-schema PR #306): the BAT position carries trigger_time; the
    XRT and UVOT notices that follow carry only the trigger id and their observation start.
    Decoded after the BAT notice their T0 is its trigger_time; all share one event group."""
    from broker.enrich.groups import group_key

    bat_obj = _load(SWIFT / "bat/position.rate_trigger.initial.example.json")
    bat = gcn.decode(bat_obj)
    follow_ups = ["xrt/position.initial", "xrt/spectrum.WT.initial", "uvot/position.initial",
                  "uvot/source_list.white.initial"]
    for name in follow_ups:
        obj = _load(SWIFT / f"{name}.example.json")
        assert "trigger_time" not in obj and obj["id"] == bat_obj["id"]
        event = gcn.decode(obj)
        assert event.time == bat.time and event.properties["time_source"] == "parent_trigger"
        expected = Time(bat_obj["trigger_time"][:-1], scale="utc")
        assert abs((Time(event.time[:-1], scale="utc") - expected).to_value(u.ms)) < 1.0
        assert event.properties["observation_start"].startswith(obj["observation_start"][:19])
        assert group_key(event) == group_key(bat) == f"gcn:swift:{bat_obj['id']}"
    # the same follow-up decoded alone (no trigger seen): its own observation start
    gcn.forget_triggers()
    alone = gcn.decode(_load(SWIFT / "xrt/position.initial.example.json"))
    assert alone.properties["time_source"] == "observation_start"
    assert alone.time.startswith(_load(SWIFT / "xrt/position.initial.example.json")["observation_start"][:19])


def test_swift_voevent_trigger_is_a_parent_for_json_follow_ups():
    """A GCN Classic VOEvent's ISOTime is its trigger's time: it is remembered for the JSON
    follow-ups that carry the same trigger number (here a real BAT VOEvent, trigger 532871,
    and a real XRT JSON notice given that trigger number)."""
    from lxml import etree

    from broker.sources import voevent

    path = DATA.parent / "voevent/voevent-parse/SWIFT_bat_position_v2.0_example.xml"
    [bat] = voevent.decode(path.read_bytes())
    trig = etree.parse(str(path)).xpath("//*[local-name()='Param'][@name='TrigID']/@value")[0]
    obj = dict(_load(SWIFT / "xrt/position.initial.example.json"), id=trig)
    event = gcn.decode(obj)
    assert event.properties["time_source"] == "parent_trigger" and event.time == bat.time


def test_gcn_group_t0_is_the_earliest_revision():
    """A follow-up decoded without its trigger (T0 = its observation start, later) must not
    move the trigger group's T0; an IGWN group keeps the latest revision's T0."""
    from broker.enrich.groups import _group_values

    def row(eid, t, retraction=False):
        return dict(event_id=eid, alert_type="x", time=t, retraction=retraction, localization_id=None,
                    area_90_deg2=None)

    bat = _load(SWIFT / "bat/position.rate_trigger.initial.example.json")
    xrt = _load(SWIFT / "xrt/position.initial.example.json")
    members = [row("bat", bat["trigger_time"]), row("xrt", xrt["observation_start"]), row("r", "2030-01-01", True)]
    assert _group_values("gcn:swift:1253910", members)["t0"] == bat["trigger_time"]
    assert _group_values("igwn:S1", members)["t0"] == xrt["observation_start"]


def test_notice_without_any_time_is_rejected_naming_every_field():
    obj = _load(SWIFT / "xrt/position.initial.example.json")
    for key in ("observation_start", "alert_datetime"):
        del obj[key]
    with pytest.raises(DecodeError) as info:
        gcn.decode(obj)
    message = str(info.value)
    assert all(f"'{k}'" in message for k in ("trigger_time", "observation_start", "alert_datetime"))
    assert obj["id"] in message and "\n" not in message


def test_unknown_future_notice_type_decodes_from_its_schema_url():
    """A notice of a schema we hold no copy of and no mission field: mission and instrument
    come from the $schema path, the position from ra/dec (a real XRT notice, re-labelled)."""
    obj = _load(SWIFT / "xrt/position.initial.example.json")
    del obj["mission"], obj["instrument"]
    obj["$schema"] = "https://gcn.nasa.gov/schema/v9.0.0/gcn/notices/newmission/newcam/position.schema.json"
    [event] = dispatch_decode(json.dumps(obj).encode())
    assert (event.mission, event.instrument) == ("newmission", "newcam")
    assert event.localization.ra == pytest.approx(obj["ra"]) and event.localization.dec == pytest.approx(obj["dec"])
    assert event.properties["schema"] == "newmission/newcam/position"
    assert gcn.upstream_topic(obj) == "gcn.notices.newmission.newcam.position"


def test_boom_alert_position_and_links():
    obj = _load(DATA / "gcn-schema/gcn/notices/boom/alert.example.json")
    event = gcn.decode(obj)
    [target] = obj["data"]["targets"]
    assert event.mission == "Boom" and event.upstream_id == target["event_name"]
    assert event.properties["time_source"] == "alert_datetime"
    assert event.properties["target"]["gcn_crossmatch"] == target["gcn_crossmatch"]


def test_early_asymmetric_uncertainty_box_is_enclosed():
    """gcn-schema v1.0.0's IceCube-230416A notice gives [minus, plus] intervals on RA and
    Dec (``ra_uncertainty``, ``dec_uncertainty``, deg): the error circle encloses the four
    corners of that box on the sky (astropy separations) and is no larger than needed."""
    obj = _load(DATA / "gcn-schema-v1.0.0/gcn/notices/icecube/GoldAndBronze.update.example.json")
    event = gcn.decode(obj)
    assert event.messenger == "neutrino" and event.mission == "IceCube"
    centre = SkyCoord(obj["ra"] * u.deg, obj["dec"] * u.deg)
    corners = SkyCoord([obj["ra"] + obj["ra_uncertainty"][i] for i in (0, 0, 1, 1)] * u.deg,
                       [obj["dec"] + obj["dec_uncertainty"][j] for j in (0, 1, 0, 1)] * u.deg)
    far = centre.separation(corners).max().deg
    assert far <= event.localization.error_radius <= far * 1.01
    assert event.properties["error_box_deg"] == {"ra": obj["ra_uncertainty"], "dec": obj["dec_uncertainty"]}


def test_trigger_memory_is_bounded():
    """At most MAX_REMEMBERED_TRIGGERS trigger times, oldest forgotten first; an id longer
    than any real one (hostile) is not kept at all."""
    from datetime import datetime, timezone

    t = datetime(2024, 9, 12, tzinfo=timezone.utc)
    gcn.remember_trigger("Swift", "x" * gcn.MAX_TRIGGER_KEY_CHARS, t)
    assert gcn.parent_trigger_time("Swift", "x" * gcn.MAX_TRIGGER_KEY_CHARS) is None
    for i in range(gcn.MAX_REMEMBERED_TRIGGERS + 1):
        gcn.remember_trigger("Swift", i, t)
    assert gcn.parent_trigger_time("SWIFT", 0) is None and gcn.parent_trigger_time("swift", 1) == t
    assert gcn.parent_trigger_time("Swift", gcn.MAX_REMEMBERED_TRIGGERS) == t
