"""Unit tests of the segment-file raw store (no database needed)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker.archive.raw import RawRef, RawStoreError, SegmentFileStore

DATA = Path(__file__).resolve().parents[1] / "data"
REAL_FILES = [
    DATA / "voevent/pygcn/gbm_flt_pos.xml",
    DATA / "igwn/userguide/MS181101ab-preliminary.avro",
    DATA / "ztf/fink-client/avro_multi_alerts_other.avro",
]


@pytest.fixture
def blobs() -> list[bytes]:
    return [p.read_bytes() for p in REAL_FILES]


def test_round_trip_real_messages(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    refs = store.put_many(blobs)
    assert [r.sha256 for r in refs] == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert [r.length for r in refs] == [p.stat().st_size for p in REAL_FILES]
    assert len({r.segment for r in refs}) == 1  # one segment per batch
    for ref, path in zip(refs, REAL_FILES):
        assert store.get(ref) == path.read_bytes()
    # a fresh store object on the same directory reads the same bytes (no in-memory state)
    assert SegmentFileStore(tmp_path).get(refs[1]) == REAL_FILES[1].read_bytes()


def test_duplicates_in_batch_stored_once(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    copy = bytes(blobs[0])  # equal content, different object
    refs = store.put_many([blobs[0], blobs[1], blobs[0], copy])
    assert refs[0] == refs[2] == refs[3]
    segment = tmp_path / refs[0].segment
    assert segment.stat().st_size == len(blobs[0]) + len(blobs[1])


def test_each_batch_gets_a_new_segment(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    a = store.put_many(blobs[:1])
    b = store.put_many(blobs[:1])
    assert a[0].segment != b[0].segment
    assert a[0].sha256 == b[0].sha256
    assert store.put_many([]) == []


def _flip_a_byte(store_dir: Path, ref: RawRef) -> tuple[Path, bytes]:
    """Corrupt one byte of ``ref`` in its segment file; return the path and the new file bytes."""
    path = store_dir / ref.segment
    data = bytearray(path.read_bytes())
    data[ref.offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    return path, bytes(data)


def test_corruption_is_detected(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    ref = store.put_many(blobs[:2])[1]
    _flip_a_byte(tmp_path, ref)
    with pytest.raises(RawStoreError, match="sha256"):
        store.get(ref)


@pytest.mark.parametrize(
    "ref, message",
    [
        (RawRef(sha256="0" * 64, length=10, segment="20000101/missing.seg", offset=0), "cannot read"),
        (RawRef(sha256="0" * 64, length=10), "no segment"),
    ],
)
def test_missing_segment_errors(tmp_path: Path, ref: RawRef, message: str) -> None:
    with pytest.raises(RawStoreError, match=message):
        SegmentFileStore(tmp_path).get(ref)


def test_errors_name_the_segment_not_the_host_directory(tmp_path: Path, blobs: list[bytes]) -> None:
    """A RawStoreError can reach a published record (the enrich stage's enrichment.error)."""
    store_dir = tmp_path / "host-only-dir"
    store = SegmentFileStore(store_dir)
    ref = store.put_many(blobs[:1])[0]
    missing = RawRef(sha256="0" * 64, length=10, segment="20000101/missing.seg", offset=0)
    _flip_a_byte(store_dir, ref)
    errors = [pytest.raises(RawStoreError, store.get, r).value for r in (missing, ref)]
    (store_dir / ref.segment).write_bytes(b"short")
    errors.append(pytest.raises(RawStoreError, store.get, ref).value)
    for exc, what in zip(errors, ("cannot read", "sha256", "ends before")):
        assert what in str(exc) and "host-only-dir" not in str(exc) and str(tmp_path) not in str(exc), exc
    assert ref.segment in str(errors[1]) and "20000101/missing.seg" in str(errors[0])


def test_truncated_segment(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    ref = store.put_many(blobs[:1])[0]
    path = tmp_path / ref.segment
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RawStoreError, match="ends before"):
        store.get(ref)


def test_fsync_called_on_file_and_dirs(tmp_path: Path, blobs: list[bytes], monkeypatch) -> None:
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    SegmentFileStore(tmp_path / "new").put_many(blobs[:1])
    # segment file, the store root (new day directory) and the day directory
    assert len(synced) == 3


def test_get_many_reads_each_segment_once_and_reports_each_bad_ref(tmp_path: Path, blobs: list[bytes],
                                                                   monkeypatch) -> None:
    import os

    store = SegmentFileStore(tmp_path)
    first = store.put_many(blobs[:2])
    second = store.put_many(blobs[2:])
    missing = RawRef(sha256="0" * 64, length=10, segment="20000101/missing.seg", offset=0)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    got = store.get_many([first[0], missing, second[0], first[1], RawRef(sha256="1" * 64, length=3)])
    assert got[0] == blobs[0] and got[2] == blobs[2] and got[3] == blobs[1]
    assert isinstance(got[1], RawStoreError) and "cannot read" in str(got[1])
    assert isinstance(got[4], RawStoreError) and "no segment" in str(got[4])
    assert sorted(opened) == sorted(str(tmp_path / s) for s in {first[0].segment, second[0].segment, missing.segment})


def test_verify_false_skips_the_hash_but_not_the_length(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    ref = store.put_many(blobs[:1])[0]
    path, data = _flip_a_byte(tmp_path, ref)
    assert store.get(ref, verify=False) == bytes(data[ref.offset:ref.offset + ref.length]) != blobs[0]
    with pytest.raises(RawStoreError, match="sha256"):
        store.get(ref)  # verified by default
    (got,) = store.get_many([ref])
    assert isinstance(got, RawStoreError) and "sha256" in str(got)
    path.write_bytes(bytes(data)[:-1])
    with pytest.raises(RawStoreError, match="ends before"):
        store.get(ref, verify=False)


def test_segment_reader_keeps_files_open_until_closed(tmp_path: Path, blobs: list[bytes]) -> None:
    store = SegmentFileStore(tmp_path)
    refs = store.put_many(blobs)
    with store.reader() as reader:
        assert [reader.read(r) for r in reversed(refs)] == blobs[::-1]
        assert len(reader._fds) == 1
    assert reader._fds == {}
    assert reader.read(refs[0]) == blobs[0]  # usable again: it reopens
    reader.close()


def test_a_large_segment_is_written_back_a_chunk_at_a_time_then_fsynced(tmp_path: Path, monkeypatch) -> None:
    import broker.archive.raw as raw

    assert raw._sync_file_range is not None  # Linux: libc has it
    calls: list[tuple[int, int, int]] = []
    real = raw._sync_file_range

    def record(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((offset, nbytes, flags))
        return real(fd, offset, nbytes, flags)  # the real call: it must accept what we pass

    monkeypatch.setattr(raw, "_sync_file_range", record)
    monkeypatch.setattr(raw, "WRITEBACK_CHUNK", 100_000)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    blobs = [bytes([i]) * 30_000 for i in range(20)]  # 600 kB: writeback every 4 blobs
    store = SegmentFileStore(tmp_path)
    store.put_many([b"the day's directory exists"])
    fsyncs.clear()
    refs = store.put_many(blobs)
    assert store.get_many(refs) == blobs
    assert [c[0] for c in calls] == [0, 120_000, 240_000, 360_000, 480_000]
    assert all(n == 120_000 and f == raw._SYNC_FILE_RANGE_WRITE for _, n, f in calls)
    assert len(fsyncs) == 2  # still the file's fsync and its directory's: durability unchanged
    calls.clear()
    store.put_many([b"small"])  # under one chunk: written in one go
    SegmentFileStore(tmp_path, fsync=False).put_many(blobs[:10] + [b"x"])  # no fsync: no writeback either
    assert calls == []
    monkeypatch.setattr(raw, "_sync_file_range", None)  # where libc has none: written in one go
    refs = store.put_many([b"y" * 300_000])
    assert store.get(refs[0]) == b"y" * 300_000
