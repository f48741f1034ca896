"""Speed of ``mma-broker archive export`` / ``import`` / ``gc`` (broker/archive/export.py, gc.py).

Builds an archive in a fresh embedded PostgreSQL with the file raw store: the real
alerts and stage rows of tests/integration/test_archive_export.py (``populate``: GW
sky maps as 26,000 tiles, groups, cross-matches, follow-up results, filter decisions,
outbox) plus N ZTF Events (default 5,000) made from the real ZTF alerts of
tests/data/ztf with distinct ids, each with its own raw message: the real alert's
bytes (about 80 kB, mostly gzip cutouts) and 16 random bytes, so every message has its
own sha256. Archived in batches of 500 as the ingest stage does. Then it times: the export (all of it), the
import into an empty database, a second import (nothing new), the export of the copy
(and checks that every member equals the first export's), and a gc dry run. Prints
rows/s and MB/s of raw bytes, with the load average.

Usage: python benchmarks/bench_archive_export.py [--events 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()

    import sqlalchemy as sa

    from benchmarks.bench_archive import real_ztf_events
    from broker.archive import ArchiveItem, KafkaMeta
    from broker.archive import Archive, SegmentFileStore, ensure_embedded_postgres, stop_embedded_postgres
    from broker.archive.export import export_archive, import_archive, member_digests
    from broker.archive.gc import collect
    from tests.integration.test_archive_export import populate

    root = Path(tempfile.mkdtemp(prefix="mma-bx-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(root / "pg")
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "copy"'))
        url2 = sa.make_url(url).set(database="copy").render_as_string(hide_password=False)
        src = Archive(url, SegmentFileStore(root / "raw-a"))
        src.migrate()
        populate(src)
        templates = real_ztf_events()
        items = []
        for i in range(args.events):
            ev, data = templates[i % len(templates)]
            items.append(ArchiveItem(ev.model_copy(update={"id": f"{ev.id}:bench{i}"}), data + os.urandom(16),
                                     KafkaMeta("ztf_20231012_programid1", i % 4, i)))
        for i in range(0, len(items), 500):
            src.write_batch(items[i:i + 500])
        with src.engine.connect() as conn:
            n_events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
        print(f"archive: {n_events:,} events ({args.events:,} ZTF, {sum(len(it.raw) for it in items) / 1e6:,.0f} MB raw) + populate(); "
              f"load average at start {os.getloadavg()[0]:.2f}")

        def timed(what, fn):
            t0 = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - t0

        a = root / "a.zip"
        s, dt = timed("export", lambda: export_archive(src, a, progress=True, version="bench"))
        rows = sum(t.rows for t in s.tables)
        mb = s.raw_bytes / 1e6
        size = a.stat().st_size / 1e6
        print(f"export : {rows:,} rows + {s.raw_blobs:,} raw blobs ({mb:,.0f} MB) in {dt:.1f} s: "
              f"{rows / dt:,.0f} rows/s, {mb / dt:.0f} MB/s raw; file {size:,.0f} MB  (load {os.getloadavg()[0]:.2f})")
        dst = Archive(url2, SegmentFileStore(root / "raw-b"))
        s2, dt = timed("import", lambda: import_archive(dst, a, progress=True))
        print(f"import : {sum(t.inserted for t in s2.tables):,} rows, {s2.raw_stored:,} blobs in {dt:.1f} s: "
              f"{rows / dt:,.0f} rows/s, {mb / dt:.0f} MB/s raw  (load {os.getloadavg()[0]:.2f})")
        s3, dt = timed("import again", lambda: import_archive(dst, a, progress=True))
        print(f"again  : {sum(t.inserted for t in s3.tables):,} rows new, {s3.raw_stored} blobs stored, "
              f"in {dt:.1f} s  (load {os.getloadavg()[0]:.2f})")
        b = root / "b.zip"
        _, dt = timed("export copy", lambda: export_archive(dst, b, progress=True, version="bench"))
        same = member_digests(a) == member_digests(b)
        print(f"export of the copy in {dt:.1f} s; every member identical to the first export: {same}")
        r, dt = timed("gc", lambda: collect(src, grace_s=0, dry_run=True))
        print(f"gc dry run: {r.scanned:,} segments, {r.unreferenced} unreferenced, in {dt:.2f} s")
        src.close()
        dst.close()
        admin.dispose()
        if not same:
            raise SystemExit("the round trip changed the content")
    finally:
        stop_embedded_postgres(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
