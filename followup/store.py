"""Follow-up results in the archive database (table ``followup_results``, migration 0002).

One row per request id, written with ``INSERT ... ON CONFLICT DO NOTHING`` so a
redelivered or replayed request never makes a second row; ``published_at`` is set
once the row's message is acknowledged by Kafka, so a worker killed between the write
and the publication publishes it on redelivery, and a request whose result is both
stored and published is skipped. Every write retries while PostgreSQL is away
(:func:`broker.archive.retry.retry_transient`), as the ingest stage does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert

from broker.archive.retry import retry_transient

logger = logging.getLogger(__name__)


def followup_tables(metadata: sa.MetaData) -> sa.Table:
    """Define ``followup_results`` (as migration 0002 creates it) on ``metadata``."""
    return sa.Table(
        "followup_results",
        metadata,
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, comment="result | withdrawal"),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("upstream_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, comment="done | no_data | failed | withdrawn"),
        sa.Column("document", JSONB, nullable=False, comment="the message published on mma.followup.results"),
        sa.Column("summary_text", sa.Text, nullable=False),
        sa.Column("plot_png", sa.LargeBinary, nullable=True),
        sa.Column("withdrawn", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("withdrawn_by", sa.Text, nullable=True),
        sa.Column("withdrawn_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Index("ix_followup_results_upstream", "source", "upstream_id"),
        sa.Index("ix_followup_results_event", "event_id"),
    )


@dataclass(frozen=True)
class StoredResult:
    """One ``followup_results`` row."""

    request_id: str
    kind: str
    event_id: str
    source: str
    upstream_id: str
    status: str
    document: dict[str, Any]
    summary_text: str
    plot_png: bytes | None
    withdrawn: bool
    withdrawn_by: str | None
    published: bool


class FollowupStore:
    """Read and write ``followup_results``.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        The archive's engine (``Archive.engine``), schema migrated to 0002 or later.
    retry_deadline_s : float or None
        How long writes retry while the database is unreachable; None waits forever.
    """

    def __init__(self, engine: sa.Engine, retry_deadline_s: float | None = None) -> None:
        self.engine = engine
        self.table = followup_tables(sa.MetaData())
        self.retry_deadline_s = retry_deadline_s

    def _retry(self, fn: Any, what: str) -> Any:
        return retry_transient(fn, what=what, deadline_s=self.retry_deadline_s, secret=self.engine.url.password)

    def get(self, request_id: str) -> StoredResult | None:
        """The row of ``request_id``, or None."""
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.request_id == request_id)).mappings().first()
        return None if row is None else _stored(row)

    def insert(self, document: Mapping[str, Any], plot_png: bytes | None = None) -> bool:
        """Store a result or withdrawal document; False if its request id is already there.

        Parameters
        ----------
        document : mapping
            The message of ``mma.followup.results`` (``request_id``, ``kind``,
            ``event_id``, ``source``, ``upstream_id``, ``status``, ``summary_text``).
        plot_png : bytes, optional
        """
        t = self.table
        row = {
            "request_id": document["request_id"], "kind": document["kind"], "event_id": document["event_id"],
            "source": document["source"], "upstream_id": document["upstream_id"], "status": document["status"],
            "document": dict(document), "summary_text": document["summary_text"], "plot_png": plot_png,
            "withdrawn": document["status"] == "withdrawn" and document["kind"] == "result",
            "withdrawn_by": document.get("withdrawn_by"),
        }

        def txn() -> bool:
            with self.engine.begin() as conn:
                done = conn.execute(insert(t).values(**row).on_conflict_do_nothing().returning(t.c.request_id))
                return done.first() is not None

        return self._retry(txn, f"follow-up result {document['request_id']}")

    def mark_published(self, request_ids: Sequence[str]) -> None:
        """Record that these rows' messages were acknowledged by Kafka."""
        if not request_ids:
            return
        t = self.table

        def txn() -> None:
            with self.engine.begin() as conn:
                conn.execute(sa.update(t).where(t.c.request_id.in_(list(request_ids)), t.c.published_at.is_(None))
                             .values(published_at=sa.func.now()))

        self._retry(txn, f"marking {len(request_ids)} follow-up result(s) published")

    def withdraw(self, source: str, upstream_id: str, by: str, mission: str | None = None) -> list[str]:
        """Mark every result of ``(source, mission, upstream_id)`` withdrawn by retraction ``by``.

        ``mission`` (from the result document) keeps a retraction of one GCN mission
        from withdrawing another mission's results for the same trigger number; None
        matches any mission.

        Returns
        -------
        list of str
            Request ids newly marked (already withdrawn rows are left as they are).
        """
        t = self.table

        def txn() -> list[str]:
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.update(t)
                    .where(t.c.source == source, t.c.upstream_id == upstream_id, t.c.kind == "result",
                           t.c.withdrawn.is_(False),
                           *([t.c.document["mission"].astext == mission] if mission is not None else []))
                    .values(withdrawn=True, withdrawn_by=by, withdrawn_at=sa.func.now(),
                            document=t.c.document.op("||")(
                                sa.func.jsonb_build_object("withdrawn", True, "withdrawn_by", by)))
                    .returning(t.c.request_id)
                )
                return sorted(r[0] for r in rows)

        return self._retry(txn, f"withdrawing follow-ups of {upstream_id}")

    def withdrawal_for(self, source: str, upstream_id: str, mission: str | None = None) -> str | None:
        """Event id of a retraction already processed for ``(source, mission, upstream_id)``, or None."""
        t = self.table
        q = (sa.select(t.c.event_id).where(t.c.source == source, t.c.upstream_id == upstream_id,
                                           t.c.kind == "withdrawal",
                                           *([t.c.document["mission"].astext == mission] if mission else []))
             .limit(1))
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def list(self, upstream_id: str | None = None, limit: int = 100) -> list[StoredResult]:
        """Rows, newest first, optionally of one upstream id."""
        t = self.table
        q = sa.select(t).order_by(t.c.created_at.desc()).limit(limit)
        if upstream_id is not None:
            q = q.where(t.c.upstream_id == upstream_id)
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(q).mappings()]

    def count(self, event_id: str | None = None, upstream_id: str | None = None) -> int:
        """Number of rows (of one event id, of one upstream id)."""
        t = self.table
        q = sa.select(sa.func.count()).select_from(t)
        if event_id is not None:
            q = q.where(t.c.event_id == event_id)
        if upstream_id is not None:
            q = q.where(t.c.upstream_id == upstream_id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def _stored(row: Mapping[str, Any]) -> StoredResult:
    return StoredResult(
        request_id=row["request_id"], kind=row["kind"], event_id=row["event_id"], source=row["source"],
        upstream_id=row["upstream_id"], status=row["status"], document=row["document"],
        summary_text=row["summary_text"], plot_png=row["plot_png"], withdrawn=row["withdrawn"],
        withdrawn_by=row["withdrawn_by"], published=row["published_at"] is not None,
    )
