"""Every filter decision, archived: ``filter_decisions`` and ``filter_runs`` (migrations 0101, 0102).

The filter stage (:mod:`filters.stage`) writes each batch's decisions with
:meth:`DecisionStore.put_decisions` in its durable write, before the Kafka transaction
that publishes the accepted Events commits; the time machine (:mod:`filters.rerun`)
writes its own under its run id. So "why was this alert (not) sent?" has an answer
(:meth:`DecisionStore.why`, ``mma-broker filters why EVENT_ID``): which filter, which
plugin version and configuration (hash), accepted or not, the reason code and detail,
or the error of a call that failed.

A decision's key is (Event id, filter instance, run, config hash). A redelivered
batch (a crash between this write and the Kafka commit) evaluates its Events again and
*overwrites* their decisions, so the table says what the committed records say; a
changed configuration (another hash) or a re-run adds decisions beside the old ones.

Storage (migration 0102): **one row per (Event, run)**, its decisions one JSONB array
``decisions`` of positional entries ``[filter, config_hash, plugin, version, accepted,
reason, detail, tags, error, elapsed_ms, followup]`` (a 12th element, the decision
time in ISO 8601, when it differs from the row's ``decided_at``). Readers expand it
back into one :class:`DecisionRow` per decision, in SQL, with the order and values the
one-row-per-decision table of 0101 gave. Why: the stage wrote 20 rows per ZTF alert
with 20 filters; building and copying them was ~30 µs of the stage's CPU per alert and
PostgreSQL's rows and index entries ~80 µs of its own (docs/filters-speed.md, fourth
pass).

Speed: one ``DELETE ... RETURNING`` of the batch's (Event, run) rows (nothing, unless an
Event was decided before: then its other decisions are kept, merged in Python) and one
binary ``COPY`` of one row per Event, in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["LIVE", "DecisionRow", "DecisionStore", "decision_rows", "decision_entries", "encode_decisions",
           "rows_of_encoded", "DECISIONS", "RUNS"]

LIVE = "live"
"""``run`` of the filter stage's own decisions (a re-run has its id there)."""

_md = sa.MetaData()
DECISIONS = sa.Table(
    "filter_decisions", _md,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("run", sa.Text, primary_key=True, comment="'live', or the id of a re-run"),
    sa.Column("decided_at", sa.TIMESTAMP(timezone=True), nullable=False,
              comment="time of the decisions (an entry's 12th element when it differs)"),
    sa.Column("decisions", JSONB, nullable=False,
              comment="[[filter, config_hash, plugin, version, accepted, reason, detail, tags, error, elapsed_ms, "
                      "followup(, decided_at)], ...]"),
    sa.Index("ix_filter_decisions_run", "run", "decided_at"),
)
"""Migration 0102's ``filter_decisions`` (must match it): one row per (Event, run)."""
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
"""The fields of a :class:`DecisionRow` (the columns of 0101's table, one row per decision)."""
_EXPAND = ("SELECT f.event_id, e->>0, f.run, e->>1, e->>2, e->>3, (e->>4)::boolean, e->>5, e->>6, e->7, e->>8, "
           "(e->>9)::float8, CASE WHEN jsonb_typeof(e->10) = 'null' THEN NULL ELSE e->10 END, "
           "coalesce((e->>11)::timestamptz, f.decided_at) AS decided_at "
           "FROM filter_decisions f CROSS JOIN LATERAL jsonb_array_elements(f.decisions) e ")
"""One row per archived decision, its fields in the order of :data:`_COLUMNS`."""
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":"), check_circular=False).encode


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


def decision_entries(decisions: Iterable[Any]) -> list[tuple[Any, ...]]:
    """The ``decisions`` entries of one Event's decisions (:class:`filters.engine.Decision`).

    Each a tuple ``(filter, config_hash, plugin, version, accepted, reason, detail, tags,
    error, elapsed_ms, followup)``, the values :func:`decision_rows` gives (``accepted``
    only for a decided acceptance; ``reason`` ``error`` for a failed call; the
    follow-ups of an accepted result, else None).
    """
    out = []
    for d in decisions:
        r = d.result
        if r is None:
            out.append((d.filter, d.config_hash, d.plugin, d.version, False, "error", None, (), d.error, d.elapsed_ms,
                        None))
            continue
        acc = r.accepted and d.error is None
        follow = None
        if acc and r.followup:
            follow = [{"kind": f.kind, "analyses": list(f.analyses), "window_s": f.window_s} for f in r.followup]
        out.append((d.filter, d.config_hash, d.plugin, d.version, acc, r.reason, r.detail, r.tags, d.error,
                    d.elapsed_ms, follow))
    return out


