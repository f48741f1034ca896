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
GWCELERY = sorted((DATA / "gwcelery-kafka").glob("*.json"))
ALL_FILES = SCHEMA_EXAMPLES + CLASSIC_EXAMPLES + GWCELERY

# Alert / DateTime keys (gcn-schema core/Alert, core/DateTime; ``notice_type`` in the Classic
# translations): a file with none of them is a schema fragment example (core/Localization,
# core/Reporter, ...), not a notice.
NOTICE_KEYS = ("trigger_time", "alert_datetime", "alert_type", "alert_tense", "notice_type")
# Schemas whose T0 is not trigger_time (they define none): documented in broker.sources.gcn.
T0_FALLBACK = {"fermi/lat/": "observation_start", "heasarc/": "observation_start"}


def _load(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _is_notice(obj: dict) -> bool:
    return any(k in obj for k in NOTICE_KEYS)


def _t0_field(obj: dict) -> str | None:
    if "trigger_time" in obj:
        return "trigger_time"
    path = str(obj.get("$schema", ""))
    for prefix, field in T0_FALLBACK.items():
        if f"/gcn/notices/{prefix}" in path and field in obj:
            return field
    return None


NOTICES = [p for p in ALL_FILES if _is_notice(_load(p))]
FRAGMENTS = [p for p in ALL_FILES if not _is_notice(_load(p))]
DECODABLE = [p for p in NOTICES if _t0_field(_load(p))]
NO_T0 = [p for p in NOTICES if not _t0_field(_load(p))]


def _id(path: Path) -> str:
    return str(path.relative_to(DATA))


def test_sample_counts():
    """Every real file is either a notice or a core fragment; the counts are pinned."""
    assert (len(SCHEMA_EXAMPLES), len(CLASSIC_EXAMPLES), len(GWCELERY)) == (49, 28, 12)
    assert all("/core/" in str(p) for p in FRAGMENTS) and len(FRAGMENTS) == 5
    assert len(NOTICES) == 84
    assert len(DECODABLE) == 81
    # Real notices without any T0: BOOM optical alert, Classic ALEXIS and LVC translations.
    assert sorted(p.parent.name for p in NO_T0) == ["alexis", "boom", "lvc"]


@pytest.mark.parametrize("path", FRAGMENTS, ids=_id)
def test_core_fragments_are_not_notices(path):
    assert not gcn.is_gcn_notice(_load(path))


def test_circular_is_not_a_notice():
    assert not gcn.is_gcn_notice(_load(DATA / "gcn-schema" / "gcn" / "circulars.example.json"))


@pytest.mark.parametrize("path", DECODABLE, ids=_id)
def test_notice_normalized_from_file_values(path):
    obj = _load(path)
    assert gcn.is_gcn_notice(obj)
    event = gcn.decode(obj)
    [same] = dispatch_decode(path.read_bytes())  # the dispatcher adds the category (broker.category)
    assert same.category is not None
    assert same.model_copy(update={"category": None, "category_rule": None}) == event

    assert event.source == "gcn" and event.format == "json"
    field = _t0_field(obj)
    expected = Time(obj[field].replace("Z", "").replace(" ", "T"), scale="utc")
    got = Time(event.time[:-1], scale="utc")
    assert abs((got - expected).to_value(u.ms)) < 1.0
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
    if "ra" in obj and "dec" in obj:
        assert loc is not None and loc.type == "point"
        assert loc.ra == pytest.approx(obj["ra"]) and loc.dec == pytest.approx(obj["dec"])
        err = obj.get("ra_dec_error", obj.get("ra_uncertainty"))
        if isinstance(err, (int, float)):
            assert loc.error_radius == pytest.approx(err)
        elif isinstance(err, list) and len(err) >= 2:
            assert loc.error_radius == pytest.approx(max(err[0], err[1]))
        elif isinstance(err, list):
            assert loc.error_radius == pytest.approx(err[0])
        if err is not None and err != 0:
            p = obj.get("containment_probability", 0.9)
            assert loc.containment == pytest.approx(p / 100 if p > 1 else p)
    else:
        assert loc is None


def test_ids_unique_per_revision_across_all_json_samples():
    """Different notice content → different id; the same content (gwcelery's copies of the
    gcn-schema Fermi examples, re-indented) → the same id, so redeliveries upsert."""
    by_content: dict[str, set[str]] = {}
    for p in DECODABLE:
        content = json.dumps(_load(p), sort_keys=True)
        by_content.setdefault(content, set()).add(gcn.decode(_load(p)).id)
    assert all(len(ids) == 1 for ids in by_content.values())
    all_ids = [next(iter(ids)) for ids in by_content.values()]
    assert len(set(all_ids)) == len(all_ids) == len(by_content)
    assert len(DECODABLE) - len(by_content) == 3  # the three identical Fermi GBM copies


def test_ids_deterministic():
    path = DATA / "gwcelery-kafka" / "kafka_alert_fermi_ground.json"
    assert gcn.decode(_load(path)).id == gcn.decode(json.loads(path.read_text())).id


@pytest.mark.parametrize("path", NO_T0, ids=_id)
def test_notice_without_t0_is_rejected_naming_the_field(path):
    with pytest.raises(DecodeError, match="trigger_time") as info:
        gcn.decode(_load(path))
    assert "\n" not in str(info.value)


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
