"""Every filter decision, archived: ``filter_decisions`` and ``filter_runs`` (migration 0101).

The filter stage (:mod:`filters.stage`) writes each batch's decisions with
:meth:`DecisionStore.put_many` in its durable write, before the Kafka transaction
that publishes the accepted Events commits; the time machine (:mod:`filters.rerun`)
writes its own under its run id. So "why was this alert (not) sent?" has an answer
(:meth:`DecisionStore.why`, ``mma-broker filters why EVENT_ID``): which filter, which
plugin version and configuration (hash), accepted or not, the reason code and detail,
or the error of a call that failed.

One row per (Event id, filter instance, run, config hash). A redelivered batch (a
crash between this write and the Kafka commit) evaluates its Events again and
*overwrites* its rows, so the table says what the committed records say; a changed
configuration (another hash) or a re-run adds rows beside the old ones.

Speed: one ``DELETE`` of the batch's keys (nothing, unless the batch was consumed
before) and one binary ``COPY`` of its rows straight into the table, in one
transaction. ``benchmarks/bench_filter_stage.py`` (docs/filters.md): 51,000 rows/s
median for 500 Events × 20 filters a batch, the same as a ``COPY`` into a temporary
table plus ``INSERT ... ON CONFLICT DO UPDATE`` within that machine's noise, and about
five times SQLAlchemy's ``executemany`` of that upsert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = ["LIVE", "DecisionRow", "DecisionStore", "decision_rows", "DECISIONS", "RUNS"]

LIVE = "live"
"""``run`` of the filter stage's own decisions (a re-run has its id there)."""

