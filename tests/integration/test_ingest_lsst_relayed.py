"""ZTF, Fink-relayed ZTF and Rubin/LSST alerts through the real Kafka and PostgreSQL
(issue 12): ``mma-broker replay`` then ``mma-broker run --stage ingest``; one archive
row per alert however many times and forms it arrived in, and no dead letter.

Inputs: two ZTF packets (kowalski), the five Fink output files (six real ZTF alerts,
one of them also written back in ZTF's own 3.3 schema), the Fink output of two real
Rubin alerts, the same two alerts as Rubin sends them (Confluent wire format, schema
id 1000) and lsst-alert-packet's v11.1 sample in wire format and its v8.0 sample
container (one DIASource id: one row). Expected ids are read with fastavro.
"""

from __future__ import annotations

import importlib.util
import io
import uuid
from pathlib import Path

import fastavro
import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "data"
PACKAGE = Path(importlib.util.find_spec("lsst.alert.packet").submodule_search_locations[0]) / "schema"


def _records(path: Path) -> list[dict]:
    with path.open("rb") as fh:
        return list(fastavro.reader(fh))


def _wire(major: int, minor: int, record: dict) -> bytes:
    schema = fastavro.schema.load_schema(str(PACKAGE / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"))
    rubin = {f["name"] for f in schema["fields"]}
    rec = {k: None if isinstance(record[k], dict) and all(v is None for v in record[k].values()) else record[k]
           for k in rubin}
    out = io.BytesIO()
    out.write(b"\x00" + (major * 100 + minor).to_bytes(4, "big"))
    fastavro.schemaless_writer(out, schema, rec)
    return out.getvalue()


def test_ztf_relayed_ztf_and_lsst_one_row_per_alert_no_dlq(broker_env, kafka_bootstrap, fresh_db, tmp_path):
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    ztf = [DATA / "ztf/kowalski/20231012/2475433850015010009.avro", DATA / "ztf/kowalski/20200202/1105522281015015000.avro"]
    fink_ztf = sorted((DATA / "relayed/fink/ztf").glob("*.avro"))
    fink_lsst = DATA / "relayed/fink/lsst/part-2-918301-first2.avro"
    files = [*ztf, *fink_ztf, fink_lsst]

    # the first Fink ZTF alert in ZTF's own schema (3.3, from a bundled ZTF packet)
    with (DATA / "ztf/fink-client/ZTF19acihgng.avro").open("rb") as fh:
        ztf33 = fastavro.reader(fh).writer_schema
    (first,) = _records(fink_ztf[0])
    out = io.BytesIO()
    fastavro.writer(out, ztf33, [{f["name"]: first[f["name"]] for f in ztf33["fields"]}])
    (tmp_path / "ztf-form.avro").write_bytes(out.getvalue())
    files.append(tmp_path / "ztf-form.avro")
    # the two Rubin alerts as Rubin sends them, and the package's samples
    for i, rec in enumerate(_records(fink_lsst)):
        (tmp_path / f"rubin-{i}.avro").write_bytes(_wire(10, 0, rec))
        files.append(tmp_path / f"rubin-{i}.avro")
    (sample,) = _records(PACKAGE / "11" / "1" / "sample_data" / "fakeAlert.avro")
    (tmp_path / "sample-v11.1.avro").write_bytes(_wire(11, 1, sample))
    files += [tmp_path / "sample-v11.1.avro", PACKAGE / "8" / "0" / "sample_data" / "fakeAlert.avro"]

    expected = {f"ztf:{r['candid']}" for p in [*ztf, *fink_ztf] for r in _records(p)}
    expected |= {f"lsst:{r['diaSource']['diaSourceId']}" for r in _records(fink_lsst)}
    expected.add(f"lsst:{sample['diaSource']['diaSourceId']}")
    assert len(expected) == 2 + 6 + 2 + 1

    proc = run_cli(env, "replay", *map(str, files))
    for topic in ("ztf_20231012_programid1", "ztf_20191115_programid1", "ztf_20260322_programid1",
                  "lsst-alerts-v10.0", "lsst-alerts-v11.1", "lsst-alerts-v8.0"):
        assert topic in proc.stderr, proc.stderr[-3000:]
    proc = run_cli(env, "run", "--stage", "ingest", "--until-caught-up", "--idle", "3")
    assert "0 dead letter" in proc.stdout, proc.stdout[-3000:]

    from broker.archive import Archive
    from broker.archive.raw import SegmentFileStore

    archive = Archive(fresh_db, raw_store=SegmentFileStore(Path(env["MMA_BROKER_HOME"]) / "raw"))
    rows = archive.list(limit=1000)
    ids = [r.event.id for r in rows]
    assert sorted(ids) == sorted(expected)  # one row per alert: relays and forms add none
    by_id = {r.event.id: r.event for r in rows}
    relayed = [by_id[f"ztf:{r['candid']}"] for p in fink_ztf for r in _records(p)]
    assert all(ev.source == "ztf" for ev in relayed)
    rubin = [by_id[f"lsst:{r['diaSource']['diaSourceId']}"] for r in _records(fink_lsst)]
    assert all(ev.source == "lsst" and ev.properties["psfFlux_njy"] is not None for ev in rubin)

    from confluent_kafka import Consumer

    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([f"{prefix}mma.dlq"])
    dead = [m for m in (c.poll(0.5) for _ in range(6)) if m is not None and not m.error()]
    c.close()
    assert dead == []
