"""``mma-broker archive``: export, import, gc (docs/operations.md#backups-and-restore).

Imports typer only at module level (``mma-broker --help`` stays light: the package
:mod:`broker.archive` pulls in SQLAlchemy, so the commands live here, not in it).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Back up, restore and clean the archive: export, import, gc.")


class By(str, Enum):
    """Which time of an Event ``--since``/``--until`` apply to."""

    t0 = "t0"
    ingested = "ingested"


def _time(value: str | None, option: str) -> datetime | None:
    from broker.errors import BrokerError
    from broker.text import one_line

    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, TypeError):
        raise BrokerError(f"{option} {one_line(repr(value), 80)}: expected an ISO 8601 date/time, e.g. 2023-03-07 "
                          "or 2023-03-07T15:44Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _settings():
    from broker.cli import settings

    return settings()


def _print_tables(title: str, rows: list[tuple], header: tuple) -> None:
    from broker.tables import Column, render

    print(title)
    if rows:
        columns = [Column(header[0])] + [Column(h, right=True) for h in header[1:-1]] + [Column(header[-1])]
        print(render(columns, [[str(c) for c in r] for r in rows]))


@app.command("export")
def export(
    file: Path = typer.Argument(..., help="The ZIP file to write (overwritten)."),
    since: Optional[str] = typer.Option(None, "--since", help="Events at/after this ISO time (default: the first)."),
    until: Optional[str] = typer.Option(None, "--until", help="Events before this ISO time (default: now on)."),
    by: By = typer.Option(By.t0, "--by", help="Which time: the Event's T0, or when it was archived (ingested: "
                          "consecutive periods cover every Event once, late alerts included)."),
    catalogs: bool = typer.Option(False, "--catalogs", help="Also the catalog tables (whole)."),
) -> None:
    """Write the Events of a period, and all that goes with them, to one file.

    With the Events go their raw bytes, localizations, groups, cross-matches, follow-up
    results and artifacts, filter decisions and outbox entries. The file is a ZIP with
    a manifest (schema revisions, counts, checksums): docs/operations.md.
    """
    from broker import __version__
    from broker.app import open_archive
    from broker.archive.export import export_archive
    from broker.errors import BrokerError

    since_t, until_t = _time(since, "--since"), _time(until, "--until")
    if since_t and until_t and until_t <= since_t:
        raise BrokerError("--until must be after --since")
    if file.is_dir():
        raise BrokerError(f"{file.name or str(file)} is a folder: give a file name")
    if not file.parent.is_dir():
        raise BrokerError(f"the folder to write {file.name} into does not exist")
    archive = open_archive(_settings(), read_only=True)
    try:
        s = export_archive(archive, file, since=since_t, until=until_t, by=by.value, catalogs=catalogs,
                           progress=sys.stderr.isatty(), version=__version__)
    finally:
        archive.close()
    for w in s.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _print_tables(f"exported to {file.name}: {sum(t.rows for t in s.tables):,} rows, {s.raw_blobs:,} raw blobs "
                  f"({s.raw_bytes:,} bytes), schema {', '.join(s.revisions)}",
                  [(t.name, f"{t.rows:,}", t.selection) for t in s.tables], ("table", "rows", "selection"))


@app.command("import")
def import_(file: Path = typer.Argument(..., help="A file written by `mma-broker archive export`.")) -> None:
    """Import an export file into the archive (idempotent).

    Rows already there are kept as they are: importing twice changes nothing. A file
    from a newer schema is refused. An empty database is created at the file's schema,
    filled, then upgraded.
    """
    from broker.app import open_archive
    from broker.archive.export import import_archive, read_manifest

    read_manifest(file)  # a wrong file is refused before the database is touched
    archive = open_archive(_settings(), migrate=False)
    try:
        s = import_archive(archive, file, progress=sys.stderr.isatty())
    finally:
        archive.close()
    _print_tables(f"imported {file.name}: {sum(t.inserted for t in s.tables):,} of "
                  f"{sum(t.rows for t in s.tables):,} rows new, {s.raw_stored:,} of {s.raw_blobs:,} raw blobs stored",
                  [(t.name, f"{t.rows:,}", f"{t.inserted:,}", t.selection) for t in s.tables],
                  ("table", "rows", "new", "selection"))


@app.command("gc")
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be removed."),
    grace_hours: Optional[float] = typer.Option(None, "--grace-hours", min=0.0,
                                                help="Keep unreferenced raw bytes and coincidence claims younger than this, h "
                                                     "(default [archive] gc_grace_hours, 168)."),
    raw_retention_days: Optional[float] = typer.Option(None, "--raw-retention-days", min=0.0,
                                                       help="Also remove raw bytes of Events archived longer ago "
                                                            "(default [archive] raw_retention_days: never)."),
) -> None:
    """Remove raw bytes no archived row refers to, and coincidence claims, after a grace period.

    Redelivered batches leave segment files no row refers to; dead letters' bytes are
    referenced from mma.dlq only (keep the grace period at least its retention). With
    raw retention, the raw bytes of Events archived longer ago go too.
    """
    from broker.app import open_archive
    from broker.archive.gc import collect

    s = _settings()
    grace = s.archive.gc_grace_hours if grace_hours is None else grace_hours
    retention = s.archive.raw_retention_days if raw_retention_days is None else raw_retention_days
    archive = open_archive(s, read_only=True)
    try:
        report = collect(archive, grace_s=grace * 3600.0, raw_retention_days=retention or None, dry_run=dry_run)
    finally:
        archive.close()
    verb = "would remove" if dry_run else "removed"
    for r in (report.halves.values() if report.halves else [report]):  # a routed raw store: one line per half
        what = "segment files" if r.store == "file" else "raw_messages rows"
        print(f"raw store ({r.store}): {r.scanned:,} {what}, {r.unreferenced:,} referenced by no row "
              f"({r.kept_young:,} younger than {grace:g} h, kept); {verb} {r.removed:,} ({r.removed_bytes:,} bytes)"
              + (f", {r.expired:,} of them past the raw retention of {retention:g} days" if retention else ""))
    print(f"coincidence claims: {report.claims:,} rows; {verb} {report.claims_removed:,} "
          f"older than {grace:g} h")
