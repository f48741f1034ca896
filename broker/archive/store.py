"""The alert archive: every Event exactly once in PostgreSQL, raw bytes beside it.

The ingest stage calls :meth:`Archive.write_batch` once per batch of Kafka messages
and commits offsets only after it returns (DESIGN.md: at-least-once delivery made
exactly-once in effect by idempotent writes keyed on Event.id).

Write path of one batch, in one transaction:

1. raw bytes, deduplicated by sha256 (a :class:`~broker.archive.raw.SegmentFileStore`
   writes and fsyncs its segment *before* the transaction, once, outside the retry
   loop; a :class:`~broker.archive.raw.PostgresRawStore` writes inside it; a
   :class:`~broker.archive.raw.RoutedRawStore` splits the batch by Event source and
   does each part its half's way);
2. ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id`` for all rows;
3. retraction marking (see :meth:`Archive.write_batch`).

Row insertion uses psycopg ``COPY events_in FROM STDIN (FORMAT BINARY)`` into a
session-local temporary table, then one ``INSERT INTO events SELECT ... FROM events_in
ON CONFLICT (id) DO NOTHING RETURNING id``. Measured with
``benchmarks/bench_archive.py --compare-insert`` (500-row batches of real ZTF Events,
PostgreSQL 16, 2 cores): ~31,600 rows/s against ~4,800 rows/s for SQLAlchemy's
insertmanyvalues (multi-row ``INSERT ... VALUES ... RETURNING``). The latter spends its
time rendering 11,500 bind parameters per statement and running per-value bind
processors in Python; binary COPY sends typed values with no SQL to parse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa

from broker.archive.models import events
from broker.archive.raw import RawRef, RawStore
from broker.archive.retry import retry_transient
from broker.archive.rows import ArchivedEvent, ArchiveItem, KafkaMeta, archived_from_row, event_rows, parse_time
from broker.errors import BrokerError

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6D6D61_0001
"""pg_advisory_lock key serializing ``Archive.migrate`` across processes."""

RETRACTION_LOCK_KEY = 0x6D6D61_0002
"""Advisory lock key: batches holding a retraction take it exclusively, all others
shared, so a retraction and a concurrent revision of the same alert never miss
each other (each sees the other's committed row)."""

@dataclass(frozen=True, slots=True)
class WriteResult:
    """What :meth:`Archive.write_batch` did.

    Attributes
    ----------
    inserted : int
        New rows.
    already_present : int
        Distinct Event ids of the batch that were already archived (redelivery).
    retracted : int
        Rows newly marked retracted by this batch (in either direction).
    owners : dict of str to KafkaMeta or None
        For every Event id of the batch, the message its archived row came from: the
        first item of this batch with that id when the row is new, else the origin
        stored with the row. An item whose own origin differs is a *duplicate* (the
        same alert sent again by upstream): the ingest stage does not publish it
        again, while a redelivery of the very message that wrote the row (after a
        crash) is published again.
    """

    inserted: int
    already_present: int
    retracted: int
    owners: dict = field(default_factory=dict, compare=False)


def version_locations() -> list[str]:
    """Folders of the archive's Alembic revisions: the core's, then every plugin's.

    A plugin registers, under the entry-point group ``mma_broker.migrations``
    (:mod:`broker.plugins`), the package whose folder holds its ``versions/``
    (``followup = "followup.migrations"``): its tables are the plugin's, the core
    never imports it. Plugin revisions build on core revisions (``down_revision``).

    Raises
    ------
    broker.plugins.PluginError
        A registered plugin fails to import or has no ``versions/`` folder: migrating
        without its revisions would leave its tables out, so this is not skipped.
    """
    from importlib.resources import files
    from types import ModuleType

    from broker import plugins

    locations = [str(files("broker.archive") / "migrations" / "versions")]
    for name in plugins.available(plugins.MIGRATIONS):
        package = plugins.load(plugins.MIGRATIONS, name)
        folder = files(package) / "versions" if isinstance(package, ModuleType) else None
        if folder is None or not folder.is_dir():
            raise plugins.PluginError(f"plugin {name!r} ({plugins.MIGRATIONS}) must name a package whose folder "
                                      "holds versions/ (Alembic revisions)")
        locations.append(str(folder))
    return locations


def alembic_config(url: str | None = None):
    """An Alembic Config for the archive's migrations, built in code (no alembic.ini).

    The environment (``env.py``) is the core's; the revisions come from
    :func:`version_locations` (the core's and every migrations plugin's), so the heads
    of this script directory are what a fully migrated archive holds.

    Parameters
    ----------
    url : str or None
        SQLAlchemy URL, used when no connection is passed in ``attributes``.
    """
    import os
    from importlib.resources import files

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("broker.archive") / "migrations"))
    # split version_locations on os.pathsep (path_separator: alembic >= 1.16; the
    # older name for alembic 1.12-1.15, which newer releases read only when the first is unset)
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(p.replace("%", "%%") for p in version_locations()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class SchemaTooNewError(BrokerError):
    """The archive's schema is at a revision this mma-broker does not know (a newer
    mma-broker, or a plugin that is not installed here, migrated it)."""


def check_not_newer(current: set[str] | list[str], script: Any = None) -> None:
    """Refuse an archive whose ``alembic_version`` holds a revision unknown here.

    Alembic would stop with "Can't locate revision"; a stage must not run against
    tables whose layout it does not know (it could write rows a newer stage misreads).

    Parameters
    ----------
    current : set of str
        The archive's ``alembic_version`` rows.
    script : alembic.script.ScriptDirectory, optional
        Default: the one of :func:`alembic_config` (core and plugin revisions).

    Raises
    ------
    SchemaTooNewError
        One line naming the revision found, the newest known, and what to do.
    """
    from alembic.script import ScriptDirectory

    script = script if script is not None else ScriptDirectory.from_config(alembic_config())
    known = {r.revision for r in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        heads = ", ".join(sorted(script.get_heads()))
        raise SchemaTooNewError(
            f"the archive's schema is at revision {', '.join(unknown)}, which this mma-broker does not know "
            f"(the newest it knows: {heads}): a newer mma-broker, or a plugin not installed here, migrated it. "
            "Install that version (or the plugin) here too; to go back to this version instead, restore a "
            "backup made before the upgrade (docs/operations.md#upgrades)")


class Archive:
    """PostgreSQL archive of Events plus a raw-bytes store.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, ``postgresql+psycopg://user:password@host/db`` (or the unix
        socket URL of :func:`~broker.archive.embedded.ensure_embedded_postgres`).
    raw_store : RawStore
        Where raw upstream bytes go: :class:`~broker.archive.raw.SegmentFileStore`,
        :class:`~broker.archive.raw.PostgresRawStore`, or (the broker's default settings)
        :class:`~broker.archive.raw.RoutedRawStore`, the notices' bytes in PostgreSQL and
        the surveys' in segment files. A PostgreSQL store without an engine gets this
        archive's.
    retry_deadline_s : float or None
        How long :meth:`write_batch` keeps retrying while the database is unreachable;
        None (default) waits forever, so a PostgreSQL restart pauses the stage.
    retry_max_delay_s : float
        Cap of the exponential backoff between retries, s.
    """

    def __init__(
        self,
        url: str,
        raw_store: RawStore,
        *,
        retry_deadline_s: float | None = None,
        retry_max_delay_s: float = 10.0,
    ) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
        self.raw_store = raw_store
        if getattr(raw_store, "engine", False) is None:
            # a PostgreSQL raw store made without an engine reads with the archive's where no
            # connection is passed (a RoutedRawStore's reader, for the filters' lazy reads)
            raw_store.engine = self.engine
        self.retry_deadline_s = retry_deadline_s
        self.retry_max_delay_s = retry_max_delay_s
        self._secret = self.engine.url.password

    def __repr__(self) -> str:
        return f"Archive({self.engine.url.render_as_string(hide_password=True)!r}, {self.raw_store!r})"

    def close(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema
    def migrate(self) -> None:
        """Upgrade the schema to the latest Alembic revisions (``upgrade heads``: the core's
        and every migrations plugin's, :func:`version_locations`).

        Safe to call from several processes at once: the upgrade runs under a
        session-level ``pg_advisory_lock``, so the second caller waits and then
        finds nothing to do. Retries while the database is unreachable, like writes.

        Raises
        ------
        SchemaTooNewError
            The archive is at a revision this mma-broker does not know (:func:`check_not_newer`):
            nothing is changed, and the stage must not start.
        """
        from alembic import command

        def run() -> None:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
                try:
                    cfg = alembic_config()
                    has_version = conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar()
                    if has_version is not None:
                        check_not_newer(set(conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                                            .scalars()))
                    conn.commit()
                    cfg.attributes["connection"] = conn
                    with conn.begin():
                        # "heads": every branch, should a plugin's revisions ever fork from the core's
                        command.upgrade(cfg, "heads")
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                    conn.commit()

        retry_transient(run, what="archive migration", deadline_s=self.retry_deadline_s, secret=self._secret)

    # ------------------------------------------------------------------ writes
    def write_batch(self, items: Sequence[ArchiveItem]) -> WriteResult:
        """Archive a batch of Events and their raw bytes, idempotently.

        In one transaction: raw bytes, then all rows with ``ON CONFLICT (id) DO
        NOTHING``, then retractions. A retraction (``event.is_retraction``) marks every
        other archived revision of the same (source, mission, upstream_id) ``retracted = true,
        retracted_by = <retraction id>``; a revision archived *after* its retraction
        (out-of-order delivery) is marked at insertion. The first archived retraction
        is the one named in ``retracted_by``.

        Parameters
        ----------
        items : sequence of ArchiveItem
            Events with their raw message and Kafka metadata. Several items may share
            one raw message (an Avro container); duplicate Event ids keep the first.

        Returns
        -------
        WriteResult

        Raises
        ------
        ArchiveDataError
            If an Event holds a value PostgreSQL cannot store (before any DB write).
        OSError
            If the segment file store cannot write.
        sqlalchemy.exc.DBAPIError
            Non-transient database errors; transient ones are retried with backoff
            until ``retry_deadline_s``.
        """
        unique: dict[str, ArchiveItem] = {}
        for item in items:
            unique.setdefault(item.event.id, item)
        batch = list(unique.values())
        if not batch:
            return WriteResult(0, 0, 0)
        blobs = [item.raw for item in batch]
        store = self.raw_store
        halves = _halves(store, batch)
        placed: dict[int, RawRef] = {}  # refs of the halves written before the transaction (segment files)

        def put_outside() -> None:
            for half, idx in halves:
                if not half.transactional:
                    placed.update(zip(idx, half.put_many([blobs[i] for i in idx])))

        def rows_of(refs: dict[int, RawRef]) -> list[dict[str, Any]]:
            return event_rows(batch, [refs[i] for i in range(len(batch))])

        put_outside()
        rows = rows_of(placed) if len(placed) == len(batch) else None
        retractions = [it.event for it in batch if it.event.is_retraction]

        def txn() -> WriteResult:
            nonlocal rows
            if placed and not _touch_segments(store, [{"raw_segment": r.segment} for r in placed.values()]):
                # ``archive gc`` took the segment while this batch waited (broker.archive.gc): write it again
                put_outside()
                rows = rows_of(placed) if len(placed) == len(batch) else None
            with self.engine.begin() as conn:
                lock = "pg_advisory_xact_lock" if retractions else "pg_advisory_xact_lock_shared"
                conn.execute(sa.text(f"SELECT {lock}(:k)"), {"k": RETRACTION_LOCK_KEY})
                if rows is not None:
                    batch_rows = rows
                else:  # the transactional halves write in this transaction
                    refs = dict(placed)
                    for half, idx in halves:
                        if half.transactional:
                            refs.update(zip(idx, half.put_many([blobs[i] for i in idx], conn)))
                    batch_rows = rows_of(refs)
                inserted_ids = _insert_rows(conn, batch_rows)
                owners = {it.event.id: it.kafka for it in batch}
                inserted = set(inserted_ids)  # once: rebuilt per id it made each batch O(n²)
                present = [i for i in owners if i not in inserted]
                if present:
                    for rid, topic, part, off in conn.execute(
                            sa.text("SELECT id, kafka_topic, kafka_partition, kafka_offset FROM events "
                                    "WHERE id = ANY(:ids)"), {"ids": present}):
                        owners[rid] = KafkaMeta(topic, part, off) if topic is not None else None
                n_retracted = _mark_retractions(conn, retractions, inserted_ids)
            return WriteResult(len(inserted_ids), len(batch) - len(inserted_ids), n_retracted, owners)

        result = retry_transient(
            txn,
            what=f"archive write of {len(batch)} events",
            deadline_s=self.retry_deadline_s,
            max_delay_s=self.retry_max_delay_s,
            secret=self._secret,
        )
        log.debug("archived batch: %s", result)
        return result

    def store_raw(self, blobs: Sequence[bytes]) -> list[RawRef]:
        """Keep raw bytes that have no Event (dead letters, follow-up artifacts) in the raw store.

        A :class:`~broker.archive.raw.RoutedRawStore` keeps them in its segment files
        (:meth:`~broker.archive.raw.RoutedRawStore.store_for` of no source): they have no
        source to route by, and none is on the notice path's latency.

        Parameters
        ----------
        blobs : sequence of bytes, length n

        Returns
        -------
        list of RawRef, length n
            Where each blob is (deduplicated by sha256); :meth:`raw_by_ref` reads it back.
        """
        store = self.raw_store
        route = getattr(store, "store_for", None)
        if route is not None:  # a RoutedRawStore: bytes without an Event go where its rule says
            store = route(None)
        if not store.transactional:
            return store.put_many(blobs)

        def txn() -> list[RawRef]:
            with self.engine.begin() as conn:
                return store.put_many(blobs, conn)

        return retry_transient(txn, what=f"raw store write of {len(blobs)} dead letter(s)",
                               deadline_s=self.retry_deadline_s, max_delay_s=self.retry_max_delay_s,
                               secret=self._secret)

    def raw_by_ref(self, ref: RawRef) -> bytes:
        """Raw bytes stored under ``ref`` (e.g. from a dead letter's headers), sha256-verified.

        Raises
        ------
        RawStoreError
            If the bytes are missing or corrupt.
        """
        if not self.raw_store.transactional:
            return self.raw_store.get(ref)
        with self.engine.connect() as conn:
            return self.raw_store.get(ref, conn)

    # ------------------------------------------------------------------ reads
    def get(self, event_id: str) -> ArchivedEvent | None:
        """The archived Event ``event_id`` with its metadata, or None if absent."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
        return archived_from_row(row) if row is not None else None

    def raw(self, event_id: str) -> bytes:
        """The raw upstream bytes ``event_id`` was decoded from, sha256-verified.

        Raises
        ------
        KeyError
            If no Event ``event_id`` is archived.
        RawStoreError
            If the bytes are missing or corrupt.
        """
        cols = (events.c.raw_sha256, events.c.raw_length, events.c.raw_segment, events.c.raw_offset)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*cols).where(events.c.id == event_id)).first()
            if row is None:
                raise KeyError(f"event {event_id!r} is not in the archive")
            ref = RawRef(sha256=row[0], length=row[1], segment=row[2], offset=row[3])
            return self.raw_store.get(ref, conn if self.raw_store.transactional else None)

    def list(
        self,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        include_retracted: bool = True,
        category: str | None = None,
    ) -> list[ArchivedEvent]:
        """Archived Events, most recent event time first.

        Parameters
        ----------
        source : str or None
            Only this source ("igwn", "gcn", "ztf", "lsst").
        since, until : datetime or None
            Event time T0 window, ``since <= time < until``; naive datetimes are UTC.
        limit : int
            At most this many.
        include_retracted : bool
            False drops retracted revisions (retractions themselves stay).
        category : str or None
            Only Events of this category (``Event.category``, docs/categories.md); rows
            archived before migration 0008 and not recategorized (NULL) never match.
        """
        q = sa.select(events)
        if source is not None:
            q = q.where(events.c.source == source)
        if category is not None:
            q = q.where(events.c.category == category)
        if since is not None:
            q = q.where(events.c.time >= _aware(since))
        if until is not None:
            q = q.where(events.c.time < _aware(until))
        if not include_retracted:
            q = q.where(events.c.retracted.is_(False))
        q = q.order_by(events.c.time.desc(), events.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [archived_from_row(r) for r in conn.execute(q).mappings()]

    def counts(self) -> list[tuple[str, str, str, int]]:
        """Number of archived Events per (source, mission, alert_type), sorted."""
        keys = (events.c.source, events.c.mission, events.c.alert_type)
        q = sa.select(*keys, sa.func.count()).group_by(*keys).order_by(*keys)
        with self.engine.connect() as conn:
            return [(s, m, a, int(n)) for s, m, a, n in conn.execute(q)]

    def total(self) -> int:
        """Number of archived Events."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())


def _halves(store: RawStore, batch: Sequence[ArchiveItem]) -> list[tuple[RawStore, list[int]]]:
    """Which store keeps each item's raw bytes: (store, indices into ``batch``) pairs.

    One pair for a plain store; for a :class:`~broker.archive.raw.RoutedRawStore` one
    per half that the items' Event sources route to (:meth:`~broker.archive.raw.RoutedRawStore.store_for`).
    """
    route = getattr(store, "store_for", None)
    if route is None:
        return [(store, list(range(len(batch))))]
    parts: dict[int, tuple[RawStore, list[int]]] = {}
    for i, item in enumerate(batch):
        half = route(item.event.source)
        parts.setdefault(id(half), (half, []))[1].append(i)
    return list(parts.values())


def _touch_segments(store: RawStore, rows: list[dict[str, Any]]) -> bool:
    """Set the modification time of the segment files ``rows`` refer to, at the start of
    a transaction attempt, so that ``archive gc`` sees them young while they are not yet
    referenced (broker/archive/gc.py); False if one is gone (the gc took it)."""
    import os

    directory = getattr(store, "directory", None)
    if directory is None:
        return True
    for seg in {r["raw_segment"] for r in rows if r.get("raw_segment")}:
        try:
            os.utime(directory / seg)
        except FileNotFoundError:
            log.warning("raw segment %s was collected before its batch committed: writing it again", seg)
            return False
    return True


def _aware(t: datetime) -> datetime:
    return parse_time(t.isoformat()) if t.tzinfo is None else t


_COPY_TYPES = {
    "id": "text", "source": "text", "messenger": "text", "mission": "text", "instrument": "text",
    "upstream_id": "text", "alert_type": "text", "time": "timestamptz", "localization": "jsonb",
    "properties": "jsonb", "format": "text", "category": "text", "category_rule": "text", "ra_deg": "float8",
    "dec_deg": "float8",
    "error_radius_deg": "float8", "hpx": "int8", "area_90_deg2": "float8", "kafka_topic": "text",
    "kafka_partition": "int4", "kafka_offset": "int8", "raw_sha256": "text", "raw_segment": "text",
    "raw_offset": "int8", "raw_length": "int8",
}
"""PostgreSQL types of the columns written by :func:`_insert_rows` (binary COPY needs them)."""

_COPY_COLUMNS = ", ".join(_COPY_TYPES)
_JSONB_AT = [i for i, t in enumerate(_COPY_TYPES.values()) if t == "jsonb"]


def _insert_rows(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[str]:
    """Insert rows, skipping ids already present; return the ids actually inserted.

    Binary COPY into the temporary table ``events_in`` (created once per session,
    emptied at each commit), then INSERT ... SELECT ... ON CONFLICT DO NOTHING.
    """
    from psycopg.types.json import Jsonb

    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS events_in (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY events_in ({_COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_COPY_TYPES.values()))
            for row in rows:
                values = [row[c] for c in _COPY_TYPES]
                for i in _JSONB_AT:
                    if values[i] is not None:
                        values[i] = Jsonb(values[i])
                copy.write_row(values)
        cur.execute(
            f"INSERT INTO events ({_COPY_COLUMNS}) SELECT {_COPY_COLUMNS} FROM events_in "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        return [r[0] for r in cur.fetchall()]


_RETRACT_BY = sa.text(
    "UPDATE events SET retracted = true, retracted_by = :rid "
    "WHERE source = :source AND mission = :mission AND upstream_id = :upstream_id "
    "AND alert_type <> 'retraction' AND NOT retracted"
)
"""A retraction applies to its own (source, mission, upstream_id): GCN carries many
missions under one source, and trigger numbers of different missions collide (an
Einstein Probe retraction with id 745121685 must not retract Fermi GBM trigger
745121685)."""

_RETRACT_LATE = sa.text(
    "UPDATE events e SET retracted = true, retracted_by = ("
    "  SELECT r.id FROM events r WHERE r.alert_type = 'retraction'"
    "  AND r.source = e.source AND r.mission = e.mission AND r.upstream_id = e.upstream_id"
    "  ORDER BY r.ingested_at, r.id LIMIT 1) "
    "WHERE e.id = ANY(:ids) AND e.alert_type <> 'retraction' AND NOT e.retracted "
    "AND EXISTS (SELECT 1 FROM events r WHERE r.alert_type = 'retraction'"
    "  AND r.source = e.source AND r.mission = e.mission AND r.upstream_id = e.upstream_id)"
)


def _mark_retractions(conn: sa.Connection, retractions: list, inserted_ids: list[str]) -> int:
    """Apply retractions of this batch, then retract late arrivals; return rows marked."""
    n = 0
    for ev in retractions:
        n += conn.execute(_RETRACT_BY, {"rid": ev.id, "source": ev.source, "mission": ev.mission,
                                        "upstream_id": ev.upstream_id}).rowcount
    if inserted_ids:
        n += conn.execute(_RETRACT_LATE, {"ids": inserted_ids}).rowcount
    return n
