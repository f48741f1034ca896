"""End to end against the real Kafka and PostgreSQL: replay every bundled real alert
(and three malformed ones between good ones), run the broker until it has consumed
everything, and check the archive, ``mma.events`` and ``mma.dlq`` against values read
independently from the files."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import fastavro
import pytest
from lxml import etree

from tests.conftest import ROOT, read_to_end, run_cli

pytestmark = pytest.mark.integration

MANIFEST = ROOT / "deploy" / "demo-alerts.txt"


def manifest_files() -> list[Path]:
    from broker.replay import read_manifest

    return read_manifest(MANIFEST)


def igwn_key(alert: dict) -> tuple:
    """An IGWN alert revision: superevent, type, creation time and, for alerts that
    announce an external coincidence, the coincident GCN notice."""
    coinc = alert.get("external_coinc") or {}
    return ("igwn", alert["superevent_id"], alert["alert_type"].lower(), alert["time_created"],
            coinc.get("gcn_notice_id"))


def alert_keys(path: Path) -> set:
    """One key per distinct alert revision in a file, read without our decoders
    (fastavro, json, lxml): the same revision sent twice, or in two formats (IGWN JSON
    and Avro), is one archive row."""
    data = path.read_bytes()
    if path.suffix == ".avro":
        keys = set()
        for rec in fastavro.reader(io.BytesIO(data)):
            if "candid" in rec:
                keys.add(("ztf", rec["candid"]))
            else:
                keys.add(igwn_key(rec))
        return keys
    if path.suffix == ".xml":
        return {("voevent", etree.fromstring(data).get("ivorn"))}
    obj = json.loads(data)
    if "superevent_id" in obj:
        return {igwn_key(obj)}
    return {("gcn", json.dumps(obj, sort_keys=True))}


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list:
    """Every committed record of ``topic`` once at least ``expect`` arrived (up to
    ``timeout_s``), read to the end of each partition: extra records (duplicates) are
    read too (:func:`tests.conftest.read_to_end`)."""
    return read_to_end(bootstrap, topic, timeout_s, min_count=expect)


@pytest.fixture()
def malformed(tmp_path) -> dict[str, tuple[Path, str]]:
    """Malformed inputs made from real files: name → (file, topic it arrives on)."""
    ztf = ROOT / "tests/data/ztf/kowalski/20231012/2475433850215010007.avro"
    cut = tmp_path / "truncated.avro"
    raw = ztf.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    gcn = ROOT / "tests/data/gcn/gwcelery-kafka/kafka_alert_fermi_alert.json"
    bad_json = tmp_path / "invalid.json"
    text = gcn.read_text()
    bad_json.write_text(text[: len(text) // 2])
    vo = ROOT / "tests/data/voevent/pygcn/gbm_flt_pos.xml"
    root = etree.fromstring(vo.read_bytes())
    for el in root.xpath("//*[local-name()='WhereWhen']"):
        el.getparent().remove(el)
    no_ww = tmp_path / "no_wherewhen.xml"
    no_ww.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return {
        "truncated": (cut, "ztf_20231012_programid1"),
        "invalid_json": (bad_json, "gcn.notices.fermi.gbm.alert"),
        "no_wherewhen": (no_ww, "gcn.classic.voevent.FERMI_GBM_FLT_POS"),
    }


def test_replay_run_archive_dlq(broker_env, kafka_bootstrap, fresh_db, malformed):
    # an archive of its own: alerts another test archived already would rightly not
    # be published on mma.events again
    pg_url = fresh_db
    broker_env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    files = manifest_files()
    assert len(files) > 80, "the manifest should cover every bundled alert family"
    expected = set().union(*(alert_keys(f) for f in files))
    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]

    # good files, then each malformed file followed by more good files on the same topics
    half = len(files) // 2
    run_cli(broker_env, "replay", *map(str, files[:half]))
    for path, topic in malformed.values():
        run_cli(broker_env, "replay", "--topic", topic, str(path))
    run_cli(broker_env, "replay", *map(str, files[half:]))
    run_cli(broker_env, "replay", str(ROOT / "tests/data/ztf/kowalski/20231012/2475433850015010009.avro"),
            str(ROOT / "tests/data/voevent/fink-mm/fermi/voevent_number=193.xml"))

    proc = run_cli(broker_env, "run", "--until-caught-up", "--idle", "1")
    assert "dead letter" in proc.stdout

    from broker.archive import Archive
    from broker.archive.raw import SegmentFileStore

    archive = Archive(pg_url, raw_store=SegmentFileStore(Path(broker_env["MMA_BROKER_HOME"]) / "raw"))
    rows = archive.list(limit=100_000)
    ids = [r.event.id for r in rows]
    assert len(ids) == len(set(ids))
    # one row per distinct alert; the two re-sent files did not add rows
    assert len(ids) == len(expected), proc.stdout[-4000:] + proc.stderr[-4000:]

    # ---- dead letters: exactly the three malformed messages, original bytes, a reason
    dlq = read_topic(kafka_bootstrap, f"{prefix}mma.dlq", expect=3)
    assert len(dlq) == 3
    got = {bytes(m.value()) for m in dlq}
    assert got == {p.read_bytes() for p, _ in malformed.values()}
    for m in dlq:
        headers = dict(m.headers())
        assert headers["mma.dlq.reason"]
        assert headers["mma.dlq.topic"].decode().startswith(prefix)

    # ---- mma.events: every archived event published (at least once)
    from broker.serde import EventCodec

    codec = EventCodec()
    published = read_topic(kafka_bootstrap, f"{prefix}mma.events", expect=len(expected))
    pub_ids = {codec.decode(m.value())[0].id for m in published}
    assert pub_ids == set(ids)

    by_id = {r.event.id: r for r in rows}
    _check_ztf(by_id)
    _check_gbm_voevent(by_id)
    _check_igwn_skymap(by_id)

    # ---- a second replay + run changes nothing in the archive
    run_cli(broker_env, "replay", *map(str, files[:10]))
    run_cli(broker_env, "run", "--until-caught-up", "--idle", "1")
    assert archive.total() == len(ids)


def _check_ztf(by_id) -> None:
    from astropy.time import Time

    path = ROOT / "tests/data/ztf/kowalski/20231012/2475433850215010007.avro"
    with path.open("rb") as fh:
        rec = next(iter(fastavro.reader(fh)))
    cand = rec["candidate"]
    row = by_id[f"ztf:{rec['candid']}"]
    ev = row.event
    assert ev.source == "ztf" and ev.upstream_id == rec["objectId"]
    assert abs(Time(ev.time.rstrip("Z"), scale="utc").jd - cand["jd"]) * 86400 < 0.01
    assert math.isclose(ev.localization.ra, cand["ra"], abs_tol=1e-9)
    assert math.isclose(ev.localization.dec, cand["dec"], abs_tol=1e-9)
    assert row.kafka is not None and row.kafka.topic.endswith("ztf_20231012_programid1")


def _check_gbm_voevent(by_id) -> None:
    path = ROOT / "tests/data/voevent/pygcn/gbm_flt_pos.xml"
    root = etree.parse(str(path)).getroot()
    ivorn = root.get("ivorn")
    def one(name):  # VOEvent 1.1/2.0 alike: match by local name
        return root.xpath(f".//*[local-name()='WhereWhen']//*[local-name()='{name}']")[0].text

    ra, dec, err = float(one("C1")), float(one("C2")), float(one("Error2Radius"))
    iso = one("ISOTime")
    ev = by_id[f"gcn:{ivorn}"].event
    assert ev.mission == "Fermi" and ev.instrument == "GBM"
    assert math.isclose(ev.localization.ra, ra) and math.isclose(ev.localization.dec, dec)
    assert math.isclose(ev.localization.error_radius, err)
    assert ev.time.startswith(iso[:19])


def _check_igwn_skymap(by_id) -> None:
    import base64
    import tempfile

    from ligo.skymap.io import read_sky_map
    from ligo.skymap.postprocess import crossmatch

    path = ROOT / "tests/data/igwn/userguide/MS181101ab-initial.json"
    alert = json.loads(path.read_text())
    ev = next(r.event for r in by_id.values()
              if r.event.source == "igwn" and r.event.upstream_id == alert["superevent_id"]
              and r.event.alert_type == "initial" and r.event.format == "json")
    with tempfile.NamedTemporaryFile(suffix=".fits") as fh:
        fh.write(base64.b64decode(alert["event"]["skymap"]))
        fh.flush()
        sky = read_sky_map(fh.name, moc=True)
    areas = crossmatch(sky, contours=(0.5, 0.9)).contour_areas
    assert math.isclose(ev.localization.area_50, areas[0], rel_tol=1e-6)
    assert math.isclose(ev.localization.area_90, areas[1], rel_tol=1e-6)
    assert ev.time.startswith(alert["event"]["time"][:19])
