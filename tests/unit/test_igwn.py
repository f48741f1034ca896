"""broker.sources.igwn on the real LVK sample alerts in tests/data/igwn.

Expected values are read independently: the JSON with ``json``, the Avro with
``fastavro``, the VOEvents with lxml XPath, the embedded sky maps with ligo.skymap
(``read_sky_map(moc=True)`` + ``crossmatch``) and astropy (FITS header).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import warnings
from pathlib import Path

import fastavro
import pytest
from astropy.io import fits
from lxml import etree

from broker.errors import DecodeError
from broker.sources import avro, igwn

DATA = Path(__file__).resolve().parents[1] / "data"
UG = "igwn/userguide"

# path, expected Event.id (contract: igwn:{superevent}:{type}:{time_created compact}[:ext:{gcn id}])
JSON_ALERTS = [
    (f"{UG}/MS181101ab-earlywarning.json", "igwn:MS181101ab:earlywarning:20181101T223420Z"),
    (f"{UG}/MS181101ab-preliminary.json", "igwn:MS181101ab:preliminary:20181101T223449Z"),
    (f"{UG}/MS181101ab-initial.json", "igwn:MS181101ab:initial:20181101T223625Z"),
    (f"{UG}/MS181101ab-update.json", "igwn:MS181101ab:update:20181101T223625Z"),
    (f"{UG}/MS181101ab-ext-update.json", "igwn:MS181101ab:update:20181101T223625Z:ext:524666471"),
    (f"{UG}/MS181101ab-retraction.json", "igwn:MS181101ab:retraction:20181101T233623Z"),
    ("igwn/fink-mm/MS230518e-initial.json", "igwn:MS230518e:initial:20230518T050944Z"),
]
AVRO_ALERTS = [
    (f"{UG}/MS181101ab-preliminary.avro", f"{UG}/MS181101ab-preliminary.json"),
    (f"{UG}/MS181101ab-retraction.avro", f"{UG}/MS181101ab-retraction.json"),
]
NOT_GWALERTS = [
    "igwn/gwcelery/MS220722v.json",  # GraceDB superevent record
    "igwn/gwcelery/igwn_alert_exttrig_creation.json",
    "igwn/gwcelery/igwn_alert_superevent_creation.json",
    "igwn/gwcelery/igwn_alert_superevent_label.json",
    "igwn/gwcelery/igwn_alert_voevent.json",
]
# VOEvent path, local copy of the map its skymap_fits Param points to (None: not in tests/data)
VOEVENTS = [
    (f"{UG}/MS181101ab-1-EarlyWarning.xml", f"{UG}/bayestar.multiorder.fits"),
    (f"{UG}/MS181101ab-2-Preliminary.xml", f"{UG}/bayestar.multiorder.fits"),
    (f"{UG}/MS181101ab-3-Initial.xml", f"{UG}/bayestar.multiorder.fits"),
    (f"{UG}/MS181101ab-4-Update.xml", f"{UG}/bayestar.multiorder.fits"),
    (f"{UG}/MS181101ab-5-Retraction.xml", None),
    (f"{UG}/MS181101ab-6-Update.xml", f"{UG}/bayestar.multiorder.fits"),
    ("voevent/hop-client/S200302c-1-Preliminary.xml", None),
]
DISPLAY_EXAMPLES = sorted(p.relative_to(DATA).as_posix() for p in (DATA / UG).glob("*_displayexample.json"))


def _json(rel: str) -> dict:
    return json.loads((DATA / rel).read_text())


def _iso_compact(text: str) -> str:
    return text.replace("-", "").replace(":", "")


class _LigoReading:
    """ligo.skymap + astropy readings of FITS bytes, cached by content."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.cache: dict[str, tuple] = {}

    def __call__(self, fits_bytes: bytes) -> tuple[tuple[float, float], fits.Header]:
        from ligo.skymap.io import read_sky_map
        from ligo.skymap.postprocess import crossmatch

        key = hashlib.sha256(fits_bytes).hexdigest()
        if key not in self.cache:
            path = self.tmp_dir / f"{key}.fits"
            path.write_bytes(fits_bytes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sky = read_sky_map(str(path), moc=True)
                # 2D columns only: the 3D volumes crossmatch would add take seconds, change no area.
                areas = tuple(crossmatch(sky["UNIQ", "PROBDENSITY"], contours=(0.5, 0.9)).contour_areas)
            with fits.open(path) as hdul:
                header = hdul[1].header.copy()
            self.cache[key] = (areas, header)
        return self.cache[key]


@pytest.fixture(scope="module")
def ligo_reading(tmp_path_factory):
    return _LigoReading(tmp_path_factory.mktemp("skymaps"))


def _check_localization(loc, fits_bytes: bytes, ligo_reading) -> None:
    (area_50, area_90), header = ligo_reading(fits_bytes)
    assert loc.area_50 == pytest.approx(area_50, rel=1e-6)
    assert loc.area_90 == pytest.approx(area_90, rel=1e-6)
    assert loc.distmean == pytest.approx(header["DISTMEAN"], rel=1e-12)
    assert loc.diststd == pytest.approx(header["DISTSTD"], rel=1e-12)


@pytest.mark.parametrize("rel,expected_id", JSON_ALERTS, ids=[Path(p).name for p, _ in JSON_ALERTS])
def test_json_gwalert(rel, expected_id, ligo_reading):
    raw = _json(rel)
    assert igwn.is_igwn_alert(raw)
    ev = igwn.decode_json(copy.deepcopy(raw))

    compact = _iso_compact(raw["time_created"])
    assert ev.id.startswith(f"igwn:{raw['superevent_id']}:{raw['alert_type'].lower()}:{compact}")
    assert ev.id == expected_id
    assert (ev.source, ev.messenger, ev.mission, ev.format) == ("igwn", "gw", "LVK", "json")
    assert ev.upstream_id == raw["superevent_id"]
    assert ev.alert_type == raw["alert_type"].lower()
    assert ev.properties["urls"]["gracedb"] == raw["urls"]["gracedb"]
    assert ev.properties["time_created"].replace(".000", "") == raw["time_created"]
    assert "skymap" not in json.dumps(ev.properties).replace("skymap_url", "")

    event = raw["event"]
    if event is None:  # retraction: no event, time is time_created
        assert ev.is_retraction
        assert ev.time.replace(".000", "") == raw["time_created"]
        assert ev.properties["time_source"] == "time_created"
        assert ev.localization is None and ev.instrument is None
        return
    assert ev.time == event["time"]
    assert ev.properties["time_source"] == "event.time"
    assert ev.properties["far_hz"] == event["far"]
    assert ev.properties["significant"] is event["significant"]
    assert ev.instrument == ",".join(event["instruments"])
    assert ev.properties["instruments"] == event["instruments"]
    for key in ("group", "pipeline", "search", "classification", "properties"):
        assert ev.properties[key] == event[key]
    _check_localization(ev.localization, base64.b64decode(event["skymap"]), ligo_reading)

    ext = raw["external_coinc"]
    if ext is None:
        assert "external_coinc" not in ev.properties
    else:
        got = ev.properties["external_coinc"]
        assert got["gcn_notice_id"] == ext["gcn_notice_id"]
        assert got["ivorn"] == ext["ivorn"]
        assert got["time_difference_s"] == ext["time_difference"]
        assert got["time_coincidence_far_hz"] == ext["time_coincidence_far"]
        assert got["time_sky_position_coincidence_far_hz"] == ext["time_sky_position_coincidence_far"]
        combined = got["combined_localization"]
        (area_50, area_90), header = ligo_reading(base64.b64decode(ext["combined_skymap"]))
        assert combined["area_90"] == pytest.approx(area_90, rel=1e-6)
        assert combined["distmean"] == pytest.approx(header["DISTMEAN"], rel=1e-12)


def test_json_event_ids_are_unique_per_revision():
    ids = [igwn.decode_json(_json(rel)).id for rel, _ in JSON_ALERTS]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("rel", NOT_GWALERTS)
def test_graceDB_records_are_not_gwalerts(rel):
    assert not igwn.is_igwn_alert(_json(rel))


@pytest.mark.parametrize("rel,json_rel", AVRO_ALERTS, ids=[Path(p).name for p, _ in AVRO_ALERTS])
def test_avro_gwalert_matches_fastavro_and_the_json_twin(rel, json_rel, ligo_reading):
    data = (DATA / rel).read_bytes()
    header = avro.read_header(data)
    assert igwn.is_igwn_schema(header)
    events = igwn.decode_avro(data, header)
    records = list(fastavro.reader(io.BytesIO(data)))
    assert len(events) == len(records) == 1
    ev, rec = events[0], records[0]
    assert ev.format == "avro"
    assert ev.upstream_id == rec["superevent_id"]
    assert ev.alert_type == rec["alert_type"].lower()
    if rec["event"] is not None:
        assert ev.time == rec["event"]["time"]
        assert ev.properties["far_hz"] == rec["event"]["far"]
        _check_localization(ev.localization, rec["event"]["skymap"], ligo_reading)
    # The same notice as JSON normalizes to the same Event (same id: one archive row).
    twin = igwn.decode_json(_json(json_rel))
    assert ev.model_dump(exclude={"format"}) == twin.model_dump(exclude={"format"})


def test_avro_schema_names():
    class Header:  # stand-in for AvroHeader: only schema_name is consulted
        def __init__(self, name):
            self.schema_name = name

    assert igwn.is_igwn_schema(Header("igwn.alerts.v1_0.Alert"))
    assert igwn.is_igwn_schema(Header("igwn.alerts.Alert"))
    assert not igwn.is_igwn_schema(Header("ztf.alert"))
    with pytest.raises(DecodeError, match="ztf.alert"):
        igwn.decode_avro((DATA / f"{UG}/MS181101ab-retraction.avro").read_bytes(), Header("ztf.alert"))


def _xpath_param(root, name: str) -> str | None:
    values = root.xpath(f"./What//Param[@name='{name}']/@value")
    return values[0] if values else None


@pytest.mark.parametrize("rel,map_rel", VOEVENTS, ids=[Path(p).name for p, _ in VOEVENTS])
def test_lvc_voevent(rel, map_rel, ligo_reading):
    data = (DATA / rel).read_bytes()
    root = etree.fromstring(data)
    skymap = (DATA / map_rel).read_bytes() if map_rel else None
    ev = igwn.decode_voevent(root, data, skymap_fits=skymap)

    ivorn = root.get("ivorn")
    assert ev.id == f"igwn:{ivorn}"
    assert (ev.source, ev.messenger, ev.mission, ev.format) == ("igwn", "gw", "LVK", "voevent")
    assert ev.upstream_id == _xpath_param(root, "GraceID")
    assert ev.alert_type == _xpath_param(root, "AlertType").lower()
    iso = root.xpath("./WhereWhen//ISOTime/text()")[0].rstrip("Z")
    assert ev.time == iso[:23] + "Z"  # millisecond precision
    assert ev.properties["pkt_ser_num"] == int(_xpath_param(root, "Pkt_Ser_Num"))
    assert ev.properties["urls"]["gracedb"] == _xpath_param(root, "EventPage")
    assert ev.instrument == _xpath_param(root, "Instruments")
    far = _xpath_param(root, "FAR")
    assert ev.properties.get("far_hz") == (float(far) if far else None)
    url = _xpath_param(root, "skymap_fits")
    assert ev.properties.get("skymap_url") == url
    if ev.alert_type != "retraction":
        for name in ("BNS", "NSBH", "BBH", "Terrestrial"):
            assert ev.properties["classification"][name] == float(_xpath_param(root, name))
    joint = _xpath_param(root, "joint_skymap_fits")
    if joint:
        ext = ev.properties["external_coinc"]
        assert ext["joint_skymap_url"] == joint
        assert ext["gcn_notice_id"] == int(_xpath_param(root, "External_GCN_Notice_Id"))
        assert ext["time_sky_position_coincidence_far_hz"] == float(
            _xpath_param(root, "Time_Sky_Position_Coincidence_FAR"))
    if skymap is None:
        assert ev.localization is None
    else:
        assert url.split("/")[-1].split(",")[0] == Path(map_rel).name
        assert ev.localization.skymap_url == url
        _check_localization(ev.localization, skymap, ligo_reading)


def test_voevent_of_another_author_is_refused():
    data = (DATA / "voevent/pygcn/gbm_flt_pos.xml").read_bytes()
    with pytest.raises(DecodeError, match="not an LVC"):
        igwn.decode_voevent(etree.fromstring(data), data)


def _one_line_error(fn, *args, match: str) -> str:
    with pytest.raises(DecodeError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("rel", DISPLAY_EXAMPLES, ids=[Path(p).name for p in DISPLAY_EXAMPLES])
def test_truncated_base64_skymap_of_display_examples(rel):
    # The user guide's display examples cut the base64 sky map short: a real corrupt map.
    _one_line_error(igwn.decode_json, _json(rel), match=r"event\.skymap is not valid base64")


def test_valid_base64_of_a_truncated_fits_file():
    raw = _json(f"{UG}/MS181101ab-initial.json")
    raw["event"]["skymap"] = raw["event"]["skymap"][:400_000]  # multiple of 4: decodes, FITS cut short
    _one_line_error(igwn.decode_json, raw, match=r"MS181101ab: event\.skymap: sky map: unreadable")


def test_corrupt_combined_skymap_names_its_field():
    raw = _json(f"{UG}/MS181101ab-ext-update.json")
    raw["external_coinc"]["combined_skymap"] = raw["external_coinc"]["combined_skymap"][:-3]
    _one_line_error(igwn.decode_json, raw, match=r"external_coinc\.combined_skymap")


@pytest.mark.parametrize("field", ["superevent_id", "time_created"])
@pytest.mark.parametrize("rel", [f"{UG}/MS181101ab-retraction.json", f"{UG}/MS181101ab-preliminary.json"])
def test_missing_required_field_names_it(rel, field):
    raw = _json(rel)
    del raw[field]
    _one_line_error(igwn.decode_json, raw, match=field)


def test_unparseable_event_time_names_it():
    raw = _json(f"{UG}/MS181101ab-preliminary.json")
    raw["event"]["time"] = "yesterday"
    _one_line_error(igwn.decode_json, raw, match=r"'event\.time' is not an ISO 8601 time")


def test_truncated_avro_container():
    data = (DATA / f"{UG}/MS181101ab-preliminary.avro").read_bytes()
    header = avro.read_header(data)
    _one_line_error(igwn.decode_avro, data[: len(data) // 2], header, match="truncated Avro container")


@pytest.mark.parametrize(
    "rel", [p for p, _ in JSON_ALERTS] + [p for p, _ in AVRO_ALERTS] + [p for p, _ in VOEVENTS],
)
def test_dispatcher_routes_raw_bytes_here(rel):
    from broker.sources import decode, upstream_topic

    data = (DATA / rel).read_bytes()
    (ev,) = decode(data)
    assert ev.source == "igwn"
    if rel.endswith(".xml"):
        assert ev.id == igwn.decode_voevent(etree.fromstring(data), data).id
    else:
        assert upstream_topic(data) == igwn.TOPIC
        assert ev.id.startswith(f"igwn:{ev.upstream_id}:{ev.alert_type}:")
