"""Cross-match results archived with the Event (issue 9, item 4).

The enrich stage publishes each Event's catalog cross-match on ``mma.events.enriched``
(``enrichment.crossmatch``) and stores the same objects here, one row per Event and
catalog (migration 0006, table ``event_crossmatches``), in the transaction that
indexes the batch's positions (:func:`write_enrichment`). A replay writes the same
rows again (``ON CONFLICT DO UPDATE``): the table holds the latest result per Event and
catalog. ``mma-broker events crossmatch ID`` reads them (:func:`crossmatches_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert


def crossmatch_table(metadata: sa.MetaData) -> sa.Table:
    """Define migration 0006's ``event_crossmatches`` on ``metadata``.

    Columns: ``event_id`` and ``catalog`` (primary key), ``kind`` (``skymap`` or
    ``point``), ``n_matched`` (sources inside the credible region, or within the
    combined error of a point — all of them, not only the ``top_n`` kept),
    ``localization_id`` (the map or point matched; for an Event without a map of its
    own, its group's best), ``result`` (the published object: level or containment,
    ranked ``matches`` with ligo.skymap's quantities or separations, ``nearest``),
    ``stored_at``.
    """
    return sa.Table(
        "event_crossmatches", metadata,
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("catalog", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, comment="skymap | point"),
        sa.Column("n_matched", sa.Integer, nullable=False, comment="inside the region / within the error"),
        sa.Column("localization_id", sa.Text, nullable=True, comment="the localization matched"),
        sa.Column("result", JSONB, nullable=False, comment="ranked matches, as published"),
        sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )


CROSSMATCHES = crossmatch_table(sa.MetaData())


def crossmatch_rows(event_id: str, crossmatch: Mapping[str, Any], localization_id: str | None) -> list[dict[str, Any]]:
    """The table rows of one Event's ``enrichment.crossmatch`` object.

    Parameters
    ----------
    event_id : str
    crossmatch : mapping
        Catalog name → result (``kind``, ``matches``, ``n_inside`` or ``n_matched``...),
        as the enrich stage publishes it. Entries that are not a catalog's result (the
        ``error`` of a map that could not be prepared) are left out.
    localization_id : str or None

    Returns
    -------
    list of dict
    """
    rows = []
    for name, res in crossmatch.items():
        if not isinstance(res, Mapping) or "kind" not in res:
            continue
        n = res.get("n_inside", res.get("n_matched", len(res.get("matches", ()))))
        rows.append({"event_id": event_id, "catalog": name, "kind": res["kind"], "n_matched": int(n),
                     "localization_id": localization_id, "result": dict(res)})
    return rows


def put_crossmatches(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Upsert rows of :func:`crossmatch_rows` on an open connection (idempotent).

    Returns
    -------
    int
        Rows written.
    """
    if not rows:
        return 0
    # one row per key within the statement (a batch holding an Event twice keeps the last)
    last = {(r["event_id"], r["catalog"]): r for r in rows}
    stmt = pg_insert(CROSSMATCHES)
    stmt = stmt.on_conflict_do_update(
        index_elements=[CROSSMATCHES.c.event_id, CROSSMATCHES.c.catalog],
        set_={c: stmt.excluded[c] for c in ("kind", "n_matched", "localization_id", "result")}
        | {"stored_at": sa.func.now()})
    conn.execute(stmt, list(last.values()))
    return len(last)


def write_enrichment(engine: sa.Engine, events: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """The enrich stage's durable write of one batch, in one transaction: the point
    positions (:func:`broker.enrich.store.index_positions`) and the cross-match rows.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database refused the write (nothing of the batch is written).
    """
    from broker.enrich.store import index_positions

    with engine.begin() as conn:
        if events:
            index_positions(conn, events)
        put_crossmatches(conn, rows)


def crossmatches_of(engine: sa.Engine, event_id: str) -> dict[str, dict[str, Any]]:
    """The stored cross-match of one Event: catalog name → row (``kind``, ``n_matched``,
    ``localization_id``, ``result``, ``stored_at`` as ISO text); empty when none."""
    t = CROSSMATCHES
    with engine.connect() as conn:
        res = conn.execute(sa.select(t).where(t.c.event_id == event_id).order_by(t.c.catalog)).mappings().all()
    return {r["catalog"]: {"kind": r["kind"], "n_matched": r["n_matched"], "localization_id": r["localization_id"],
                           "result": r["result"], "stored_at": r["stored_at"].isoformat()} for r in res}