def encode_decisions(decisions: Iterable[Any]) -> str:
    """The ``decisions`` JSON of one Event's decisions (:func:`decision_entries`), for
    :meth:`DecisionStore.put_encoded`.

    Raises
    ------
    ValueError
        A NaN or infinite ``elapsed_ms`` (not JSON).
    """
    return _ENCODE(decision_entries(decisions))


def rows_of_encoded(event_id: str, text: str, *, run: str = LIVE, decided_at: datetime | None = None
                    ) -> list[DecisionRow]:
    """The :class:`DecisionRow`s of one Event's :func:`encode_decisions` text (what a read
    of the archive gives back), in the order encoded."""
    at = decided_at or datetime.now(timezone.utc)
    return [DecisionRow(event_id, e[0], run, e[1], e[2], e[3], e[4], e[5], e[6], tuple(e[7]), e[8], e[9], e[10],
                        datetime.fromisoformat(e[11]) if len(e) > 11 else at) for e in json.loads(text)]


def _as_is(text: str) -> str:
    return text


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
    def put_decisions(self, items: Iterable[tuple[str, Sequence[Any]]], conn: sa.Connection | None = None, *,
                      run: str = LIVE, decided_at: datetime | None = None) -> int:
        """Write the decisions of several Events (the filter stage's batch), idempotently.

        An Event given twice keeps its last decisions. A decision already stored under
        the same key (Event, filter, run, config hash) is overwritten; the Event's other
        decisions of that run (another configuration's) are kept.

        Parameters
        ----------
        items : iterable of (str, sequence of filters.engine.Decision)
            Event id and its decisions (an Event without any is not written).
        conn : sqlalchemy.Connection, optional
            Write inside the caller's transaction; default: one of its own.
        run : str
            :data:`LIVE` or a re-run id.
        decided_at : datetime, optional
            Aware; default now (UTC).

        Returns
        -------
        int
            Decisions written.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError, psycopg.Error
            The database refused the write (nothing written).
        ValueError
            A NaN or infinite ``elapsed_ms`` (not JSON).
        """
        at = decided_at or datetime.now(timezone.utc)
        rows = {eid: (at, decision_entries(ds)) for eid, ds in items if ds}
        self._put({run: rows}, conn)
        return sum(len(e) for _, e in rows.values())

    def put_encoded(self, items: Iterable[tuple[str, str]], conn: sa.Connection | None = None, *,
                    run: str = LIVE, decided_at: datetime | None = None) -> int:
        """:meth:`put_decisions` of decisions already encoded (:func:`encode_decisions`).

        The filter stage encodes each Event's decisions as it decides them and keeps the
        text until the batch's write, instead of the ``Decision`` objects: ~60 objects per
        ZTF alert that would otherwise live through the batch and be walked by the
        collector again and again (about 20 µs per alert, docs/filters-speed.md, fourth
        pass).

        Parameters
        ----------
        items : iterable of (str, str)
            Event id and its decisions' entries as :func:`encode_decisions` gives them.
        conn, run, decided_at
            As :meth:`put_decisions`.

        Returns
        -------
        int
            Events written.
        """
        at = decided_at or datetime.now(timezone.utc)
        rows = {eid: (at, text) for eid, text in items}
        self._put({run: rows}, conn)
        return len(rows)

    def put_many(self, rows: Sequence[DecisionRow], conn: sa.Connection | None = None, *,
                 unique: bool = False) -> int:
        """Write decision rows idempotently, in one transaction (or on ``conn``, inside the caller's).

        A key met twice keeps the last row; a key already stored is overwritten; the
        Event's other decisions are kept. Each row keeps its own ``decided_at``.

        Parameters
        ----------
        rows : sequence of DecisionRow
        conn : sqlalchemy.Connection, optional
        unique : bool
            The caller guarantees no key appears twice in ``rows``, so the
            de-duplication by key is skipped.

        Returns
        -------
        int
            Distinct decisions written.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError, psycopg.Error
            The database refused the write (nothing written).
        """
        if not rows:
            return 0
        todo = rows if unique else list({(r.event_id, r.filter, r.run, r.config_hash): r for r in rows}.values())
        grouped: dict[str, dict[str, list[DecisionRow]]] = {}
        for r in todo:
            grouped.setdefault(r.run, {}).setdefault(r.event_id, []).append(r)
        out: dict[str, dict[str, tuple[datetime, list[tuple[Any, ...]]]]] = {}
        for run, events in grouped.items():
            per = out[run] = {}
            for eid, rs in events.items():
                last = max(r.decided_at for r in rs)
                per[eid] = (last, [(r.filter, r.config_hash, r.plugin, r.version, r.accepted, r.reason, r.detail,
                                    tuple(r.tags), r.error, r.elapsed_ms, r.followup)
                                   + (() if r.decided_at == last else (r.decided_at.isoformat(),)) for r in rs])
        self._put(out, conn)
        return len(todo)

    def _put(self, runs: Mapping[str, dict[str, tuple[datetime, Any]]], conn: sa.Connection | None) -> None:
        if not any(runs.values()):
            return
        if conn is None:
            with self.engine.begin() as c:
                self._write(c, runs)
        else:
            self._write(conn, runs)

    @staticmethod
    def _write(conn: sa.Connection, runs: Mapping[str, dict[str, tuple[datetime, Any]]]) -> None:
        """Per run, Event id → (decided_at, entries: a list of tuples, or their JSON text)."""
        from psycopg.types.json import Jsonb

        dbapi = conn.connection.driver_connection
        with dbapi.cursor() as cur:
            for run, rows in runs.items():
                # the rows of these Events written before (a batch consumed again, another
                # configuration): taken out, their decisions not written now kept
                cur.execute("DELETE FROM filter_decisions WHERE run = %s AND event_id = ANY(%s) "
                            "RETURNING event_id, decided_at, decisions", (run, list(rows)))
                for eid, old_at, old in cur.fetchall():
                    at, entries = rows[eid]
                    if isinstance(entries, str):
                        entries = json.loads(entries)
                    new = {(e[0], e[1]) for e in entries}
                    kept = []
                    for e in old:
                        if (e[0], e[1]) in new:
                            continue
                        t = datetime.fromisoformat(e[11]) if len(e) > 11 else old_at
                        kept.append(tuple(e[:11]) + (() if t == at else (t.isoformat(),)))
                    if kept:
                        rows[eid] = (at, kept + list(entries))
                with cur.copy("COPY filter_decisions (event_id, run, decided_at, decisions) FROM STDIN "
                              "(FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "timestamptz", "jsonb"])
                    for eid, (at, entries) in rows.items():
                        copy.write_row((eid, run, at, Jsonb(entries, dumps=_as_is if isinstance(entries, str)
                                                            else _ENCODE)))

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
        q, params = _EXPAND + "WHERE f.event_id = %s", [event_id]
        if run is not None:
            q += " AND f.run = %s"
            params.append(run)
        q += " ORDER BY CASE WHEN f.run = %s THEN 0 ELSE 1 END, decided_at, 2, f.run"
        return self._rows(q, (*params, LIVE))

    def decisions(self, *, run: str = LIVE, filter: str | None = None,
                  accepted: bool | None = None) -> list[DecisionRow]:
        """The decisions of one run (optionally one filter, accepted or not), by Event id and filter."""
        q, params = _EXPAND + "WHERE f.run = %s", [run]
        if filter is not None:
            q += " AND e->>0 = %s"
            params.append(filter)
        if accepted is not None:
            q += " AND (e->>4)::boolean = %s"
            params.append(accepted)
        return self._rows(q + " ORDER BY f.event_id, 2", tuple(params))

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[DecisionRow]:
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.exec_driver_sql(sql, params)]

    def run_info(self, run_id: str) -> dict[str, Any] | None:
        """The ``filter_runs`` row of a re-run, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else None


def _row(r: Any) -> DecisionRow:
    v = dict(zip(_COLUMNS, r))
    v["tags"] = tuple(v["tags"] or ())
    return DecisionRow(**v)
