"""Micro-benchmark of the archive write path (Archive.write_batch).

Writes N events (default 20,000) with a 70 kB raw message each, in batches of 500,
into a fresh embedded PostgreSQL, once per raw store (segment files, PostgreSQL
bytea), and prints rows/s and MB/s of raw bytes.

Events are real ZTF alerts from tests/data/ztf decoded by broker.sources.ztf, cycled
with a distinct id each; the raw message is the real alert bytes padded with random
(incompressible, like ZTF's gzip cutouts) bytes to 70 kB, so that every message has
its own sha256 (no deduplication helps).

``--compare-insert`` also times the row insert alone with the two candidate methods
(SQLAlchemy insertmanyvalues vs. psycopg binary COPY into a temp table + INSERT
SELECT ON CONFLICT, the one the archive uses) on the same rows.

Usage: python benchmarks/bench_archive.py [--events 20000] [--batch 500] [--compare-insert]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def real_ztf_events():
    from broker.sources import avro, ztf

    out = []
    for path in sorted((REPO / "tests/data/ztf").rglob("*.avro")):
        data = path.read_bytes()
        try:
            header = avro.read_header(data)
            if ztf.is_ztf_schema(header):
                out.extend((ev, data) for ev in ztf.decode(data, header))
        except Exception:  # noqa: BLE001 - a sample the decoder rejects is just skipped here
            continue
    if not out:
        raise SystemExit("no ZTF alert could be decoded from tests/data/ztf")
    return out


def make_items(n: int, raw_size: int):
    from broker.archive import ArchiveItem, KafkaMeta

    templates = real_ztf_events()
    items = []
    for i in range(n):
        ev, data = templates[i % len(templates)]
        ev = ev.model_copy(update={"id": f"{ev.id}:bench{i}"})
        raw = data[:raw_size] + os.urandom(max(0, raw_size - len(data)))
        items.append(ArchiveItem(ev, raw, KafkaMeta("ztf_20231012_programid1", i % 4, i)))
    return items


def insertmanyvalues_insert(conn, rows):
    """The alternative measured: SQLAlchemy insertmanyvalues, multi-row INSERT ... RETURNING."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from broker.archive.models import events

    stmt = pg_insert(events).on_conflict_do_nothing(index_elements=["id"]).returning(events.c.id)
    return list(conn.execute(stmt, rows).scalars())


def bench_store(url: str, store, items, batch: int) -> tuple[float, float]:
    import sqlalchemy as sa

    from broker.archive import Archive

    archive = Archive(url, store)
    with archive.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE events, raw_messages"))
    t0 = time.perf_counter()
    inserted = 0
    for i in range(0, len(items), batch):
        inserted += archive.write_batch(items[i : i + batch]).inserted
    dt = time.perf_counter() - t0
    assert inserted == len(items), (inserted, len(items))
    archive.close()
    mb = sum(len(it.raw) for it in items) / 1e6
    return len(items) / dt, mb / dt


def compare_insert(url: str, items, batch: int) -> None:
    import sqlalchemy as sa

    from broker.archive.raw import RawRef
    from broker.archive.rows import event_rows
    from broker.archive.store import _insert_rows

    engine = sa.create_engine(url)
    rows_batches = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        refs = [RawRef(sha256=f"{j:064x}", length=70_000, segment="x.seg", offset=0) for j in range(len(chunk))]
        rows_batches.append(event_rows(chunk, refs))
    for name, fn in (("insertmanyvalues", insertmanyvalues_insert), ("COPY+INSERT SELECT", _insert_rows)):
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE events"))
        t0 = time.perf_counter()
        n = 0
        for rows in rows_batches:
            with engine.begin() as conn:
                n += len(fn(conn, rows))
        dt = time.perf_counter() - t0
        print(f"  insert rows only, {name:20s}: {n / dt:8.0f} rows/s  ({n} rows)")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--raw-kb", type=int, default=70)
    parser.add_argument("--compare-insert", action="store_true")
    args = parser.parse_args()

    from broker.archive import (
        Archive, PostgresRawStore, SegmentFileStore, ensure_embedded_postgres, stop_embedded_postgres,
    )

    items = make_items(args.events, args.raw_kb * 1000)
    pgdir = Path(tempfile.mkdtemp(prefix="mma-pg-", dir="/tmp"))
    rawdir = Path(tempfile.mkdtemp(prefix="mma-raw-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(pgdir / "pg")
        Archive(url, SegmentFileStore(rawdir)).migrate()
        print(f"{args.events} events x {args.raw_kb} kB raw, batches of {args.batch}, PostgreSQL 16 (pgserver)")
        for name, store in (
            ("SegmentFileStore", SegmentFileStore(rawdir)),
            ("PostgresRawStore", PostgresRawStore()),
        ):
            rows_s, mb_s = bench_store(url, store, items, args.batch)
            print(f"  {name:18s}: {rows_s:8.0f} rows/s  {mb_s:7.1f} MB/s raw")
        if args.compare_insert:
            compare_insert(url, items, args.batch)
    finally:
        stop_embedded_postgres(pgdir / "pg")
        shutil.rmtree(pgdir, ignore_errors=True)
        shutil.rmtree(rawdir, ignore_errors=True)


if __name__ == "__main__":
    main()
