"""Follow-up results and their artifacts in the archive database.

``followup_results`` (migrations 0002, 0003): one row per request id, written with
``INSERT ... ON CONFLICT DO NOTHING`` so a redelivered or replayed request never makes
a second row; ``published_at`` is set once the row's message is acknowledged by Kafka,
so a worker killed between the write and the publication publishes it on redelivery,
and a request whose result is both stored and published is skipped. Every write
retries while PostgreSQL is away (:func:`broker.archive.retry.retry_transient`), as
the ingest stage does.

Rows have a ``kind``: ``result`` and ``withdrawal`` rows are the messages of
``mma.followup.results``; ``skipped`` rows record a request that was not analysed (a
revision that adds nothing to its group's follow-up, or one of a retracted trigger)
and are never published. Rows of one trigger or superevent share a ``group_key``
(the enrich stage's event group, :func:`broker.enrich.groups.group_key`;
migration 0007 rewrote older rows' keys to it); a newer result of the group *supersedes* the
earlier one (``superseded_by``), in the same transaction that stores it.

``followup_artifacts`` (migration 0003): PNG plots and user-supplied sky maps,
content-addressed by sha256. The bytes go to the archive's raw store
(:meth:`broker.archive.Archive.store_raw`: fsynced segment files or the
``raw_messages`` table, verified by sha256 on every read), the same store that keeps
raw alerts; this table maps the sha256 to the stored copy and its media type. Results
refer to an artifact by :func:`artifact_ref` (``mma-broker://artifact/sha256/<hex>``),
never by a path of the machine that made it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert

from broker.archive.retry import retry_transient

logger = logging.getLogger(__name__)


ARTIFACT_PREFIX = "mma-broker://artifact/sha256/"
"""Reference of an artifact in results: this prefix and the sha256 in hex."""


def artifact_ref(sha256: str) -> str:
    """The reference of an artifact in result documents (no host path)."""
    return ARTIFACT_PREFIX + sha256


def followup_tables(metadata: sa.MetaData) -> sa.Table:
    """Define ``followup_results`` (as migrations 0002 and 0003 leave it) on ``metadata``."""
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
        sa.Column("group_key", sa.Text, nullable=True, comment="broker.enrich.groups.group_key of the event"),
        sa.Column("superseded_by", sa.Text, nullable=True, comment="request id of the newer result of the group"),
        sa.Column("superseded_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Index("ix_followup_results_upstream", "source", "upstream_id"),
        sa.Index("ix_followup_results_event", "event_id"),
        sa.Index("ix_followup_results_group", "group_key"),
    )


def artifact_table(metadata: sa.MetaData) -> sa.Table:
    """Define ``followup_artifacts`` (migration 0003) on ``metadata``."""
    return sa.Table(
        "followup_artifacts",
        metadata,
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("raw_segment", sa.Text, nullable=True, comment="RawRef.segment (file raw store)"),
        sa.Column("raw_offset", sa.BigInteger, nullable=True, comment="RawRef.offset (file raw store)"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
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
    group_key: str | None = None
    superseded_by: str | None = None


PUBLISHED_KINDS = ("result", "withdrawal")
"""Kinds of rows that are messages of ``mma.followup.results``."""


class FollowupStore:
    """Read and write ``followup_results``.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        The archive's engine (``Archive.engine``), schema migrated to 0003 or later.
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

    def resolve(self, prefix: str) -> list[str]:
        """Request ids starting with ``prefix`` (hex digits, case-insensitive), at most 2.

        Lets people type the first 8 or so digits of an id, as with git commits.
        """
        prefix = prefix.lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        t = self.table
        q = sa.select(t.c.request_id).where(t.c.request_id.startswith(prefix, autoescape=True)).limit(2)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def insert(self, document: Mapping[str, Any], plot_png: bytes | None = None,
               supersedes: str | None = None) -> bool:
        """Store a result, withdrawal or skipped-request document; False if its request id is already there.

        Parameters
        ----------
        document : mapping
            The message of ``mma.followup.results`` (``request_id``, ``kind``,
            ``event_id``, ``source``, ``upstream_id``, ``status``, ``summary_text``;
            ``group``: the group key), or a ``skipped`` record.
        plot_png : bytes, optional
            Kept only for callers of the 0002 layout; new results keep their plot in
            ``followup_artifacts`` (:class:`ArtifactStore`) and leave this empty.
        supersedes : str, optional
            Request id of the group's earlier result; in the same transaction it gets
            ``superseded_by`` = this request id (column and document), unless the row
            is new to nobody (the insert found the id already stored).
        """
        t = self.table
        rid = document["request_id"]
        row = {
            "request_id": rid, "kind": document["kind"], "event_id": document["event_id"],
            "source": document["source"], "upstream_id": document["upstream_id"], "status": document["status"],
            "document": dict(document), "summary_text": document["summary_text"], "plot_png": plot_png,
            "withdrawn": document["status"] == "withdrawn" and document["kind"] == "result",
            "withdrawn_by": document.get("withdrawn_by"), "group_key": document.get("group"),
        }

        def txn() -> bool:
            with self.engine.begin() as conn:
                done = conn.execute(insert(t).values(**row).on_conflict_do_nothing().returning(t.c.request_id))
                new = done.first() is not None
                if new and supersedes is not None:
                    conn.execute(
                        sa.update(t).where(t.c.request_id == supersedes, t.c.superseded_by.is_(None))
                        .values(superseded_by=rid, superseded_at=sa.func.now(),
                                document=t.c.document.op("||")(sa.func.jsonb_build_object("superseded_by", rid))))
                return new

        return self._retry(txn, f"follow-up result {rid}")

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

    def current(self, group: str) -> StoredResult | None:
        """The group's follow-up now: its latest ``result`` row that nothing superseded, or None."""
        t = self.table
        q = (sa.select(t).where(t.c.group_key == group, t.c.kind == "result", t.c.superseded_by.is_(None))
             .order_by(t.c.created_at.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else _stored(row)

    def withdraw(self, group: str, by: str) -> list[str]:
        """Mark every result of the group withdrawn by retraction ``by``.

        Parameters
        ----------
        group : str
            :func:`broker.enrich.groups.group_key` of the retraction (mission and
            trigger id for GCN: a retraction of one GCN mission never withdraws another
            mission's results for the same trigger number).
        by : str
            Event id of the retraction.

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
                    .where(t.c.group_key == group, t.c.kind == "result", t.c.withdrawn.is_(False))
                    .values(withdrawn=True, withdrawn_by=by, withdrawn_at=sa.func.now(),
                            document=t.c.document.op("||")(
                                sa.func.jsonb_build_object("withdrawn", True, "withdrawn_by", by)))
                    .returning(t.c.request_id)
                )
                return sorted(r[0] for r in rows)

        return self._retry(txn, f"withdrawing follow-ups of {group}")

    def withdrawal_for(self, group: str, with_request_id: bool = False) -> Any:
        """Event id of a retraction already processed for the group, or None.

        With ``with_request_id``: ``(event id, request id)`` of that withdrawal, or None.
        """
        t = self.table
        q = (sa.select(t.c.event_id, t.c.request_id).where(t.c.group_key == group, t.c.kind == "withdrawal")
             .order_by(t.c.created_at).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        return (row[0], row[1]) if with_request_id else row[0]

    def list(self, upstream_id: str | None = None, limit: int = 100,
             kinds: Sequence[str] | None = PUBLISHED_KINDS) -> list[StoredResult]:
        """Rows, newest first, optionally of one upstream id; ``kinds`` None: every kind."""
        t = self.table
        q = sa.select(t).order_by(t.c.created_at.desc(), t.c.request_id).limit(limit)
        if upstream_id is not None:
            q = q.where(t.c.upstream_id == upstream_id)
        if kinds is not None:
            q = q.where(t.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(q).mappings()]

    def count(self, event_id: str | None = None, upstream_id: str | None = None,
              kinds: Sequence[str] | None = PUBLISHED_KINDS) -> int:
        """Number of rows (of one event id, of one upstream id; ``kinds`` None: every kind)."""
        t = self.table
        q = sa.select(sa.func.count()).select_from(t)
        if event_id is not None:
            q = q.where(t.c.event_id == event_id)
        if upstream_id is not None:
            q = q.where(t.c.upstream_id == upstream_id)
        if kinds is not None:
            q = q.where(t.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def _stored(row: Mapping[str, Any]) -> StoredResult:
    return StoredResult(
        request_id=row["request_id"], kind=row["kind"], event_id=row["event_id"], source=row["source"],
        upstream_id=row["upstream_id"], status=row["status"], document=row["document"],
        summary_text=row["summary_text"], plot_png=row["plot_png"], withdrawn=row["withdrawn"],
        withdrawn_by=row["withdrawn_by"], published=row["published_at"] is not None,
        group_key=row.get("group_key"), superseded_by=row.get("superseded_by"),
    )


class ArtifactStore:
    """Content-addressed artifacts (PNG plots, sky maps) in the archive's raw store.

    Parameters
    ----------
    archive : broker.archive.Archive
        Its raw store keeps the bytes (:meth:`~broker.archive.Archive.store_raw`,
        :meth:`~broker.archive.Archive.raw_by_ref`); its engine the index table
        ``followup_artifacts`` (schema migrated to 0003 or later).
    """

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self.table = artifact_table(sa.MetaData())

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Store ``data`` once (by sha256) and return its description for a result.

        The bytes are durable in the raw store before the index row is written, so a
        crash in between leaves an unreferenced copy, never a dangling reference.

        Parameters
        ----------
        data : bytes
        media_type : str
            ``image/png``, ``application/fits``.

        Returns
        -------
        dict
            ``{"sha256", "bytes", "media_type", "ref"}``; ``ref`` is :func:`artifact_ref`.
        """
        digest = hashlib.sha256(data).hexdigest()
        t, engine = self.table, self.archive.engine
        with engine.connect() as conn:
            known = conn.execute(sa.select(t.c.sha256).where(t.c.sha256 == digest)).first() is not None
        if not known:
            (ref,) = self.archive.store_raw([data])

            def txn() -> None:
                with engine.begin() as conn:
                    conn.execute(insert(t).values(sha256=digest, media_type=media_type, length=len(data),
                                                  raw_segment=ref.segment, raw_offset=ref.offset)
                                 .on_conflict_do_nothing())

            retry_transient(txn, what=f"artifact {digest[:12]}", deadline_s=self.archive.retry_deadline_s,
                            secret=engine.url.password)
        return {"sha256": digest, "bytes": len(data), "media_type": media_type, "ref": artifact_ref(digest)}

    def get(self, sha256_or_ref: str) -> tuple[bytes, str]:
        """The bytes and media type of an artifact, sha256-verified.

        Parameters
        ----------
        sha256_or_ref : str
            The hex digest or its :func:`artifact_ref`.

        Raises
        ------
        KeyError
            No such artifact in ``followup_artifacts``.
        broker.archive.raw.RawStoreError
            The bytes are missing from the raw store or corrupt.
        """
        from broker.archive.raw import RawRef

        digest = sha256_or_ref.removeprefix(ARTIFACT_PREFIX)
        t = self.table
        with self.archive.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.sha256 == digest)).mappings().first()
        if row is None:
            raise KeyError(f"no follow-up artifact {digest}")
        ref = RawRef(sha256=digest, length=row["length"], segment=row["raw_segment"], offset=row["raw_offset"])
        return self.archive.raw_by_ref(ref), row["media_type"]
