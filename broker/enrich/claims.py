"""Which lane publishes a trigger–optical coincidence both lanes found (issue 11, lanes).

With ``[lanes]`` a GW/GRB trigger (notices lane) and a ZTF/LSST candidate (optical lane)
are enriched by two loops that look for each other through the database; when both are
in flight, both may find the pair and build the same record (same ``id``, same
``computed_from``: docs/publishing-latency.md, "Coincidences across lanes"). So that
``mma.coincidences`` carries it once, each loop **claims** the (``id``,
``computed_from``) of the trigger–optical records of a batch in its durable write, before
its Kafka transaction, and publishes only those it holds (migration 0010, table
``coincidence_claims``):

- the first loop to commit a claim owns it; the other one's ``INSERT ... ON CONFLICT DO
  NOTHING`` waits for that commit and leaves the row as it is;
- the owner is the loop's name (``enrich.<lane>``), not a process: a batch replayed after
  a crash (its offsets were not committed) is claimed by the same name again and
  published, so a record is neither lost nor doubled;
- a new version of a pair (``computed_from`` changes, e.g. to the retraction that marks
  it ``retracted``) is a new claim.

The enrich stage claims through :func:`broker.enrich.coincidence_store.write_coincidences`,
which makes the same claims and, in the same transaction, stores the rows of the versions
the loop owns in table ``coincidences`` (migration 0013).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert


def claim_table(metadata: sa.MetaData) -> sa.Table:
    """Define migration 0010's ``coincidence_claims`` on ``metadata``.

    Columns: ``id`` and ``computed_from`` (primary key: one version of one coincidence
    record), ``owner`` (the enrich loop that publishes it), ``claimed_at``.
    """
    return sa.Table(
        "coincidence_claims", metadata,
        sa.Column("id", sa.Text, primary_key=True, comment="coincidence id, as keyed on mma.coincidences"),
        sa.Column("computed_from", sa.Text, primary_key=True, comment="the version: Event it was computed from"),
        sa.Column("owner", sa.Text, nullable=False, comment="enrich loop that publishes it (enrich.<lane>)"),
        sa.Column("claimed_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )


CLAIMS = claim_table(sa.MetaData())


def claim_coincidences(engine: sa.Engine, keys: Sequence[tuple[str, str]], owner: str) -> set[tuple[str, str]]:
    """Claim coincidence record versions for ``owner``; return those it holds.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine (schema at migration 0010 or later).
    keys : sequence of (str, str)
        (``id``, ``computed_from``) of the records the loop would publish.
    owner : str
        The loop's name (``enrich.<lane>``), the same in every process of the lane.

    Returns
    -------
    set of (str, str)
        The keys owned by ``owner`` after the claim (committed on return): claimed now,
        or earlier by the same loop (a replayed batch). The others belong to another loop,
        which publishes them.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database refused the write (nothing is claimed; the batch is retried).
    """
    keys = list(dict.fromkeys(keys))
    if not keys:
        return set()
    t = CLAIMS
    with engine.begin() as conn:
        conn.execute(pg_insert(t).values([{"id": i, "computed_from": v, "owner": owner} for i, v in keys])
                     .on_conflict_do_nothing(index_elements=["id", "computed_from"]))
        rows = conn.execute(sa.select(t.c.id, t.c.computed_from)
                            .where(t.c.owner == owner, sa.tuple_(t.c.id, t.c.computed_from).in_(keys))).all()
    return {(r[0], r[1]) for r in rows}


def expire_claims(engine: sa.Engine, before: float, *, dry_run: bool = False) -> tuple[int, int]:
    """Delete the claims made before ``before`` (``mma-broker archive gc``).

    A claim matters only while a batch that made it can be replayed (its offsets not yet
    committed) or the other lane can still find the same pair: seconds to hours. Past
    that the row is dead weight, and ``coincidence_claims`` would otherwise grow by one
    row per coincidence version forever. Deleting a claim that still mattered would let
    both lanes publish that version once each, so the caller's cut-off must be far
    older than a batch's replay window (gc uses its grace period, default 168 h).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine. An archive without the table (before migration 0010)
        has nothing to delete.
    before : float
        Unix time, s: claims with ``claimed_at`` strictly earlier go.
    dry_run : bool
        Only count.

    Returns
    -------
    (int, int)
        Rows in the table before, and rows deleted (with ``dry_run``: that would be).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database refused the query (nothing is deleted).
    """
    t = CLAIMS
    old = t.c.claimed_at < sa.func.to_timestamp(before)
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass('coincidence_claims')")).scalar() is None:
            return 0, 0
        total = int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
        if dry_run:
            return total, int(conn.execute(sa.select(sa.func.count()).select_from(t).where(old)).scalar_one())
        return total, conn.execute(sa.delete(t).where(old)).rowcount
