"""Garbage collection of the raw store: ``mma-broker archive gc [--dry-run]``.

Both kinds of store are collected as below; with the default settings the raw store is
a :class:`~broker.archive.raw.RoutedRawStore` (notices' bytes in ``raw_messages``,
surveys' and dead letters' in segment files), and both halves are collected in one run.

What is garbage. The file raw store (:class:`~broker.archive.raw.SegmentFileStore`)
writes one segment file per batch *before* the batch's transaction; a batch delivered
again after a crash, or whose transaction failed, writes a new segment, while the rows
keep the refs of the first (``ON CONFLICT DO NOTHING``). Such a segment is referenced by
no row: garbage, never corruption. The PostgreSQL raw store (``raw_messages``) writes
in the rows' transaction and shares bytes by sha256, so it makes no such garbage. In
both stores the bytes of dead letters (``mma.dlq``, read back by ``mma-broker dlq
raw``) are referenced by Kafka messages only, which is why unreferenced bytes are kept
for a grace period: set it at least to the retention of ``mma.dlq`` (default 7 days,
as Kafka's default retention).

A segment (or ``raw_messages`` row) is removed when no row of any table that points
into the raw store (:data:`broker.archive.export.RAW_REFS`: ``events``,
``followup_artifacts``) refers to it and it is older than the grace period. With raw
retention configured (``[archive] raw_retention_days``), a segment (row) is also
removed when every Event referring to it was archived (``ingested_at``) more than that
many days ago and no follow-up artifact refers to it: the Events stay in the archive,
their raw bytes go (``events show --raw`` then says they are missing). Default: raw
bytes are kept forever.

Safety against a concurrent writer. A writer that wrote a segment and has not committed
yet touches the segment's modification time at the start of every transaction attempt
(:meth:`broker.archive.Archive.write_batch`), so a segment in use is younger than the
grace period. The collector lists old unreferenced segments, then *renames* each one
(``.gc``) before looking at its age again: a writer that touched it before the rename
made it young (the collector renames it back); a writer that comes after the rename
finds it gone and writes its blobs again into a new segment. Only then is the renamed
file deleted. A ``.gc`` file left by an interrupted collector is handled by the next
run the same way. The one case this cannot cover is a single transaction attempt that
lasts longer than the grace period.

Coincidence claims. The same run deletes the rows of ``coincidence_claims`` (migration
0010, :mod:`broker.enrich.claims`) claimed longer ago than the grace period: a claim
matters only while a batch that made it can be replayed or the other lane can find the
same pair (seconds to hours), and the table would otherwise grow by one row per
coincidence version forever. The coincidences themselves (``coincidences``, migration
0013, :mod:`broker.enrich.coincidence_store`) are archive data, not bookkeeping: gc
never deletes them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

GC_SUFFIX = ".gc"
"""A segment being collected: ``<name>.seg.gc``."""


@dataclass
class GcReport:
    """What :func:`collect` found and removed (or would remove, with ``dry_run``).

    Attributes
    ----------
    store : str
        ``file``, ``postgres``, or ``file+postgres`` (a
        :class:`~broker.archive.raw.RoutedRawStore`: the counts are the sums of both
        halves, each half's report in ``halves``).
    scanned : int
        Segment files (or ``raw_messages`` rows) looked at.
    unreferenced : int
        Of those, referenced by no row (any age).
    removed, removed_bytes : int
        Segments (rows) removed, and their size in bytes: unreferenced and older than
        the grace period, or past raw retention.
    expired : int
        Of ``removed``, those removed because of raw retention (still referenced).
    kept_young : int
        Unreferenced but younger than the grace period (kept).
    claims, claims_removed : int
        Rows of ``coincidence_claims`` (:mod:`broker.enrich.claims`) before the run, and
        those removed (with ``dry_run``: that would be) as older than the grace period.
    dry_run : bool
    """

    store: str
    scanned: int = 0
    unreferenced: int = 0
    removed: int = 0
    removed_bytes: int = 0
    expired: int = 0
    kept_young: int = 0
    claims: int = 0
    claims_removed: int = 0
    dry_run: bool = False
    names: list[str] = field(default_factory=list, repr=False)
    halves: dict[str, "GcReport"] = field(default_factory=dict, repr=False)


def _ref_tables(conn: sa.Connection) -> dict[str, tuple[str, str, str, str]]:
    from broker.archive.export import RAW_REFS

    present = set(conn.execute(sa.text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
    return {t: c for t, c in RAW_REFS.items() if t in present}


def collect(archive: Any, *, grace_s: float = 7 * 86400.0, raw_retention_days: float | None = None,
            dry_run: bool = False, now: float | None = None) -> GcReport:
    """Remove raw bytes no row refers to (and, with retention, bytes of old Events), and
    coincidence claims older than the grace period.

    Parameters
    ----------
    archive : broker.archive.Archive
        Its raw store and database.
    grace_s : float
        Unreferenced bytes younger than this (file modification time, or
        ``raw_messages.stored_at``) are kept, s. Must cover the retention of ``mma.dlq``
        (dead letters' bytes are referenced from Kafka only) and the longest
        transaction attempt of a writer. Coincidence claims (``claimed_at``) younger
        than this are kept too (:func:`broker.enrich.claims.expire_claims`).
    raw_retention_days : float or None
        Also remove bytes whose Events were all archived more than this many days ago
        (and that no artifact refers to). None: keep them forever.
    dry_run : bool
        Only count.
    now : float or None
        Unix time, s (tests); default the clock.

    Returns
    -------
    GcReport

    Raises
    ------
    ValueError
        ``grace_s`` negative or ``raw_retention_days`` not positive.
    OSError
        A segment cannot be renamed or removed (permissions).
    """
    if grace_s < 0:
        raise ValueError("the grace period must be >= 0 s")
    if raw_retention_days is not None and raw_retention_days <= 0:
        raise ValueError("raw_retention_days must be > 0")
    now = time.time() if now is None else now
    store = archive.raw_store
    if hasattr(store, "store_for"):  # a RoutedRawStore: both halves, one report
        files = _collect_files(archive, grace_s, raw_retention_days, dry_run, now)
        rows = _collect_postgres(archive, grace_s, raw_retention_days, dry_run, now)
        report = GcReport(store="file+postgres", dry_run=dry_run, names=files.names + rows.names)
        for f in ("scanned", "unreferenced", "removed", "removed_bytes", "expired", "kept_young"):
            setattr(report, f, getattr(files, f) + getattr(rows, f))
        report.halves = {"file": files, "postgres": rows}
    elif store.transactional:
        report = _collect_postgres(archive, grace_s, raw_retention_days, dry_run, now)
    else:
        report = _collect_files(archive, grace_s, raw_retention_days, dry_run, now)
    from broker.enrich.claims import expire_claims

    report.claims, report.claims_removed = expire_claims(archive.engine, now - grace_s, dry_run=dry_run)
    log.info("coincidence claims gc: %d rows, %d %s", report.claims, report.claims_removed,
             "would be removed" if dry_run else "removed")
    return report


def _segments(root: Path) -> list[tuple[str, Path]]:
    """(segment name as rows store it, path) of every segment and ``.gc`` file under ``root``."""
    out = []
    if not root.is_dir():
        return out
    for day in sorted(os.scandir(root), key=lambda e: e.name):
        if not day.is_dir(follow_symlinks=False):
            continue
        for f in sorted(os.scandir(day.path), key=lambda e: e.name):
            if f.name.endswith(".seg"):
                out.append((f"{day.name}/{f.name}", Path(f.path)))
            elif f.name.endswith(".seg" + GC_SUFFIX):
                out.append((f"{day.name}/{f.name[:-len(GC_SUFFIX)]}", Path(f.path)))
    return out


def _collect_files(archive: Any, grace_s: float, retention_days: float | None, dry_run: bool,
                   now: float) -> GcReport:
    root = Path(archive.raw_store.directory)
    report = GcReport(store="file", dry_run=dry_run)
    files = _segments(root)  # listed before the references are read: see the module docstring
    report.scanned = len(files)
    with archive.engine.connect() as conn:
        refs = _ref_tables(conn)
        referenced: set[str] = set()
        for t, (_, _, seg, _) in refs.items():
            referenced.update(conn.execute(sa.text(f"SELECT DISTINCT {seg} FROM {t} WHERE {seg} IS NOT NULL"))
                              .scalars())
        expired: set[str] = set()
        if retention_days is not None and "events" in refs:
            cut = now - retention_days * 86400.0
            expired = set(conn.execute(sa.text(
                "SELECT raw_segment FROM events WHERE raw_segment IS NOT NULL GROUP BY raw_segment "
                "HAVING max(ingested_at) < to_timestamp(:cut)"), {"cut": cut}).scalars())
            for t, (_, _, seg, _) in refs.items():
                if t != "events":
                    expired -= set(conn.execute(sa.text(f"SELECT DISTINCT {seg} FROM {t} WHERE {seg} IS NOT NULL"))
                                   .scalars())
    for name, path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        unref = name not in referenced
        report.unreferenced += unref
        if unref and now - st.st_mtime < grace_s:
            report.kept_young += 1
            if path.name.endswith(GC_SUFFIX):  # an interrupted run's, made young again: put it back
                _restore(path)
            continue
        if not unref and name not in expired:
            if path.name.endswith(GC_SUFFIX):
                _restore(path)
            continue
        if dry_run:
            report.removed += 1
            report.removed_bytes += st.st_size
            report.expired += not unref
            report.names.append(name)
            continue
        size = _remove(path, grace_s if unref else None, now)
        if size is not None:
            report.removed += 1
            report.removed_bytes += size
            report.expired += not unref
            report.names.append(name)
    if not dry_run:
        for day in root.iterdir() if root.is_dir() else ():
            try:
                if day.is_dir() and now - day.stat().st_mtime > grace_s:
                    day.rmdir()  # only when empty
            except OSError:
                pass
    log.info("raw store gc: %s", report)
    return report


def _restore(path: Path) -> None:
    try:
        os.rename(path, path.with_name(path.name[:-len(GC_SUFFIX)]))
    except FileNotFoundError:
        pass


def _remove(path: Path, grace_s: float | None, now: float) -> int | None:
    """Rename ``path`` to ``.gc``, check its age again (a writer may have touched it just
    before), then delete it; return its size, or None if it was kept."""
    gc_path = path if path.name.endswith(GC_SUFFIX) else path.with_name(path.name + GC_SUFFIX)
    if gc_path != path:
        try:
            os.rename(path, gc_path)
        except FileNotFoundError:
            return None
    st = gc_path.stat()
    if grace_s is not None and now - st.st_mtime < grace_s:
        _restore(gc_path)
        return None
    os.unlink(gc_path)
    return st.st_size


def _collect_postgres(archive: Any, grace_s: float, retention_days: float | None, dry_run: bool,
                      now: float) -> GcReport:
    report = GcReport(store="postgres", dry_run=dry_run)
    with archive.engine.connect() as conn:
        refs = _ref_tables(conn)
        unref = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.{h} = m.sha256)"
                             for t, (h, _, _, _) in refs.items()) or "true"
        report.scanned = int(conn.execute(sa.text("SELECT count(*) FROM raw_messages")).scalar_one())
        report.unreferenced = int(conn.execute(sa.text(f"SELECT count(*) FROM raw_messages m WHERE {unref}"))
                                  .scalar_one())
        doomed = f"({unref}) AND m.stored_at < to_timestamp(:old)"
        params: dict[str, Any] = {"old": now - grace_s}
        if retention_days is not None and "events" in refs:
            others = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.{h} = m.sha256)"
                                  for t, (h, _, _, _) in refs.items() if t != "events") or "true"
            expired = (f"EXISTS (SELECT 1 FROM events e WHERE e.raw_sha256 = m.sha256) AND {others} AND NOT EXISTS "
                       "(SELECT 1 FROM events e WHERE e.raw_sha256 = m.sha256 AND e.ingested_at >= to_timestamp(:cut))")
            params["cut"] = now - retention_days * 86400.0
            report.expired = int(conn.execute(sa.text(f"SELECT count(*) FROM raw_messages m WHERE {expired}"),
                                              params).scalar_one())
            doomed = f"({doomed}) OR ({expired})"
        n, size = conn.execute(sa.text(f"SELECT count(*), coalesce(sum(length(data)), 0) FROM raw_messages m "
                                       f"WHERE {doomed}"), params).one()
        report.kept_young = report.unreferenced - (int(n) - report.expired)
        if dry_run:
            report.removed, report.removed_bytes = int(n), int(size)
        else:
            # the rows' writers insert raw bytes and rows in one transaction: no window to guard
            n, size = conn.execute(sa.text(f"WITH d AS (DELETE FROM raw_messages m WHERE {doomed} "
                                           "RETURNING length(data) AS n) SELECT count(*), coalesce(sum(n), 0) FROM d"),
                                   params).one()
            conn.commit()
            report.removed, report.removed_bytes = int(n), int(size)
    log.info("raw store gc: %s", report)
    return report
