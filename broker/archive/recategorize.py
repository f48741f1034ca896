"""Fill or refresh ``events.category``/``category_rule`` of archived rows.

Rows archived before migration 0008 have NULL in both columns (the migration adds them
without a back-fill, docs/categories.md "In the archive"). :func:`broker.category.categorize`
reads only Event fields the archive keeps as columns (``source``, ``mission``,
``instrument``, ``alert_type``, ``properties``), so the category of a row is computed from
the row itself: no raw bytes are read or decoded. The same pass with ``all_rows=True``
recomputes every row after a change of the rules.

Rows are visited in pages in (time, id) order (keyset pagination, so a page costs the
same however far the pass has gone), each page updated in its own transaction: an
interrupted pass keeps what it wrote and the next one starts over the rows still NULL.
New rows written meanwhile by the ingest carry their category already.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from broker.archive.models import events
from broker.archive.rows import archived_from_row
from broker.category import categorize

__all__ = ["RecategorizeResult", "recategorize"]


@dataclass
class RecategorizeResult:
    """What a :func:`recategorize` pass did.

    Attributes
    ----------
    examined : int
        Rows read.
    updated : int
        Rows whose category or rule changed (all of them for rows that were NULL).
    categories : Counter
        Category → rows examined with that category after the pass.
    """

    examined: int = 0
    updated: int = 0
    categories: Counter = field(default_factory=Counter)

    def to_json_dict(self) -> dict:
        return {"examined": self.examined, "updated": self.updated,
                "categories": dict(sorted(self.categories.items()))}


_UPDATE = (
    sa.update(events)
    .where(events.c.id == sa.bindparam("b_id"))
    .values(category=sa.bindparam("b_category"), category_rule=sa.bindparam("b_rule"))
)


def recategorize(
    engine: sa.Engine,
    *,
    all_rows: bool = False,
    page_size: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> RecategorizeResult:
    """Compute the category of archived rows and store it.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine, schema at migration 0008 or later.
    all_rows : bool
        False (default): only rows whose ``category`` is NULL. True: every row, writing
        those whose stored category or rule differs from the current rules'.
    page_size : int
        Rows read and updated per transaction (>= 1).
    progress : callable (done, total) or None
        Called after each page with the rows examined so far and the number of rows the
        pass set out to examine (counted once at the start).

    Returns
    -------
    RecategorizeResult

    Raises
    ------
    ValueError
        ``page_size < 1``.
    sqlalchemy.exc.DBAPIError
        The database failed; pages already committed stay written.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    e = events.c
    todo = sa.true() if all_rows else e.category.is_(None)
    with engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(events).where(todo)).scalar_one())
    result = RecategorizeResult()
    if progress is not None:
        progress(0, total)
    after = None
    while True:
        q = sa.select(events).where(todo)
        if after is not None:
            q = q.where(sa.or_(e.time > after[0], sa.and_(e.time == after[0], e.id > after[1])))
        q = q.order_by(e.time, e.id).limit(page_size)
        with engine.begin() as conn:
            rows = conn.execute(q).mappings().all()
            if not rows:
                break
            after = (rows[-1]["time"], rows[-1]["id"])
            changes = []
            for r in rows:
                category, rule = categorize(archived_from_row(r).event)
                result.categories[category] += 1
                if (category, rule) != (r["category"], r["category_rule"]):
                    changes.append({"b_id": r["id"], "b_category": category, "b_rule": rule})
            if changes:
                conn.execute(_UPDATE, changes)
        result.examined += len(rows)
        result.updated += len(changes)
        if progress is not None:
            progress(result.examined, total)
    return result
