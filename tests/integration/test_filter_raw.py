"""The filter stage's raw-bytes reads (filters.stage.fetch_raw_many) against a real PostgreSQL,
with both raw stores: the bytes of a batch's Events, each read when asked (file store), one
query (PostgreSQL store); not hashed on this path unless asked, while the archive's other
readers still verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.archive import (
    Archive,
    ArchiveItem,
    KafkaMeta,
    PostgresRawStore,
    SegmentFileStore,
)
from broker.archive.raw import RawStoreError

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
ZTF_MULTI = DATA / "ztf/fink-client/avro_multi_alerts_other.avro"
IGWN = DATA / "igwn/userguide/MS181101ab-preliminary.json"


@pytest.fixture(params=["segments", "postgres"])
def archive(request, fresh_db, tmp_path):
    """An archive on a new database of the session's PostgreSQL (tests/conftest.py), with each raw store."""
    store = SegmentFileStore(tmp_path / "raw") if request.param == "segments" else PostgresRawStore()
    arch = Archive(fresh_db, store, retry_max_delay_s=0.5)
    arch.migrate()
    yield arch
    arch.close()


def items() -> list[ArchiveItem]:
    from broker.sources import avro, igwn, ztf

    raw = ZTF_MULTI.read_bytes()
    out = [ArchiveItem(ev, raw, KafkaMeta("ztf_20210601_programid1", 1, 7))
           for ev in ztf.decode(raw, avro.read_header(raw))]
    gw = IGWN.read_bytes()
    return out + [ArchiveItem(igwn.decode_json(json.loads(gw)), gw, KafkaMeta("igwn.gwalert", 0, 3))]


def test_fetch_raw_many_reads_each_events_bytes(archive: Archive) -> None:
    from filters.stage import RawBatch, fetch_raw_many

    its = items()
    archive.write_batch(its)
    ids = [it.event.id for it in its]
    got = fetch_raw_many(archive, [*ids, "ztf:404", ids[0]])
    assert list(got) == [*ids, "ztf:404"]
    assert [got.get(i) for i in ids] == [it.raw for it in its] and got.get("ztf:404") is None
    rb = RawBatch(lambda batch: fetch_raw_many(archive, batch))
    rb.begin(ids[:3])
    assert [rb.get(i) for i in ids[:3]] == [ZTF_MULTI.read_bytes()] * 3 and rb.queries == 1
    rb.clear()


def test_the_stage_does_not_hash_but_the_archive_still_verifies(archive: Archive, caplog) -> None:
    from filters.stage import fetch_raw_many

    its = items()
    archive.write_batch(its)
    zid = its[0].event.id
    raw = ZTF_MULTI.read_bytes()
    bad = bytearray(raw)
    bad[100] ^= 0xFF
    if isinstance(archive.raw_store, SegmentFileStore):
        ref = archive.get(zid).raw
        path = archive.raw_store.directory / ref.segment
        seg = bytearray(path.read_bytes())
        seg[ref.offset:ref.offset + ref.length] = bad
        path.write_bytes(bytes(seg))
    else:
        with archive.engine.begin() as conn:
            conn.execute(sa.text("UPDATE raw_messages SET data = :d"), {"d": bytes(bad)})
    assert fetch_raw_many(archive, [zid]).get(zid) == bytes(bad)  # the length is checked, not the hash
    assert fetch_raw_many(archive, [zid], verify=True).get(zid) is None
    assert "sha256" in caplog.text
    with pytest.raises(RawStoreError, match="sha256"):
        archive.raw(zid)  # every other reader verifies
