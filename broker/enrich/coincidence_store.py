"""The coincidences the enrich stage found, kept in PostgreSQL (issue 13; migration 0013).

Before this table only Kafka (``mma.coincidences``) knew which coincidences the enrich
stage computed; the group page read the copies the reports stage put in the outbox,
which exist only when that stage runs. ``coincidences`` holds one row per **version**
of a record — (``id``, ``computed_from``): the same primary key as the claims of
:mod:`broker.enrich.claims` — with the keys of both members (group keys and the Event
ids of the revisions used), the kind, the time offset, the sky overlap, the joint FAR,
the ``coincident`` / ``retracted`` flags and the whole record as JSONB.

Written by the enrich loop in its durable write, before its Kafka transaction, by
:func:`write_coincidences`: in one transaction, the claims of the trigger–optical
versions (with ``[lanes]``), then the rows of the versions this loop owns (every
version of the kinds only one lane finds) in one ``INSERT ... ON CONFLICT DO NOTHING``.
A batch replayed after a crash writes nothing new; two lanes that found the same pair
write it once (the owner does; the other's rows would conflict anyway).

Unlike the claims, the rows are archive data: ``mma-broker archive export`` carries them
with the Events they name, ``archive import`` puts them back, ``archive gc`` leaves them.
The latest version of a record id (``created_at``, then the row order of the insert:
``clock_timestamp()``) is the coincidence's current state, as on the compacted topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert

__all__ = ["coincidence_table", "COINCIDENCES", "coincidence_rows", "write_coincidences", "latest_of_group",
           "CROSS_LANE_KINDS"]

CROSS_LANE_KINDS = frozenset({"gw-optical", "grb-optical"})
"""Kinds both enrich lanes may find (a trigger and an optical candidate): claimed first."""


def coincidence_table(metadata: sa.MetaData) -> sa.Table:
    """Define migration 0013's ``coincidences`` on ``metadata``.

    Columns: ``id`` and ``computed_from`` (primary key: one version of one record, as
    keyed on ``mma.coincidences``), ``kind``, the members (``trigger_group``,
    ``trigger_event_id``, ``other_group``, ``other_event_id``: the record's
    ``members[0]`` and ``members[1]``), ``dt_s`` (s), ``overlap_integral``,
    ``joint_far_hz`` (Hz), ``coincident``, ``retracted``, ``retracted_by``,
    ``created_at``, ``record`` (JSONB). Indexes: one per group key column.
    """
    return sa.Table(
        "coincidences", metadata,
        sa.Column("id", sa.Text, primary_key=True,
                  comment="<kind>:<trigger group>+<other group>, the key on mma.coincidences"),
        sa.Column("computed_from", sa.Text, primary_key=True,
                  comment="the version: Event whose arrival produced the record"),
        sa.Column("kind", sa.Text, nullable=False, comment="gw-grb | gw-neutrino | gw-optical | grb-optical"),
        sa.Column("trigger_group", sa.Text, nullable=False, comment="members[0].group: the GW, else the GRB"),
        sa.Column("trigger_event_id", sa.Text, nullable=False, comment="members[0].event_id: its revision used"),
        sa.Column("other_group", sa.Text, nullable=False, comment="members[1].group"),
        sa.Column("other_event_id", sa.Text, nullable=False, comment="members[1].event_id"),
        sa.Column("dt_s", sa.Float, nullable=True,
                  comment="time offset t_other - t_trigger, s (optical kinds: dt_days * 86400)"),
        sa.Column("overlap_integral", sa.Float, nullable=True, comment="sky overlap integral I_Omega, when computed"),
        sa.Column("joint_far_hz", sa.Float, nullable=True, comment="joint FAR, Hz (gw-grb), when computed"),
        sa.Column("coincident", sa.Boolean, nullable=False,
                  comment="false: superseded, a later revision moved the pair out of its window"),
        sa.Column("retracted", sa.Boolean, nullable=False, comment="a member was retracted"),
        sa.Column("retracted_by", sa.Text, nullable=True, comment="Event id of the retraction"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()"), comment="when the enrich stage wrote the row"),
        sa.Column("record", JSONB, nullable=False, comment="the mma.coincidences record, provenance included"),
        sa.Index("ix_coincidences_trigger_group", "trigger_group"),
        sa.Index("ix_coincidences_other_group", "other_group"),
    )


COINCIDENCES = coincidence_table(sa.MetaData())


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def coincidence_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of ``mma.coincidences`` records (schema ``mma.coincidence/1``).

    Parameters
    ----------
    records : iterable of mapping
        Records as the enrich stage publishes them; a version given twice is kept once.

    Returns
    -------
    list of dict
        One row per (``id``, ``computed_from``), in the records' order.

    Raises
    ------
    KeyError
        A record lacks ``id``, ``kind``, ``computed_from`` or its two ``members``.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for c in records:
        key = (str(c["id"]), str(c["computed_from"]))
        if key in out:
            continue
        first, second = c["members"][0], c["members"][1]
        dt = _num(c.get("dt_s"))
        if dt is None and _num(c.get("dt_days")) is not None:
            dt = float(c["dt_days"]) * 86400.0
        out[key] = {"id": key[0], "computed_from": key[1], "kind": str(c["kind"]),
                    "trigger_group": str(first["group"]), "trigger_event_id": str(first["event_id"]),
                    "other_group": str(second["group"]), "other_event_id": str(second["event_id"]),
                    "dt_s": dt, "overlap_integral": _num(c.get("overlap_integral")),
                    "joint_far_hz": _num(c.get("joint_far_hz")), "coincident": bool(c.get("coincident", True)),
                    "retracted": bool(c.get("retracted", False)), "retracted_by": c.get("retracted_by"),
                    "record": dict(c)}
    return list(out.values())


def write_coincidences(engine: sa.Engine, records: Sequence[Mapping[str, Any]], owner: str | None = None
                       ) -> set[tuple[str, str]]:
    """The enrich loop's durable write of a batch's coincidence records, in one transaction.

    With ``owner`` (``[lanes]``), first claim the versions of the kinds both lanes may
    find (:data:`CROSS_LANE_KINDS`) as :func:`broker.enrich.claims.claim_coincidences`
    does; then store the rows of the versions the loop owns — the claimed ones and every
    version of the other kinds — in one ``INSERT ... ON CONFLICT (id, computed_from) DO
    NOTHING`` (a replayed batch writes nothing new). Committed on return, before the
    loop's Kafka transaction.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine (schema at migration 0013 or later).
    records : sequence of mapping
        The batch's ``mma.coincidences`` records.
    owner : str, optional
        The loop's name (``enrich.<lane>``); None without lanes: every version is this
        loop's and nothing is claimed.

    Returns
    -------
    set of (str, str)
        (``id``, ``computed_from``) of the versions this loop owns (publishes): all of
        them but the trigger–optical ones another lane claimed first.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database refused the write (nothing is claimed or stored; the batch is retried).
    """
    rows = coincidence_rows(records)
    if not rows:
        return set()
    keys = [(r["id"], r["computed_from"]) for r in rows]
    shared = [(r["id"], r["computed_from"]) for r in rows if owner is not None and r["kind"] in CROSS_LANE_KINDS]
    with engine.begin() as conn:
        mine = set(keys) - set(shared)
        if shared:
            from broker.enrich.claims import CLAIMS as t

            conn.execute(pg_insert(t).values([{"id": i, "computed_from": v, "owner": owner} for i, v in shared])
                         .on_conflict_do_nothing(index_elements=["id", "computed_from"]))
            mine |= {(r[0], r[1]) for r in conn.execute(
                sa.select(t.c.id, t.c.computed_from)
                .where(t.c.owner == owner, sa.tuple_(t.c.id, t.c.computed_from).in_(shared)))}
        kept = [r for r in rows if (r["id"], r["computed_from"]) in mine]
        if kept:
            conn.execute(_INSERT, {"rows": json.dumps(kept, allow_nan=False, separators=(",", ":"))})
    return mine


_COLUMNS = [c for c in COINCIDENCES.columns if c.name != "created_at"]
_INSERT = sa.text(
    f"INSERT INTO coincidences ({', '.join(c.name for c in _COLUMNS)}) "
    f"SELECT {', '.join(c.name for c in _COLUMNS)} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x("
    + ", ".join(f"{c.name} {c.type.compile(dialect=sa.dialects.postgresql.dialect())}" for c in _COLUMNS)
    + ") ON CONFLICT (id, computed_from) DO NOTHING")
"""One statement for a batch's rows: the rows travel as one JSON array (one parameter,
parsed by the server). 500 records of 1 kB: 13 ms, where SQLAlchemy's multi-row
``insert().values(rows)`` took 102 ms (its compilation; measured 2026-12-01 on this
2-core machine, medians of 5, docs/enrichment.md). ``created_at`` is the server's
``clock_timestamp()`` per row, so the rows of one batch keep their order."""


def latest_of_group(conn: sa.Connection, key: str, limit: int = 200) -> list[dict[str, Any]]:
    """The coincidences of group ``key`` (either member): the latest version of each id.

    Parameters
    ----------
    conn : sqlalchemy.Connection
    key : str
        Event group key (``igwn:S230518h``, ``gcn:fermi:745121685``...).
    limit : int
        At most this many coincidences, the most recently written first.

    Returns
    -------
    list of dict
        Newest first: the table's columns (``created_at`` a datetime, ``record`` the
        whole record) plus ``other_group`` / ``other_event_id`` rewritten to the member
        that is not ``key`` and ``role`` (``trigger`` or ``other``: which member ``key`` is).
    """
    t = COINCIDENCES
    latest = (sa.select(t).where(sa.or_(t.c.trigger_group == key, t.c.other_group == key))
              .order_by(t.c.id, t.c.created_at.desc(), t.c.computed_from.desc()).ext(distinct_on(t.c.id)).subquery())
    rows = conn.execute(sa.select(latest).order_by(latest.c.created_at.desc(), latest.c.id).limit(limit)).mappings()
    out = []
    for r in rows:
        d = dict(r)
        if d["trigger_group"] == key:
            d["role"] = "trigger"
        else:
            d["role"] = "other"
            d["other_group"], d["other_event_id"] = d["trigger_group"], d["trigger_event_id"]
        if isinstance(d["record"], str):  # a driver that returns JSONB as text
            d["record"] = json.loads(d["record"])
        out.append(d)
    return out
