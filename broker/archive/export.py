"""Export and import of the archive: one self-describing ZIP file per period.

``mma-broker archive export --since T --until T FILE`` writes everything the archive
holds about the Events of a period; ``mma-broker archive import FILE`` puts it into
another (or the same) archive. The file is a ZIP (ZIP64, so no size limit):

``manifest.json``
    Format name and version, the mma-broker version that wrote it, the archive's
    Alembic revisions (``alembic_version``), the selection (period, which time), and
    per table its member, columns, primary key, how its rows were selected, the
    number of rows and the sha256 of the member; the number and total size of the raw
    blobs. Written last, read first (the ZIP central directory gives random access).
``tables/<table>.ndjson``
    One JSON object per line per row, as PostgreSQL renders it (``row_to_json``:
    timestamps in ISO 8601 UTC, ``bytea`` as ``\\x`` hex, ``jsonb`` as JSON, arrays as
    JSON arrays, ranges as ``[lo,hi)``, ``float8`` in the shortest form that reads back
    to the same double), ordered by the primary key, so the same rows give the same
    bytes. Import reads them back with ``json_populate_record``: the database converts
    both ways, so every type round-trips exactly.
``raw/<sha256>``
    The raw upstream bytes of every exported Event and the follow-up artifacts (plots,
    user sky maps), one member each, named by their sha256 (checked on import).

What is selected. An Event is in the period when its T0 (``events.time``, default) or
its ingestion time (``--by ingested``) is in ``[since, until)``. With it go the rows
that name it (any table with an ``event_id`` column: localization links, positions,
group memberships, cross-matches, follow-up results, filter decisions), the event
groups it belongs to, the localizations (and their tiles) these rows name, the outbox
entries about it or its groups (with their ``outbox_audit`` decisions), the coincidence claims of versions computed from it, the coincidences (``coincidences``, every
version computed from it or naming it as a member), the follow-up artifacts its results refer to
(``mma-broker://artifact/sha256/<hex>``) and the filter re-runs its decisions belong
to. Catalogs (reference data loaded from files, often millions of rows) only with
``--catalogs``. Not exported: ``alembic_version`` (in the manifest), ``raw_messages``
(the PostgreSQL raw store: its bytes travel as ``raw/`` members), ``followup_cache``
(a cache, rebuilt on demand), ``web_accounts`` and ``web_api_tokens`` (the logins of
``mma-broker serve``: password and token hashes stay with their archive). A table this module does not know and that has no
``event_id`` column (a plugin's) is exported whole, with a warning.

Where raw bytes lie in the source archive (``raw_segment``, ``raw_offset``: a segment
file and offset, or NULL for the PostgreSQL raw store) is not content: it is left out
of the file, and import fills it with where the target's raw store put the bytes. So
an archive exported, imported elsewhere and exported again gives the same members. With
a routed raw store (:class:`~broker.archive.raw.RoutedRawStore`, the default settings:
notices' bytes in PostgreSQL, surveys' in segment files) export reads each ref from the
half it names, and import stores the blobs it does not already hold (in either half) in
the segment files, the rule for bytes that come without their Event's source.

Import is idempotent: rows go in with ``INSERT ... ON CONFLICT DO NOTHING`` (an
existing row is never changed), raw bytes already referenced in the target are not
stored again, identity sequences are moved past the imported ids. A file whose
revisions this mma-broker does not know (written by a newer one) is refused before
anything is written. An uninitialized target is brought to the file's revisions,
filled, then upgraded to the latest ones (``Archive.migrate``); an initialized one must
be at the file's revisions.

Both directions stream: rows through server-side cursors and ``COPY``, chunks of
:data:`CHUNK_ROWS` rows per import transaction, raw blobs one at a time; memory does
not grow with the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from broker.errors import BrokerError

log = logging.getLogger(__name__)

FORMAT = "mma-broker-archive-export"
"""``manifest.json`` ``format``: what the file is."""
FORMAT_VERSION = 1
"""``manifest.json`` ``format_version``: the layout of the file (not the schema)."""
MANIFEST = "manifest.json"
CHUNK_ROWS = 20_000
"""Rows per import transaction (idempotent: an interrupted import is run again)."""
RAW_CHUNK_BYTES = 64 * 2**20
"""Raw bytes per raw-store write on import (one segment file each)."""

EXCLUDED = {
    "alembic_version": "the schema revisions are in the manifest",
    "raw_messages": "the PostgreSQL raw store: its bytes are the raw/ members",
    "followup_cache": "a cache of analysis steps, rebuilt on demand",
    "web_accounts": "logins of mma-broker serve (password hashes) stay with their archive",
    "web_api_tokens": "API tokens of mma-broker serve (their hashes) stay with their archive",
}
"""Tables never exported, with the reason recorded in the manifest."""

CATALOG_TABLES = ("catalogs", "catalog_sources")
"""Reference tables exported whole with ``--catalogs`` only."""

RAW_REFS = {
    "events": ("raw_sha256", "raw_length", "raw_segment", "raw_offset"),
    "followup_artifacts": ("sha256", "length", "raw_segment", "raw_offset"),
}
"""Tables that point into the raw store: (sha256, length, segment, offset) columns.
The last two are the location in the source archive, not exported."""


class ExportError(BrokerError):
    """The file cannot be written, read or imported (one line, says what to do)."""


@dataclass
class TableSummary:
    """What happened to one table. ``rows``: in the file; ``inserted``: new in the target."""

    name: str
    rows: int = 0
    inserted: int = 0
    selection: str = ""


@dataclass
class Summary:
    """Result of :func:`export_archive` or :func:`import_archive`."""

    tables: list[TableSummary] = field(default_factory=list)
    raw_blobs: int = 0
    raw_bytes: int = 0
    raw_stored: int = 0
    revisions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ helpers
def _q(name: str) -> str:
    """Quote an SQL identifier (table or column names such as ``row`` or ``offset``)."""
    return '"' + name.replace('"', '""') + '"'


def _revisions(conn: sa.Connection) -> list[str]:
    if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return []
    return sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def _tables(conn: sa.Connection) -> list[str]:
    return sorted(conn.execute(sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')")).scalars())


def _columns(conn: sa.Connection, table: str) -> list[str]:
    return list(conn.execute(sa.text(
        "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum"), {"t": _q(table)}).scalars())


def _primary_key(conn: sa.Connection, table: str) -> list[str]:
    return list(conn.execute(sa.text(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary ORDER BY k.n"), {"t": _q(table)}).scalars())


def _fk_order(conn: sa.Connection, tables: list[str]) -> list[str]:
    """``tables`` with every table after the tables its foreign keys point to."""
    deps: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in conn.execute(sa.text(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'")):
        child, parent = child.strip('"'), parent.strip('"')
        if child in deps and parent in deps and child != parent:
            deps[child].add(parent)
    out: list[str] = []
    done: set[str] = set()

    def visit(t: str, path: tuple[str, ...] = ()) -> None:
        if t in done or t in path:
            return
        for p in sorted(deps[t]):
            visit(p, path + (t,))
        done.add(t)
        out.append(t)

    for t in sorted(tables):
        visit(t)
    return out


def _window(by: str, since: datetime | None, until: datetime | None) -> tuple[str, dict[str, Any]]:
    col = {"t0": "time", "ingested": "ingested_at"}[by]
    where, params = ["true"], {}
    if since is not None:
        where.append(f"{col} >= :since")
        params["since"] = since
    if until is not None:
        where.append(f"{col} < :until")
        params["until"] = until
    return " AND ".join(where), params


def _selections(conn: sa.Connection, present: set[str]) -> dict[str, str]:
    """WHERE clauses (over the table's own columns) selecting the rows that go with the
    Events in the temporary table ``x_events``; built after ``x_events`` is filled."""
    sel: dict[str, str] = {}
    ev = "event_id IN (SELECT id FROM x_events)"
    groups = "SELECT key FROM x_groups"
    conn.execute(sa.text("CREATE TEMP TABLE x_groups (key text PRIMARY KEY) ON COMMIT DROP"))
    if "event_group_members" in present:
        conn.execute(sa.text(f"INSERT INTO x_groups SELECT DISTINCT group_key FROM event_group_members WHERE {ev}"))
    conn.execute(sa.text("CREATE TEMP TABLE x_locs (id text PRIMARY KEY) ON COMMIT DROP"))
    sources = [("event_localizations", "localization_id", ev), ("event_group_members", "localization_id", ev),
               ("event_crossmatches", "localization_id", ev),
               ("event_groups", "best_localization_id", f"key IN ({groups})")]
    for table, col, where in sources:
        if table in present:
            conn.execute(sa.text(f"INSERT INTO x_locs SELECT DISTINCT {col} FROM {table} WHERE {where} "
                                 f"AND {col} IS NOT NULL ON CONFLICT DO NOTHING"))
    for t in ("x_events", "x_groups", "x_locs"):
        conn.execute(sa.text(f"ANALYZE {t}"))
    sel["events"] = "id IN (SELECT id FROM x_events)"
    sel["event_groups"] = f"key IN ({groups})"
    sel["localizations"] = "id IN (SELECT id FROM x_locs)"
    sel["localization_tiles"] = "localization_id IN (SELECT id FROM x_locs)"
    sel["outbox"] = f"source_event_id IN (SELECT id FROM x_events) OR group_key IN ({groups})"
    sel["outbox_audit"] = f"outbox_id IN (SELECT id FROM outbox WHERE {sel['outbox']})"  # decisions on them
    sel["coincidence_claims"] = "computed_from IN (SELECT id FROM x_events)"  # versions computed from them
    # the coincidence versions computed from them or naming them as a member (migration 0013)
    sel["coincidences"] = ("computed_from IN (SELECT id FROM x_events) OR trigger_event_id IN (SELECT id FROM x_events) "
                           "OR other_event_id IN (SELECT id FROM x_events)")
    if "followup_results" in present:
        # the artifacts the period's results refer to (followup.store.artifact_ref), read out of the documents
        conn.execute(sa.text(
            "CREATE TEMP TABLE x_artifacts ON COMMIT DROP AS SELECT DISTINCT m[1] AS sha256 FROM followup_results r, "
            "regexp_matches(r.document::text, 'mma-broker://artifact/sha256/([0-9a-f]{64})', 'g') m "
            f"WHERE r.{ev}"))
        sel["followup_artifacts"] = "sha256 IN (SELECT sha256 FROM x_artifacts)"
    if "filter_decisions" in present:
        sel["filter_runs"] = f"id IN (SELECT DISTINCT run FROM filter_decisions WHERE {ev})"
    return sel


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False), DownloadColumn


# ------------------------------------------------------------------ export
def export_archive(archive: Any, path: Path, *, since: datetime | None = None, until: datetime | None = None,
                   by: str = "t0", catalogs: bool = False, progress: bool = True,
                   version: str = "") -> Summary:
    """Write the Events of a period, with everything that goes with them, to ``path``.

    Parameters
    ----------
    archive : broker.archive.Archive
        The source: its engine and raw store.
    path : Path
        The ZIP file to write. Written as ``<path>.partial`` and renamed when complete,
        so an interrupted export never leaves a file that looks whole. Overwritten.
    since, until : datetime or None
        The period, ``since <= t < until`` (aware datetimes); None: unbounded.
    by : {"t0", "ingested"}
        Which time ``t`` is: the Event time T0 (``events.time``) or the time the
        broker archived it (``events.ingested_at``; consecutive periods of it cover
        every row exactly once, whatever the T0 of late alerts).
    catalogs : bool
        Also export the catalog tables (whole).
    progress : bool
        Show a rich progress bar on stderr.
    version : str
        mma-broker version recorded in the manifest.

    Returns
    -------
    Summary
        Rows per table and raw blobs written.

    Raises
    ------
    ExportError
        The archive is not initialized, or ``by`` is unknown.
    broker.archive.RawStoreError
        Raw bytes of a selected row are missing or corrupt (the export stops: a backup
        without them would not restore).
    OSError
        The file cannot be written.
    """
    if by not in ("t0", "ingested"):
        raise ExportError(f"--by must be t0 or ingested, not {by!r}")
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    summary = Summary()
    bar, _ = _progress(progress)
    # one snapshot of every table: a running broker may write meanwhile
    with archive.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, bar:
        conn.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
        conn.execute(sa.text("SET LOCAL extra_float_digits = 1"))  # shortest exact float8 text
        revisions = _revisions(conn)
        if not revisions:
            raise ExportError("the archive is not initialized (no alembic_version): nothing to export")
        summary.revisions = revisions
        present = set(_tables(conn))
        where, params = _window(by, since, until)
        conn.execute(sa.text("CREATE TEMP TABLE x_events (id text PRIMARY KEY) ON COMMIT DROP"))
        conn.execute(sa.text(f"INSERT INTO x_events SELECT id FROM events WHERE {where}"), params)
        selections = _selections(conn, present)
        plan: list[tuple[str, str, str]] = []  # (table, where, how)
        excluded = dict(EXCLUDED)
        for t in _fk_order(conn, sorted(present - set(EXCLUDED))):
            if t in CATALOG_TABLES:
                if catalogs:
                    plan.append((t, "true", "all (--catalogs)"))
                else:
                    excluded[t] = "reference data; exported with --catalogs"
            elif t in selections:
                plan.append((t, selections[t], "period"))
            elif "event_id" in _columns(conn, t):
                plan.append((t, "event_id IN (SELECT id FROM x_events)", "period"))
            else:
                plan.append((t, "true", "all (table unknown to the export)"))
                summary.warnings.append(f"table {t} is not known to the export and has no event_id: exported whole")
        counts = {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {_q(t)} WHERE {w}")).scalar_one())
                  for t, w, _ in plan}
        rows_task = bar.add_task("export: rows", total=sum(counts.values()))
        manifest_tables = []
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6,
                             allowZip64=True) as zf:
            for table, where_t, how in plan:
                cols = _columns(conn, table)
                loc = RAW_REFS.get(table, ())[2:]
                cols = [c for c in cols if c not in loc]
                pk = _primary_key(conn, table) or cols
                member = f"tables/{table}.ndjson"
                digest = hashlib.sha256()
                n = 0
                sql = (f"SELECT row_to_json(x)::text FROM (SELECT {', '.join(_q(c) for c in cols)} FROM {_q(table)} "
                       f"WHERE {where_t}) x ORDER BY {', '.join('x.' + _q(c) for c in pk)}")
                with zf.open(member, "w", force_zip64=True) as out, _named_cursor(conn) as cur:
                    cur.execute(sql)
                    for (line,) in cur:
                        data = line.encode() + b"\n"
                        out.write(data)
                        digest.update(data)
                        n += 1
                        if n % 1000 == 0:
                            bar.advance(rows_task, 1000)
                bar.advance(rows_task, n % 1000)
                manifest_tables.append({"name": table, "member": member, "columns": cols, "primary_key": pk,
                                        "selection": how, "rows": n, "sha256": digest.hexdigest()})
                summary.tables.append(TableSummary(table, rows=n, selection=how))
            raw_n, raw_bytes = _export_raw(conn, archive, zf, plan, bar)
            summary.raw_blobs, summary.raw_bytes = raw_n, raw_bytes
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "mma_broker_version": version,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "schema_revisions": revisions,
                "selection": {"by": by, "since": since.isoformat() if since else None,
                              "until": until.isoformat() if until else None, "catalogs": catalogs},
                "tables": manifest_tables,
                "raw": {"blobs": raw_n, "bytes": raw_bytes, "prefix": "raw/",
                        "note": "member name = sha256 of its bytes"},
                "excluded": excluded,
                "raw_location_columns": {t: list(c[2:]) for t, c in RAW_REFS.items()},
            }
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        conn.rollback()  # read only: the temporary tables go with it
    os.replace(partial, path)
    for w in summary.warnings:
        log.warning("%s", w)
    return summary


class _named_cursor:
    """A psycopg server-side cursor on the SQLAlchemy connection's DBAPI connection,
    inside its open transaction: rows arrive in pages of 2,000, never all at once."""

    def __init__(self, conn: sa.Connection) -> None:
        self.dbapi = conn.connection.driver_connection
        self.cur = None

    def __enter__(self):
        import uuid

        self.cur = self.dbapi.cursor(name=f"x_{uuid.uuid4().hex[:12]}")
        self.cur.itersize = 2000
        return self.cur

    def __exit__(self, *exc: object) -> None:
        self.cur.close()


def _export_raw(conn: sa.Connection, archive: Any, zf: zipfile.ZipFile, plan, bar) -> tuple[int, int]:
    """Write ``raw/<sha256>`` for every raw ref of the exported rows; return (blobs, bytes)."""
    from broker.archive.raw import RawRef

    parts = []
    for table, where_t, _ in plan:
        if table in RAW_REFS:
            h, ln, seg, off = RAW_REFS[table]
            parts.append(f"SELECT {h} AS h, {ln} AS ln, {seg} AS seg, {off} AS off FROM {_q(table)} WHERE {where_t}")
    if not parts:
        return 0, 0
    union = " UNION ALL ".join(parts)
    total = conn.execute(sa.text(f"SELECT count(DISTINCT h), coalesce(sum(ln), 0) FROM "
                                 f"(SELECT DISTINCT ON (h) h, ln FROM ({union}) u ORDER BY h) d")).one()
    task = bar.add_task("export: raw bytes", total=int(total[1]))
    store = archive.raw_store
    n = size = 0
    # a second connection reads the PostgreSQL raw store while the cursor pages through refs
    reader = archive.engine.connect() if store.transactional else None
    try:
        with _named_cursor(conn) as cur:
            cur.execute(f"SELECT DISTINCT ON (h) h, ln, seg, off FROM ({union}) u ORDER BY h, seg NULLS LAST")
            for h, ln, seg, off in cur:
                data = store.get(RawRef(sha256=h, length=int(ln), segment=seg, offset=off), reader)
                zf.writestr(zipfile.ZipInfo(f"raw/{h}", date_time=(1980, 1, 1, 0, 0, 0)), data,
                            compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
                n += 1
                size += len(data)
                bar.advance(task, len(data))
    finally:
        if reader is not None:
            reader.close()
    return n, size


# ------------------------------------------------------------------ import
def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an export file, checked for format and version.

    Raises
    ------
    ExportError
        Not a ZIP, no manifest, another format, or a newer format version.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
    except FileNotFoundError:
        raise ExportError(f"no such file: {Path(path).name}") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ExportError(f"{Path(path).name} is not an archive export ({type(exc).__name__}: "
                          f"{str(exc)[:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{Path(path).name} is not an archive export (manifest format is not {FORMAT!r})")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise ExportError(f"{Path(path).name} has format version {manifest.get('format_version')!r}; this "
                          f"mma-broker reads up to {FORMAT_VERSION}: upgrade mma-broker to import it")
    return manifest


def check_revisions(file_revisions: list[str], known: set[str], name: str, heads: list[str] | None = None) -> None:
    """Refuse a file whose schema revisions this mma-broker does not know.

    Parameters
    ----------
    file_revisions : list of str
        The manifest's ``schema_revisions``.
    known : set of str
        Every revision of this mma-broker's version locations.
    name : str
        The file's name, for the message.
    heads : list of str, optional
        The newest revisions known, named in the message.

    Raises
    ------
    ExportError
        Naming the unknown revisions, the newest known, and what to do.
    """
    unknown = sorted(set(file_revisions) - known)
    if unknown:
        newest = f" (the newest it knows: {', '.join(sorted(heads))})" if heads else ""
        raise ExportError(f"{name} was written at schema revision {', '.join(unknown)}, newer than this "
                          f"mma-broker knows{newest}: upgrade mma-broker (or install the plugin that adds it) "
                          "and import again")


def import_archive(archive: Any, path: Path, *, progress: bool = True,
                   migrate: Callable[[], None] | None = None) -> Summary:
    """Import an export file into ``archive``, idempotently.

    Parameters
    ----------
    archive : broker.archive.Archive
        The target; its raw store receives the raw bytes.
    path : Path
        A file written by :func:`export_archive`.
    progress : bool
        Show a rich progress bar on stderr.
    migrate : callable or None
        Brings the target to the latest revisions after the import (default
        ``archive.migrate``).

    Returns
    -------
    Summary
        Per table the rows in the file and the rows inserted (0 on a second import).

    Raises
    ------
    ExportError
        The file is not an export, is from a newer schema, is corrupt (a member's
        sha256 differs from the manifest, a raw blob's from its name), or the target
        is initialized at other revisions than the file.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    from broker.archive.store import alembic_config

    path = Path(path)
    manifest = read_manifest(path)
    file_revs = sorted(manifest.get("schema_revisions") or [])
    script = ScriptDirectory.from_config(alembic_config())
    known = {r.revision for r in script.walk_revisions()}
    check_revisions(file_revs, known, path.name, list(script.get_heads()))
    with archive.engine.connect() as conn:
        target = _revisions(conn)
        conn.commit()
    if target and target != file_revs:
        raise ExportError(
            f"the archive is at schema revision {', '.join(target)} and {path.name} at {', '.join(file_revs)}: "
            "import into an empty database (it is created at the file's revision, filled, then upgraded), "
            "or into an archive at the file's revision")
    if not target:
        cfg = alembic_config()
        with archive.engine.connect() as conn, conn.begin():
            cfg.attributes["connection"] = conn
            for rev in file_revs:
                command.upgrade(cfg, rev)
    summary = Summary(revisions=file_revs)
    bar, _ = _progress(progress)
    with zipfile.ZipFile(path) as zf, bar, archive.engine.connect() as conn:
        names = set(zf.namelist())
        for t in manifest["tables"]:
            if t["member"] not in names:
                raise ExportError(f"{path.name} lacks {t['member']} (the manifest lists it): the file is incomplete")
            _verify_member(zf, t["member"], t["sha256"], path.name)
        raw_members = sorted(n for n in names if n.startswith("raw/"))
        if len(raw_members) != int(manifest.get("raw", {}).get("blobs", 0)):
            raise ExportError(f"{path.name} holds {len(raw_members)} raw blobs, the manifest says "
                              f"{manifest.get('raw', {}).get('blobs')}: the file is incomplete")
        present = set(_tables(conn))
        for t in manifest["tables"]:
            if t["name"] not in present:
                raise ExportError(f"table {t['name']} of {path.name} is not in the archive at revision "
                                  f"{', '.join(file_revs)}: install the plugin whose migrations create it")
            missing = [c for c in t["columns"] if c not in _columns(conn, t["name"])]
            if missing:
                raise ExportError(f"table {t['name']} of {path.name} has column(s) {', '.join(missing)} that the "
                                  "archive's table lacks")
        conn.commit()
        conn.execute(sa.text("SET TimeZone = 'UTC'"))
        conn.execute(sa.text("CREATE TEMP TABLE imp_raw (sha256 text PRIMARY KEY, seg text, off bigint)"))
        conn.execute(sa.text("CREATE TEMP TABLE imp_lines (j text)"))
        conn.commit()
        summary.raw_blobs, summary.raw_bytes, summary.raw_stored = _import_raw(
            conn, archive, zf, raw_members, int(manifest.get("raw", {}).get("bytes", 0)), bar, path.name)
        task = bar.add_task("import: rows", total=sum(int(t["rows"]) for t in manifest["tables"]))
        for t in manifest["tables"]:
            name = t["name"]
            inserted = _import_table(conn, zf, t, lambda k: bar.advance(task, k))
            summary.tables.append(TableSummary(name, rows=int(t["rows"]), inserted=inserted,
                                               selection=t.get("selection", "")))
            _advance_sequences(conn, name)
        conn.execute(sa.text("DROP TABLE imp_raw, imp_lines"))
        conn.commit()
    (migrate or archive.migrate)()
    return summary


def _verify_member(zf: zipfile.ZipFile, member: str, sha256: str, name: str) -> None:
    digest = hashlib.sha256()
    with zf.open(member) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ExportError(f"{name}: {member} has sha256 {digest.hexdigest()[:16]}..., the manifest says "
                          f"{sha256[:16]}...: the file is corrupt")


def _existing_refs(conn: sa.Connection, archive: Any, shas: list[str]) -> dict[str, tuple[str | None, int | None]]:
    """Where the target already keeps these raw bytes (they are not stored again)."""
    found: dict[str, tuple[str | None, int | None]] = {}
    store = archive.raw_store
    routed = hasattr(store, "store_for")  # a RoutedRawStore: bytes may be in either half
    if store.transactional:
        for (h,) in conn.execute(sa.text("SELECT sha256 FROM raw_messages WHERE sha256 = ANY(:h)"), {"h": shas}):
            found[h] = (None, None)
        if not routed:
            return found
    present = set(_tables(conn))
    for table, (h, _, seg, off) in RAW_REFS.items():
        if table in present:
            for sha, s, o in conn.execute(sa.text(
                    f"SELECT DISTINCT ON ({h}) {h}, {seg}, {off} FROM {table} WHERE {h} = ANY(:h) "
                    f"AND {seg} IS NOT NULL ORDER BY {h}"), {"h": shas}):
                found.setdefault(sha, (s, o))
    return found


def _import_raw(conn: sa.Connection, archive: Any, zf: zipfile.ZipFile, members: list[str], total: int, bar,
                name: str) -> tuple[int, int, int]:
    """Store the raw blobs (those not already in the target) and record in ``imp_raw``
    where each one is; return (blobs, bytes, blobs stored)."""
    task = bar.add_task("import: raw bytes", total=total)
    n = size = stored = 0
    pending: list[tuple[str, bytes]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal stored, pending, pending_bytes
        if not pending:
            return
        shas = [h for h, _ in pending]
        where = _existing_refs(conn, archive, shas)
        todo = [(h, b) for h, b in pending if h not in where]
        if todo:
            refs = archive.raw_store.put_many([b for _, b in todo], conn if archive.raw_store.transactional else None)
            for (h, _), ref in zip(todo, refs):
                where[h] = (ref.segment, ref.offset)
            stored += len(todo)
        conn.execute(sa.text("INSERT INTO imp_raw VALUES (:h, :s, :o) ON CONFLICT DO NOTHING"),
                     [{"h": h, "s": where[h][0], "o": where[h][1]} for h in shas])
        conn.commit()
        pending, pending_bytes = [], 0

    for member in members:
        sha = member[4:]
        data = zf.read(member)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ExportError(f"{name}: raw blob {sha[:16]}... does not have that sha256: the file is corrupt")
        pending.append((sha, data))
        pending_bytes += len(data)
        n += 1
        size += len(data)
        bar.advance(task, len(data))
        if pending_bytes >= RAW_CHUNK_BYTES or len(pending) >= 5000:
            flush()
    flush()
    return n, size, stored


def _lines(zf: zipfile.ZipFile, member: str) -> Iterator[str]:
    with zf.open(member) as fh:
        for line in io.TextIOWrapper(fh, encoding="utf-8", newline="\n"):
            line = line.rstrip("\n")
            if line:
                yield line


def _import_table(conn: sa.Connection, zf: zipfile.ZipFile, t: dict[str, Any], advance: Callable[[int], None]) -> int:
    """Insert the rows of one table member in chunks of :data:`CHUNK_ROWS`; return rows inserted."""
    name = t["name"]
    loc = RAW_REFS.get(name)
    cols = list(t["columns"])
    exprs = [f"r.{_q(c)}" for c in cols]
    join = ""
    if loc is not None:
        h, _, seg, off = loc
        cols += [seg, off]
        exprs += ["m.seg", "m.off"]
        join = f" LEFT JOIN imp_raw m ON m.sha256 = r.{_q(h)}"
    insert = (f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in cols)}) SELECT {', '.join(exprs)} "
              f"FROM imp_lines, LATERAL json_populate_record(NULL::{_q(name)}, imp_lines.j::json) r{join} "
              "ON CONFLICT DO NOTHING")
    dbapi = conn.connection.driver_connection
    inserted = 0
    chunk: list[str] = []

    def flush() -> None:
        nonlocal inserted, chunk
        if not chunk:
            return
        conn.execute(sa.text("TRUNCATE imp_lines"))  # begins the chunk's transaction
        with dbapi.cursor() as cur:
            with cur.copy("COPY imp_lines (j) FROM STDIN") as copy:
                for line in chunk:
                    copy.write_row((line,))
            cur.execute(insert)
            inserted += max(cur.rowcount, 0)
        conn.commit()
        advance(len(chunk))
        chunk = []

    for line in _lines(zf, t["member"]):
        chunk.append(line)
        if len(chunk) >= CHUNK_ROWS:
            flush()
    flush()
    return inserted


def _advance_sequences(conn: sa.Connection, table: str) -> None:
    """Move identity/serial sequences of ``table`` past its largest id (imported rows
    carry their ids; the next insert must not reuse one)."""
    for col in _columns(conn, table):
        seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": _q(table), "c": col}).scalar()
        if seq is None:
            continue
        top = conn.execute(sa.text(f"SELECT max({_q(col)}) FROM {_q(table)}")).scalar()
        if top is not None:
            conn.execute(sa.text("SELECT setval(CAST(:s AS regclass), GREATEST(:v, "
                                 f"(SELECT last_value FROM {seq})))"), {"s": seq, "v": int(top)})
    conn.commit()


# ------------------------------------------------------------------ comparison
def member_digests(path: Path) -> dict[str, str]:
    """sha256 of every table member and raw blob of an export file (for comparisons)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for n in sorted(zf.namelist()):
            if n != MANIFEST:
                out[n] = hashlib.sha256(zf.read(n)).hexdigest()
    return out