_md = sa.MetaData()
DECISIONS = sa.Table(
    "filter_decisions", _md,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("filter", sa.Text, primary_key=True, comment="instance name (topic mma.filter.<filter>)"),
    sa.Column("run", sa.Text, primary_key=True, comment="'live', or the id of a re-run"),
    sa.Column("config_hash", sa.Text, primary_key=True),
    sa.Column("plugin", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, comment="machine-readable code, or 'error'"),
    sa.Column("detail", sa.Text),
    sa.Column("tags", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("error", sa.Text, comment="raised / garbage / timeout / quarantined"),
    sa.Column("elapsed_ms", sa.Float(precision=53)),
    sa.Column("followup", JSONB, comment="follow-ups asked for (accepted only)"),
    sa.Column("decided_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Index("ix_filter_decisions_run_filter", "run", "filter", "decided_at"),
)
"""Migration 0101's ``filter_decisions`` (must match it)."""
RUNS = sa.Table(
    "filter_runs", _md,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("filters", JSONB, nullable=False, comment="instance -> plugin, version, config_hash, params"),
    sa.Column("since", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("until", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("output", sa.Text, comment="topic:<name>, file:<name>, or NULL (decisions only)"),
    sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("finished_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("summary", JSONB),
)
"""Migration 0101's ``filter_runs``."""

_COLUMNS = ("event_id", "filter", "run", "config_hash", "plugin", "version", "accepted", "reason", "detail", "tags",
            "error", "elapsed_ms", "followup", "decided_at")
_TYPES = ("text", "text", "text", "text", "text", "text", "bool", "text", "text", "text[]", "text", "float8",
          "jsonb", "timestamptz")
_COLS = ", ".join(f'"{c}"' for c in _COLUMNS)


class DecisionRow(NamedTuple):
    """One row of ``filter_decisions`` (see the module docstring); a named tuple (a
    batch of 500 ZTF alerts and 20 filters makes 10,000 of them).

    Attributes
    ----------
    event_id, filter, run, config_hash, plugin, version : str
    accepted : bool
    reason : str
        The result's code, or ``error`` when the call failed.
    detail : str or None
    tags : tuple of str
    error : str or None
    elapsed_ms : float
        Time in the filter's ``apply``, ms.
    followup : list of dict or None
        The follow-ups an accepted result asked for.
    decided_at : datetime
        UTC, aware.
    """

    event_id: str
    filter: str
    run: str
    config_hash: str
    plugin: str
    version: str
    accepted: bool
    reason: str
    detail: str | None
    tags: tuple[str, ...]
    error: str | None
    elapsed_ms: float
    followup: list[dict[str, Any]] | None
    decided_at: datetime

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``decided_at`` ISO 8601 UTC ending in ``Z``)."""
        d = self._asdict()
        d["tags"] = list(self.tags)
        d["decided_at"] = self.decided_at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
        return d


def decision_rows(event_id: str, decisions: Iterable[Any], *, run: str = LIVE,
                  decided_at: datetime | None = None) -> list[DecisionRow]:
    """The rows of one Event's decisions (:class:`filters.engine.Decision`).

    Parameters
    ----------
    event_id : str
    decisions : iterable of filters.engine.Decision
    run : str
        :data:`LIVE` or a re-run id.
    decided_at : datetime, optional
        Default: now (UTC).
    """
    at = decided_at or datetime.now(timezone.utc)
    out = []
    for d in decisions:
        r = d.result
        follow = None
        if r is not None and r.followup and r.accepted and d.error is None:
            follow = [{"kind": f.kind, "analyses": list(f.analyses), "window_s": f.window_s} for f in r.followup]
        if r is None:
            out.append(DecisionRow(event_id, d.filter, run, d.config_hash, d.plugin, d.version, False, "error",
                                   None, (), d.error, d.elapsed_ms, None, at))
        else:
            out.append(DecisionRow(event_id, d.filter, run, d.config_hash, d.plugin, d.version,
                                   r.accepted and d.error is None, r.reason, r.detail, r.tags, d.error,
                                   d.elapsed_ms, follow, at))
    return out


class DecisionStore:
    """``filter_decisions`` and ``filter_runs`` in the archive's PostgreSQL (migrated).

    Parameters
    ----------
    engine : sqlalchemy.Engine
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ writes
    def put_many(self, rows: Sequence[DecisionRow], conn: sa.Connection | None = None, *,
                 unique: bool = False) -> int:
        """Write rows idempotently, in one transaction (or on ``conn``, inside the caller's).

        A key met twice keeps the last row; a key already stored is overwritten.

        Parameters
        ----------
        rows : sequence of DecisionRow
        conn : sqlalchemy.Connection, optional
        unique : bool
            The caller guarantees no key appears twice in ``rows`` (the filter stage:
            one Event's decisions per Event id, distinct instance names), so the
            de-duplication by key (a dict of 10,000 keys per batch) is skipped.

        Returns
        -------
        int
            Distinct rows written.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            The database refused the write (nothing written).
        """
        if not rows:
            return 0
        todo = rows if unique else list({(r.event_id, r.filter, r.run, r.config_hash): r for r in rows}.values())
        if conn is None:
            with self.engine.begin() as c:
                return self._copy(c, todo)
        return self._copy(conn, todo)

    @staticmethod
    def _copy(conn: sa.Connection, rows: Iterable[DecisionRow]) -> int:
        from psycopg.types.json import Jsonb

        rows = list(rows)
        ids = sorted({r.event_id for r in rows})
        runs = sorted({r.run for r in rows})
        names = sorted({r.filter for r in rows})
        hashes = sorted({r.config_hash for r in rows})
        dbapi = conn.connection.driver_connection
        with dbapi.cursor() as cur:
            # the rows a batch consumed again wrote before (same keys); then the new ones
            cur.execute("DELETE FROM filter_decisions WHERE event_id = ANY(%s) AND run = ANY(%s) "
                        "AND filter = ANY(%s) AND config_hash = ANY(%s)", (ids, runs, names, hashes))
            with cur.copy(f"COPY filter_decisions ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(list(_TYPES))
                for r in rows:
                    copy.write_row((r.event_id, r.filter, r.run, r.config_hash, r.plugin, r.version, r.accepted,
                                    r.reason, r.detail, list(r.tags), r.error, r.elapsed_ms,
                                    None if r.followup is None else Jsonb(r.followup), r.decided_at))
        return len(rows)

    def start_run(self, run_id: str, filters: Mapping[str, Any], since: datetime, until: datetime,
                  output: str | None) -> None:
        """Record the start of a re-run (``filter_runs``)."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(RUNS).values(id=run_id, filters=dict(filters), since=since, until=until,
                                                output=output, started_at=datetime.now(timezone.utc)))

    def finish_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """Record the end of a re-run and its summary."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(RUNS).where(RUNS.c.id == run_id)
                         .values(finished_at=datetime.now(timezone.utc), summary=dict(summary)))

    # ------------------------------------------------------------------ reads
    def why(self, event_id: str, *, run: str | None = None) -> list[DecisionRow]:
        """Every decision archived for one Event: the live ones first, then re-runs, each
        by decision time and filter.

        Parameters
        ----------
        event_id : str
            ``Event.id``.
        run : str, optional
            Only this run (:data:`LIVE` or a re-run id).

        Returns
        -------
        list of DecisionRow
            Empty when no filter saw the Event (not yet, or none handles its source).
        """
        d = DECISIONS.c
        q = sa.select(*(d[c] for c in _COLUMNS)).where(d.event_id == event_id)
        if run is not None:
            q = q.where(d.run == run)
        q = q.order_by(sa.case((d.run == LIVE, 0), else_=1), d.decided_at, d.filter, d.run)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def decisions(self, *, run: str = LIVE, filter: str | None = None,
                  accepted: bool | None = None) -> list[DecisionRow]:
        """The decisions of one run (optionally one filter, accepted or not), by Event id."""
        d = DECISIONS.c
        q = sa.select(*(d[c] for c in _COLUMNS)).where(d.run == run)
        if filter is not None:
            q = q.where(d.filter == filter)
        if accepted is not None:
            q = q.where(d.accepted.is_(accepted))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q.order_by(d.event_id, d.filter))]

    def run_info(self, run_id: str) -> dict[str, Any] | None:
        """The ``filter_runs`` row of a re-run, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else None


def _row(r: Any) -> DecisionRow:
    v = dict(zip(_COLUMNS, r))
    v["tags"] = tuple(v["tags"] or ())
    return DecisionRow(**v)
