"""Raw-store garbage collection (broker/archive/gc.py) on the real PostgreSQL.

Real alerts are archived; a redelivered batch and a dead letter leave unreferenced
bytes. The collector keeps them during the grace period, removes them after it (a dry
run only counts), never removes referenced bytes unless raw retention says so, and a
writer whose segment is collected before its transaction commits writes it again.
Coincidence claims older than the grace period go in the same run (library and CLI).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore, RawStoreError, SegmentFileStore
from broker.archive.gc import collect
from broker.sources import decode
from followup.store import ArtifactStore
from tests.conftest import DATA

pytestmark = pytest.mark.integration
FILES = sorted((DATA / "ztf").rglob("*.avro"))[:3] + [DATA / "gcn" / "gwcelery-kafka" / "kafka_alert_fermi_alert.json"]


def _items() -> list[ArchiveItem]:
    out = []
    for i, p in enumerate(FILES):
        raw = p.read_bytes()
        out += [ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i)) for ev in decode(raw)]
    return out


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _all_readable(archive: Archive) -> int:
    rows = archive.list(limit=1000)
    for r in rows:
        archive.raw(r.event.id)
    return len(rows)


def test_file_store_gc_grace_dry_run_retention(fresh_db, tmp_path):
    raw_dir = tmp_path / "raw"
    archive = Archive(fresh_db, SegmentFileStore(raw_dir))
    archive.migrate()
    items = _items()
    archive.write_batch(items)
    archive.write_batch(items)  # redelivered: a second segment, referenced by nothing
    archive.store_raw([b"a dead letter's bytes"])  # referenced from mma.dlq only
    ArtifactStore(archive).put(b"\x89PNG plot", "image/png")
    segments = sorted(raw_dir.rglob("*.seg"))
    assert len(segments) == 4

    r = collect(archive, grace_s=3600)
    assert (r.scanned, r.unreferenced, r.kept_young, r.removed) == (4, 2, 2, 0)
    for p in segments:
        _age(p, 7200)
    r = collect(archive, grace_s=3600, dry_run=True)
    assert (r.unreferenced, r.removed) == (2, 2) and all(p.exists() for p in segments)
    r = collect(archive, grace_s=3600)
    assert r.removed == 2 and r.removed_bytes > 0
    assert len(list(raw_dir.rglob("*.seg"))) == 2 and not list(raw_dir.rglob("*.gc"))
    assert _all_readable(archive) == len({it.event.id for it in items})

    # raw retention: Events archived 40 days ago lose their bytes with a 30-day retention,
    # the artifact (referenced by followup_artifacts) stays; the Events stay too
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET ingested_at = now() - interval '40 days'"))
    assert collect(archive, grace_s=3600, raw_retention_days=60).removed == 0
    r = collect(archive, grace_s=3600, raw_retention_days=30)
    assert (r.removed, r.expired) == (1, 1)
    assert len(list(raw_dir.rglob("*.seg"))) == 1
    ev = archive.list(limit=1)[0].event
    with pytest.raises(RawStoreError):
        archive.raw(ev.id)
    assert ArtifactStore(archive).get(ArtifactStore(archive).put(b"\x89PNG plot", "image/png")["sha256"])[0]
    archive.close()


def test_a_segment_collected_before_its_batch_commits_is_written_again(fresh_db, tmp_path):
    raw_dir = tmp_path / "raw"
    store = SegmentFileStore(raw_dir)
    archive = Archive(fresh_db, store)
    archive.migrate()
    real_put = store.put_many
    calls = []

    def slow_writer(blobs, connection=None):
        # the writer wrote its segment, then waited (database away) longer than the grace
        # period; the collector runs in between and takes the still unreferenced segment
        refs = real_put(blobs, connection)
        calls.append(refs[0].segment)
        if len(calls) == 1:
            _age(raw_dir / refs[0].segment, 7200)
            assert collect(archive, grace_s=3600).removed == 1
        return refs

    store.put_many = slow_writer
    items = _items()
    assert archive.write_batch(items).inserted == len({it.event.id for it in items})
    assert len(calls) == 2 and calls[0] != calls[1]
    assert _all_readable(archive) > 0

    # a writer that touched its segment (start of a transaction attempt) before the
    # collector looked keeps it, though the file was old when the collector listed it
    store.put_many = real_put
    (ref,) = store.put_many([b"bytes of a batch not committed yet"])
    path = raw_dir / ref.segment
    _age(path, 7200)
    from broker.archive.store import _touch_segments

    assert _touch_segments(store, [{"raw_segment": ref.segment}])
    r = collect(archive, grace_s=3600)
    assert r.removed == 0 and r.kept_young == 1 and path.exists()
    # a .gc file left by an interrupted collector: put back when referenced, removed when not
    path.rename(path.with_name(path.name + ".gc"))
    _age(path.with_name(path.name + ".gc"), 7200)
    used = next(raw_dir.rglob("*.seg"))
    used.rename(used.with_name(used.name + ".gc"))
    r = collect(archive, grace_s=3600)
    assert r.removed == 1 and used.exists() and not list(raw_dir.rglob("*.gc"))
    assert _all_readable(archive) > 0
    archive.close()


def test_postgres_store_gc(fresh_db):
    archive = Archive(fresh_db, PostgresRawStore())
    archive.migrate()
    items = _items()
    archive.write_batch(items)
    archive.store_raw([b"a dead letter's bytes"])
    r = collect(archive, grace_s=3600)
    assert (r.scanned, r.unreferenced, r.kept_young, r.removed) == (len(FILES) + 1, 1, 1, 0)
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE raw_messages SET stored_at = now() - interval '2 hours'"))
    assert collect(archive, grace_s=3600, dry_run=True).removed == 1
    r = collect(archive, grace_s=3600)
    assert r.removed == 1 and r.removed_bytes == len(b"a dead letter's bytes")
    assert _all_readable(archive) == len({it.event.id for it in items})
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET ingested_at = now() - interval '40 days' WHERE source = 'gcn'"))
    r = collect(archive, grace_s=3600, raw_retention_days=30)
    assert (r.removed, r.expired) == (1, 1)
    with archive.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM raw_messages")).scalar_one() == len(FILES) - 1
    archive.close()


def test_gc_expires_coincidence_claims_older_than_the_grace_period(fresh_db, broker_env):
    from broker.enrich.claims import claim_coincidences
    from tests.conftest import run_cli

    archive = Archive(fresh_db, PostgresRawStore())
    archive.migrate()
    assert claim_coincidences(archive.engine, [("c1", "e1"), ("c2", "e2"), ("c3", "e3")], "enrich.notices") == \
        {("c1", "e1"), ("c2", "e2"), ("c3", "e3")}
    assert claim_coincidences(archive.engine, [("c4", "e4")], "enrich.optical") == {("c4", "e4")}
    with archive.engine.begin() as conn:  # a coincidence row (archive data, migration 0013) as old: gc leaves it
        conn.execute(sa.text(
            "INSERT INTO coincidences (id, computed_from, kind, trigger_group, trigger_event_id, other_group, "
            "other_event_id, coincident, retracted, record, created_at) VALUES ('c1', 'e1', 'gw-optical', 'igwn:S1', "
            "'e0', 'ztf:ZTF1', 'e1', true, false, '{}', now() - interval '2 hours')"))
        conn.execute(sa.text("UPDATE coincidence_claims SET claimed_at = now() - interval '2 hours' "
                             "WHERE id IN ('c1', 'c2')"))
        conn.execute(sa.text("UPDATE coincidence_claims SET claimed_at = now() - interval '50 minutes' "
                             "WHERE id = 'c3'"))

    def left() -> set[str]:
        with archive.engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT id FROM coincidence_claims")).scalars())

    r = collect(archive, grace_s=3600, dry_run=True)
    assert (r.claims, r.claims_removed) == (4, 2) and left() == {"c1", "c2", "c3", "c4"}
    r = collect(archive, grace_s=3600)
    assert (r.claims, r.claims_removed) == (4, 2) and left() == {"c3", "c4"}  # 50 min < 1 h: kept
    # an expired version claimed again is a new claim, by whichever lane comes first
    assert claim_coincidences(archive.engine, [("c1", "e1")], "enrich.optical") == {("c1", "e1")}
    archive.close()

    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    proc = run_cli(env, "archive", "gc", "--dry-run", "--grace-hours", "0.5")
    assert "coincidence claims: 3 rows; would remove 1 older than 0.5 h" in proc.stdout, proc.stdout
    proc = run_cli(env, "archive", "gc", "--grace-hours", "0.5")
    assert "coincidence claims: 3 rows; removed 1 older than 0.5 h" in proc.stdout, proc.stdout
    assert _claim_ids(fresh_db) == {"c1", "c4"}
    engine = sa.create_engine(fresh_db)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, computed_from FROM coincidences")).all() == [("c1", "e1")]
    engine.dispose()


def _claim_ids(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT id FROM coincidence_claims")).scalars())
    finally:
        engine.dispose()
