"""The routed raw store (broker/archive/raw.py RoutedRawStore) on the real PostgreSQL.

The default settings keep the notices' raw bytes (gcn, igwn, ...) in ``raw_messages``
and the surveys' (ztf, lsst) in segment files. Real alerts of tests/data are archived
in mixed batches; every reader must then find every Event's bytes by its ref: the
archive's reads, the filters stage's lazy reads (which must not touch PostgreSQL for a
ZTF alert), ``archive gc`` (both halves, one run), and export / import (a mixed
archive round-trips member for member, and a second import stores nothing).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.archive import (Archive, ArchiveItem, KafkaMeta, PostgresRawStore, RawStoreError, RoutedRawStore,
                            SegmentFileStore)
from broker.archive.export import export_archive, import_archive, member_digests
from broker.archive.gc import collect
from broker.sources import decode
from followup.store import ArtifactStore
from tests.conftest import DATA

ZTF = sorted((DATA / "ztf").rglob("*.avro"))[:3]
NOTICES = [DATA / "gcn" / "gwcelery-kafka" / "kafka_alert_fermi_alert.json",
           DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json"]


def _items(paths: list[Path]) -> list[ArchiveItem]:
    out = []
    for i, p in enumerate(paths):
        raw = p.read_bytes()
        out += [ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i)) for ev in decode(raw)]
    return out


def _routed(url: str, raw_dir: Path) -> Archive:
    archive = Archive(url, RoutedRawStore(SegmentFileStore(raw_dir), PostgresRawStore(), ["gcn", "igwn"]))
    archive.migrate()
    return archive


def _refs(archive: Archive) -> dict[str, tuple[str, str, str | None]]:
    with archive.engine.connect() as conn:
        return {i: (s, h, seg) for i, s, h, seg in conn.execute(sa.text(
            "SELECT id, source, raw_sha256, raw_segment FROM events"))}


def _pg_shas(archive: Archive) -> set[str]:
    with archive.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT sha256 FROM raw_messages")).scalars())


def test_a_mixed_batch_goes_by_source_and_every_read_finds_it(fresh_db, tmp_path):
    archive = _routed(fresh_db, tmp_path / "raw")
    items = _items(ZTF[:2] + NOTICES[:1] + ZTF[2:] + NOTICES[1:])  # sources interleaved in one batch
    r = archive.write_batch(items)
    assert r.inserted == len(items)
    refs = _refs(archive)
    notices = {i for i, (s, _, _) in refs.items() if s in ("gcn", "igwn")}
    assert len(notices) == 2 and len(refs) - len(notices) == sum(len(decode(p.read_bytes())) for p in ZTF)
    for i, (source, sha, seg) in refs.items():
        assert (seg is None) == (i in notices), (i, source, seg)  # notices: no segment
    assert _pg_shas(archive) == {refs[i][1] for i in notices}  # no survey byte in the table
    seg_bytes = sum(f.stat().st_size for f in (tmp_path / "raw").rglob("*.seg"))
    assert seg_bytes == sum(len(p.read_bytes()) for p in ZTF)  # and no notice byte in a segment
    by_id = {it.event.id: it.raw for it in items}
    for i in refs:
        assert archive.raw(i) == by_id[i]

    # a redelivery keeps the first refs and adds nothing to the table
    assert archive.write_batch(items).inserted == 0
    assert _refs(archive) == refs and len(_pg_shas(archive)) == 2
    # bytes without an Event (dead letters, artifacts) go to the segment files
    (dead,) = archive.store_raw([b"a dead letter"])
    assert dead.segment is not None and archive.raw_by_ref(dead) == b"a dead letter"
    plot = ArtifactStore(archive).put(b"\x89PNG plot", "image/png")
    assert ArtifactStore(archive).get(plot["sha256"])[0] == b"\x89PNG plot"
    assert len(_pg_shas(archive)) == 2
    # a batch of notices alone writes no segment; of ZTF alone, nothing in the table
    n_seg = len(list((tmp_path / "raw").rglob("*.seg")))
    notice = _items(NOTICES[:1])[0]
    other = ArchiveItem(event=notice.event.model_copy(update={"id": notice.event.id + ":b"}),
                             raw=notice.raw + b" ", kafka=KafkaMeta("t", 0, 99))
    archive.write_batch([other])
    assert len(list((tmp_path / "raw").rglob("*.seg"))) == n_seg and len(_pg_shas(archive)) == 3
    assert archive.raw(other.event.id) == notice.raw + b" "

    # a corrupt notice is refused like a corrupt segment
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE raw_messages SET data = 'x'::bytea || data WHERE sha256 = :h"),
                     {"h": refs[next(iter(notices))][1]})
    with pytest.raises(RawStoreError, match="raw_messages"):
        archive.raw(next(iter(notices)))
    archive.close()


def test_an_archive_written_before_the_setting_changed_reads_back(fresh_db, tmp_path):
    items = _items(ZTF[:1] + NOTICES[:1])
    plain = Archive(fresh_db, SegmentFileStore(tmp_path / "raw"))
    plain.migrate()
    plain.write_batch(items)  # everything in segment files
    plain.close()
    routed = _routed(fresh_db, tmp_path / "raw")
    routed.write_batch(_items(NOTICES[1:]))  # then the notices in the table
    everything = _items(ZTF[:1] + NOTICES)
    for it in everything:
        assert routed.raw(it.event.id) == it.raw
    # and back: an all-files archive still reads the notices the routed one put in the table
    assert {seg is None for _, _, seg in _refs(routed).values()} == {True, False}
    back = Archive(fresh_db, RoutedRawStore(SegmentFileStore(tmp_path / "raw"), PostgresRawStore(), []))
    for it in everything:
        assert back.raw(it.event.id) == it.raw
    routed.close()
    back.close()


def test_the_filters_lazy_reads_serve_both_halves_and_leave_postgres_alone_for_ztf(fresh_db, tmp_path, monkeypatch):
    from filters.stage import fetch_raw_many

    archive = _routed(fresh_db, tmp_path / "raw")
    items = _items(ZTF + NOTICES)
    archive.write_batch(items)
    by_id = {it.event.id: it.raw for it in items}
    for verify in (False, True):
        got = fetch_raw_many(archive, [*by_id, "ztf:absent"], verify=verify)
        assert {i: got[i] for i in by_id} == by_id and got["ztf:absent"] is None
        got.close()

    ztf_ids = [it.event.id for it in items if it.event.source == "ztf"]

    def no_query(*a, **k):
        raise AssertionError("a ZTF alert's bytes were asked of PostgreSQL")

    got = fetch_raw_many(archive, ztf_ids)
    monkeypatch.setattr(PostgresRawStore, "get", no_query)
    monkeypatch.setattr(PostgresRawStore, "get_many", no_query)
    assert [got[i] for i in ztf_ids] == [by_id[i] for i in ztf_ids]  # one pread each, no query
    got.close()
    monkeypatch.undo()

    notice = next(it.event.id for it in items if it.event.source == "gcn")
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE raw_messages SET data = 'x'::bytea || data WHERE sha256 = "
                             "(SELECT raw_sha256 FROM events WHERE id = :i)"), {"i": notice})
    assert fetch_raw_many(archive, [notice], verify=True)[notice] is None  # logged, not raised
    archive.close()


def test_gc_collects_both_halves_in_one_run(fresh_db, tmp_path):
    raw_dir = tmp_path / "raw"
    archive = _routed(fresh_db, raw_dir)
    items = _items(ZTF + NOTICES)
    archive.write_batch(items)
    archive.write_batch(_items(ZTF[:1]))  # redelivered ZTF batch: an unreferenced segment
    archive.store_raw([b"a dead letter"])  # a segment referenced from mma.dlq only
    with archive.engine.begin() as conn:  # bytes in the table no row refers to (a dead notice batch's)
        archive.raw_store.postgres.put_many([b"unreferenced notice bytes"], conn)
    segments = sorted(raw_dir.rglob("*.seg"))
    assert len(segments) == 3

    young = collect(archive, grace_s=3600)
    assert young.store == "file+postgres" and young.removed == 0
    assert (young.halves["file"].kept_young, young.halves["postgres"].kept_young) == (2, 1)
    old = time.time() - 7200
    for p in segments:
        os.utime(p, (old, old))
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE raw_messages SET stored_at = now() - interval '2 hours'"))

    dry = collect(archive, grace_s=3600, dry_run=True)
    assert (dry.halves["file"].removed, dry.halves["postgres"].removed, dry.removed) == (2, 1, 3)
    assert len(list(raw_dir.rglob("*.seg"))) == 3 and len(_pg_shas(archive)) == 3
    done = collect(archive, grace_s=3600)
    assert (done.halves["file"].removed, done.halves["postgres"].removed) == (2, 1)
    assert done.removed_bytes == len(ZTF[0].read_bytes()) + len(b"a dead letter") + len(b"unreferenced notice bytes")
    for it in items:  # every referenced byte stayed, in both halves
        assert archive.raw(it.event.id) == it.raw

    # raw retention: past it, both halves' bytes of old Events go; the Events stay
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET ingested_at = now() - interval '3 days'"))
    gone = collect(archive, grace_s=3600, raw_retention_days=1)
    assert (gone.halves["file"].expired, gone.halves["postgres"].expired) == (1, 2)
    assert archive.total() == len(items) and not _pg_shas(archive) and not list(raw_dir.rglob("*.seg"))
    with pytest.raises(RawStoreError):
        archive.raw(items[-1].event.id)
    archive.close()


def test_a_mixed_archive_exports_imports_and_exports_again_the_same(fresh_db, second_db, tmp_path):
    src = _routed(fresh_db, tmp_path / "raw-a")
    items = _items(ZTF + NOTICES)
    src.write_batch(items)
    first = tmp_path / "a.zip"
    s1 = export_archive(src, first, progress=False, version="test")
    assert s1.raw_blobs == len(ZTF) + len(NOTICES)

    again = import_archive(src, first, progress=False)  # into itself: every blob found, in its half
    assert again.raw_stored == 0 and sum(t.inserted for t in again.tables) == 0

    dst = _routed(second_db, tmp_path / "raw-b")
    s2 = import_archive(dst, first, progress=False)
    assert s2.raw_stored == s1.raw_blobs  # bytes without their source: to the segment files
    second = tmp_path / "b.zip"
    export_archive(dst, second, progress=False, version="test")
    a, b = member_digests(first), member_digests(second)
    for name in sorted(set(a) | set(b)):
        assert a.get(name) == b.get(name), name
    for it in items:
        assert dst.raw(it.event.id) == it.raw
    assert import_archive(dst, second, progress=False).raw_stored == 0
    src.close()
    dst.close()


def test_the_settings_choose_the_store(tmp_path):
    from broker.app import raw_store
    from broker.config import settings_class

    S = settings_class()
    default = raw_store(S(home=tmp_path))
    assert isinstance(default, RoutedRawStore)
    assert default.store_for("gcn") is default.postgres and default.store_for("igwn") is default.postgres
    assert default.store_for("ztf") is default.files and default.store_for("lsst") is default.files
    assert default.store_for(None) is default.files and default.directory == tmp_path / "raw"
    assert isinstance(raw_store(S(home=tmp_path, archive={"raw_store": "postgres"})), PostgresRawStore)
    assert isinstance(raw_store(S(home=tmp_path, archive={"raw_store_postgres_sources": []})), SegmentFileStore)
    with pytest.raises(Exception, match="raw_store_postgres_sources"):
        S(home=tmp_path, archive={"raw_store_postgres_sources": ["gnc"]})


def test_a_survey_segment_collected_before_its_mixed_batch_commits_is_written_again(fresh_db, tmp_path):
    raw_dir = tmp_path / "raw"
    archive = _routed(fresh_db, raw_dir)
    files = archive.raw_store.files
    real_put = files.put_many
    calls = []

    def slow_writer(blobs, connection=None):
        # the segment is written, then the writer waits longer than the grace period and
        # the collector takes it; the notices' half is written inside the transaction
        refs = real_put(blobs, connection)
        calls.append(refs[0].segment)
        if len(calls) == 1:
            old = time.time() - 7200
            os.utime(raw_dir / refs[0].segment, (old, old))
            assert collect(archive, grace_s=3600).halves["file"].removed == 1
        return refs

    files.put_many = slow_writer
    items = _items(ZTF + NOTICES)
    assert archive.write_batch(items).inserted == len(items)
    assert len(calls) == 2 and calls[0] != calls[1] and len(_pg_shas(archive)) == 2
    for it in items:
        assert archive.raw(it.event.id) == it.raw
    archive.close()
