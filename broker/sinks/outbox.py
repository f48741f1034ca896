"""The outbox: every message the broker sends out is written here first, then sent.

The transactional-outbox pattern (C. Richardson, *Microservices Patterns*, ch. 3.3.7):
the reports stage writes an entry — the message exactly as it will be sent, under an
idempotency key — in the archive's PostgreSQL (table ``outbox``, migration 0009);
the sender stage ``publish`` (:mod:`broker.sinks.stage`) claims due entries, sends
them through their channel and records what the channel answered. So a crash never
loses a message (it is in the table before anything is sent) and never sends one twice:

* an entry is claimed (``queued`` → ``sending``) by one sender only
  (``FOR UPDATE SKIP LOCKED``), stamped with the sender's *claim token*;
* every live sender holds a PostgreSQL session advisory lock on its token
  (``pg_advisory_lock(OUTBOX_LOCK_CLASS, token)``); the server releases it the moment the
  sender's connection dies (``kill -9``, a lost host). An entry left in ``sending``
  whose token is no longer locked is an *orphan* (:meth:`Outbox.orphans`): the sender
  that finds it asks the channel (:meth:`broker.sinks.channels.Channel.recover`) whether
  it went out — Kafka channels look for the entry's key on their topic — and marks it
  ``sent`` with the receipt found, puts it back in the queue, or, on a channel that
  cannot tell (SMTP, TNS), marks it ``unknown``: never re-sent automatically;
* ``put`` is idempotent on the key: the same key with the same payload (and channel)
  returns the existing entry, the same key with a different payload is an error
  naming the key (:class:`OutboxConflict`).

States (:data:`STATES`)::

    put ─┬─ requires_approval ─► pending_approval ─ approve ─► queued ─ reject ─► rejected
         └────────────────────────────────────────────────────► queued
    queued ─ claim ─► sending ─┬─ mark_sent ─► sent
                               ├─ mark_failed ─► failed ── retry_at due ─► (claimed again)
                               └─ crash ─► (orphan) ─ recover ─► sent | queued | unknown
    unsent (pending_approval, queued, failed) ─ withdraw_group / replaced ─► withdrawn
    failed, unknown, rejected ─ retry ─► queued
    pending_approval ─ edit ─► pending_approval (new payload and payload_sha256)

Every decision by a person (approve, reject, edit, retry) is also written to
``outbox_audit`` (migration 0012) in the transaction that makes it: who, when, the
state and the payload's sha256 before and after (:meth:`Outbox.audit`).

Every timestamp is UTC (``timestamptz``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert

from broker.errors import BrokerError
from broker.text import one_line

log = logging.getLogger(__name__)

STATES = ("pending_approval", "queued", "sending", "sent", "failed", "withdrawn", "rejected", "unknown")
"""Outbox entry states. ``unknown``: a crash after a send began and before it was
recorded, on a channel that cannot tell whether it went out (SMTP, TNS): never re-sent
automatically; ``mma-broker outbox retry ID`` after checking."""

UNSENT_STATES = ("pending_approval", "queued", "failed")
"""States a withdrawal or a replacement turns into ``withdrawn``."""

RETRYABLE_STATES = ("failed", "unknown", "rejected", "withdrawn")
"""States ``outbox retry`` puts back in the queue."""

OUTBOX_LOCK_CLASS = 0x6D6D6131
"""First key of the two-key advisory locks of the senders' claim tokens ("mma1")."""

MAX_ERROR_CHARS = 2000

NOTIFY_CHANNEL = "mma_outbox"
"""PostgreSQL ``NOTIFY`` channel: a transaction that makes an entry due (``put`` of a
queued entry, ``approve``, ``retry``) notifies it on commit, and the senders, which
``LISTEN`` on it (:meth:`Outbox.wait`), wake at once instead of at their next poll."""


class OutboxError(BrokerError):
    """An outbox operation that cannot be done (no such entry, wrong state)."""


class OutboxConflict(OutboxError):
    """``put`` with a key that exists with a different payload or channel."""


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """Define ``outbox`` (migration 0009) on ``metadata``."""
    return sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("key", sa.Text, nullable=False, unique=True, comment="idempotency key"),
        sa.Column("channel", sa.Text, nullable=False, comment="hermes | gcn-notice | gcn-circular | tns | ..."),
        sa.Column("payload", JSONB, nullable=False, comment="the message as it will be sent"),
        sa.Column("payload_sha256", sa.Text, nullable=False, comment="sha256 of the canonical JSON payload"),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("source_event_id", sa.Text, nullable=True, comment="Event the message is about"),
        sa.Column("group_key", sa.Text, nullable=True, comment="event group (enrich) the message is about"),
        sa.Column("replaces", sa.Text, nullable=True, comment="key of the entry this one supersedes"),
        sa.Column("requires_approval", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0", comment="sends tried"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("receipt", JSONB, nullable=True, comment="what the channel returned"),
        sa.Column("retry_at", sa.TIMESTAMP(timezone=True), nullable=True,
                  comment="queued: not before; failed: claimed again then (NULL: only by hand)"),
        sa.Column("poll_at", sa.TIMESTAMP(timezone=True), nullable=True,
                  comment="sent with a pending reply: ask the channel again then"),
        sa.Column("claim_token", sa.Integer, nullable=True, comment="advisory-lock token of the claiming sender"),
        sa.Column("claimed_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("approved_by", sa.Text, nullable=True),
        sa.Column("approved_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("decided_by", sa.Text, nullable=True, comment="who rejected, withdrew or retried it last"),
        sa.Column("decision", sa.Text, nullable=True, comment="why it was rejected, withdrawn or retried"),
        sa.CheckConstraint("state IN ('" + "', '".join(STATES) + "')", name="ck_outbox_state"),
        sa.Index("ix_outbox_due", "retry_at", "id", postgresql_where=sa.text("state IN ('queued', 'failed')")),
        sa.Index("ix_outbox_group_key", "group_key"),
        sa.Index("ix_outbox_source_event_id", "source_event_id"),
        sa.Index("ix_outbox_state_channel", "state", "channel"),
    )


OUTBOX = outbox_table(sa.MetaData())


AUDIT_ACTIONS = ("approve", "reject", "edit", "retry")
"""Decisions recorded in ``outbox_audit`` (:meth:`Outbox.audit`)."""


def outbox_audit_table(metadata: sa.MetaData) -> sa.Table:
    """Define ``outbox_audit`` (migration 0012) on ``metadata``: who decided what, when."""
    return sa.Table(
        "outbox_audit",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("outbox_id", sa.BigInteger, sa.ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.Text, nullable=False, comment="approve | reject | edit | retry"),
        sa.Column("actor", sa.Text, nullable=False, comment="who: a desk login, a token's user, or --by of the CLI"),
        sa.Column("at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("state_before", sa.Text, nullable=False),
        sa.Column("state_after", sa.Text, nullable=False),
        sa.Column("sha256_before", sa.Text, nullable=False, comment="payload_sha256 before the decision"),
        sa.Column("sha256_after", sa.Text, nullable=False, comment="payload_sha256 after it (differs for an edit)"),
        sa.Column("detail", sa.Text, nullable=True, comment="reason of a rejection, what an edit changed"),
        sa.CheckConstraint("action IN ('" + "', '".join(AUDIT_ACTIONS) + "')", name="ck_outbox_audit_action"),
        sa.Index("ix_outbox_audit_outbox_id", "outbox_id", "id"),
        sa.Index("ix_outbox_audit_at", "at"),
    )


OUTBOX_AUDIT = outbox_audit_table(sa.MetaData())


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox row.

    Attributes
    ----------
    id : int
    key : str
        Idempotency key, unique (e.g. ``"hermes:followup:<request_id>"``).
    channel : str
        ``"hermes"``, ``"gcn-notice"``, ``"gcn-circular"``, ``"tns"`` (or an extra channel).
    payload : dict
        The message as it will be sent (JSON-ready); the channel validates it.
    state : str
        One of :data:`STATES`.
    source_event_id, group_key : str or None
        The Event and event group it is about (withdrawals find it by group).
    requires_approval : bool
    attempts : int
        Sends tried so far.
    last_error : str or None
        The last failure (one line, no secrets).
    receipt : dict or None
        What the channel returned: Kafka topic/partition/offset, SMTP Message-ID, TNS
        report id / object name / feedback. ``pending: true`` means a reply is awaited
        (polled at ``poll_at``).
    replaces : str or None
        Key of the entry it superseded.
    retry_at, poll_at, claimed_at, created_at, updated_at, sent_at, approved_at : datetime or None
        UTC.
    claim_token : int or None
    approved_by, decided_by, decision : str or None
    """

    id: int
    key: str
    channel: str
    payload: dict
    state: str
    source_event_id: str | None = None
    group_key: str | None = None
    requires_approval: bool = False
    attempts: int = 0
    last_error: str | None = None
    receipt: dict | None = None
    replaces: str | None = None
    retry_at: datetime | None = None
    poll_at: datetime | None = None
    claim_token: int | None = None
    claimed_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    sent_at: datetime | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None
    decided_by: str | None = None
    decision: str | None = None
    payload_sha256: str = ""

    @classmethod
    def from_row(cls, row: Any) -> "OutboxEntry":
        m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        return cls(**{k: m[k] for k in cls.__dataclass_fields__ if k in m})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601 UTC with ``Z``)."""
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if isinstance(v, datetime):
                v = v.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            out[k] = v
        return out


def canonical_sha256(payload: dict) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys, no spaces, UTF-8).

    Raises
    ------
    TypeError
        The payload is not JSON-ready (a datetime, bytes, NaN is refused as ValueError).
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Outbox:
    """The ``outbox`` table of the archive.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine (schema at migration 0009 or later).
    channels : mapping of str to Channel, optional
        When given, :meth:`put` validates the payload with its channel's ``validate``
        before writing (an invalid message is refused before it is stored).
    token : int, optional
        Claim token of this instance (random by default): see the module docstring.
    approval : callable, optional
        ``approval(channel, payload) -> bool``: whether the operator's settings require
        approval for such an entry (:meth:`broker.sinks.config.PublishSettings.requires_approval`;
        :func:`broker.sinks.build.make_outbox` passes it). It is a floor: ``put`` cannot
        waive it.
    """

    def __init__(self, engine: sa.Engine, *, channels: dict[str, Any] | None = None,
                 token: int | None = None, approval: Callable[[str, dict], bool] | None = None) -> None:
        self.engine = engine
        self.t = OUTBOX
        self.channels = channels
        self.approval = approval
        self.token = token if token is not None else random.SystemRandom().randrange(1, 2**31 - 1)
        self._lock_conn: sa.Connection | None = None
        self._lock_guard = threading.Lock()

    # ------------------------------------------------------------------ writing
    def put(self, key: str, channel: str, payload: dict, *, source_event_id: str | None = None,
            group_key: str | None = None, requires_approval: bool | None = None,
            replaces: str | None = None) -> OutboxEntry:
        """Write an entry (``queued``, or ``pending_approval``), idempotently on ``key``.

        Parameters
        ----------
        key : str
            Idempotency key (non-empty, at most 500 characters).
        channel : str
        payload : dict
            JSON-ready message.
        source_event_id, group_key : str, optional
        requires_approval : bool, optional
            True: starts in ``pending_approval``, sent only after :meth:`approve`. The
            operator's policy (``approval``) applies in any case: an entry it requires
            approval for needs it whatever is passed here.
        replaces : str, optional
            Key of an earlier entry this one supersedes: if that one is still unsent
            it is withdrawn in the same transaction (``decision`` names this key).

        Returns
        -------
        OutboxEntry
            The new entry, or the existing one of the same key and payload.

        Raises
        ------
        OutboxConflict
            ``key`` exists with another payload or channel (the message names the key).
        ValueError
            Empty or too long key, a payload that is not a JSON object, or one the
            channel's ``validate`` refuses.
        """
        if not key or len(key) > 500:
            raise ValueError(f"outbox key must have 1 to 500 characters, got {len(key)}")
        if not isinstance(payload, dict):
            raise ValueError(f"outbox {key}: payload must be a JSON object, got {type(payload).__name__}")
        digest = canonical_sha256(payload)
        if self.channels is not None and channel in self.channels:
            self.channels[channel].validate(payload)
        requires_approval = bool(requires_approval) or bool(self.approval and self.approval(channel, payload))
        state = "pending_approval" if requires_approval else "queued"
        now = _now()
        t = self.t
        with self.engine.begin() as conn:
            # a queued entry NOTIFYs the senders in the INSERT itself (delivered at commit; no
            # row inserted, no notification): one round trip fewer on the way to the sender
            returning = [*t.c, sa.func.pg_notify(NOTIFY_CHANNEL, "").label("_notified")] if state == "queued" \
                else list(t.c)
            row = conn.execute(
                insert(t).values(key=key, channel=channel, payload=payload, payload_sha256=digest, state=state,
                                 source_event_id=source_event_id, group_key=group_key, replaces=replaces,
                                 requires_approval=requires_approval, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["key"]).returning(*returning)).first()
            if row is None:
                existing = conn.execute(sa.select(t).where(t.c.key == key)).first()
                if existing is None:  # pragma: no cover - a concurrent delete; there is none
                    raise OutboxError(f"outbox {key}: inserted concurrently and gone")
                e = OutboxEntry.from_row(existing)
                if e.payload_sha256 != digest or e.channel != channel:
                    what = "channel" if e.channel != channel else "payload"
                    raise OutboxConflict(f"outbox key {key!r} exists (entry {e.id}, {e.state}) with another {what}: "
                                         "an idempotency key names one message; give a changed message a new key "
                                         "(and replaces= the old one)")
                return e
            if replaces:
                conn.execute(t.update().where(t.c.key == replaces, t.c.state.in_(UNSENT_STATES))
                             .values(state="withdrawn", decided_by=f"replaced by {key}", retry_at=None,
                                     decision="replaced", updated_at=now))
            return OutboxEntry.from_row(row)

    # ------------------------------------------------------------------ reading
    def get(self, id_or_key: int | str) -> OutboxEntry | None:
        """The entry of an id (int, or a string of digits) or of a key; None if absent."""
        t = self.t
        if isinstance(id_or_key, int) or (isinstance(id_or_key, str) and id_or_key.isdigit()):
            cond = t.c.id == int(id_or_key)
            if isinstance(id_or_key, str):
                cond = sa.or_(cond, t.c.key == id_or_key)
        else:
            cond = t.c.key == id_or_key
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(cond).order_by(t.c.id).limit(1)).first()
        return OutboxEntry.from_row(row) if row is not None else None

    def list(self, *, state: str | None = None, channel: str | None = None, group_key: str | None = None,
             limit: int = 100) -> list[OutboxEntry]:
        """Entries, newest first.

        Raises
        ------
        ValueError
            An unknown state.
        """
        t = self.t
        q = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        if state is not None:
            if state not in STATES:
                raise ValueError(f"unknown outbox state {state!r}: one of {', '.join(STATES)}")
            q = q.where(t.c.state == state)
        if channel is not None:
            q = q.where(t.c.channel == channel)
        if group_key is not None:
            q = q.where(t.c.group_key == group_key)
        with self.engine.connect() as conn:
            return [OutboxEntry.from_row(r) for r in conn.execute(q)]

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of entries per (channel, state)."""
        t = self.t
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.channel, t.c.state, sa.func.count()).group_by(t.c.channel, t.c.state))
            return {(c, s): n for c, s, n in rows}

    def due_count(self, now: datetime | None = None, *, channels: Iterable[str] | None = None) -> int:
        """Entries a claim would take now (queued and due, failed with a due ``retry_at``),
        of ``channels`` only when given."""
        t = self.t
        cond = self._due(now or _now())
        if channels is not None:
            cond = sa.and_(cond, t.c.channel.in_(list(channels)))
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(t).where(cond)).scalar_one()

    # ------------------------------------------------------------------ decisions
    def _transition(self, id: int, allowed: tuple[str, ...], verb: str, *,
                    audit: tuple[str, str, str | None] | None = None, **values: Any) -> OutboxEntry:
        t = self.t
        values.setdefault("updated_at", _now())
        with self.engine.begin() as conn:
            before = None
            if audit is not None:  # the row as it was, locked until the audit row is written with the change
                before = conn.execute(sa.select(t.c.state, t.c.payload_sha256).where(t.c.id == int(id))
                                      .with_for_update()).first()
            row = conn.execute(t.update().where(t.c.id == int(id), t.c.state.in_(allowed)).values(**values)
                               .returning(*t.c)).first()
            if row is not None and before is not None:
                action, by, detail = audit
                conn.execute(OUTBOX_AUDIT.insert().values(
                    outbox_id=int(id), action=action, actor=one_line(by, 200), at=values["updated_at"],
                    state_before=before.state, state_after=row.state, sha256_before=before.payload_sha256,
                    sha256_after=row.payload_sha256, detail=one_line(detail, 500) if detail else None))
            if row is not None and values.get("state") == "queued":
                _notify(conn)
            if row is None:
                cur = conn.execute(sa.select(t.c.state).where(t.c.id == int(id))).scalar_one_or_none()
                if cur is None:
                    raise OutboxError(f"no outbox entry {id}")
                raise OutboxError(f"outbox entry {id} is {cur}: only an entry that is {' or '.join(allowed)} "
                                  f"can be {verb}")
        return OutboxEntry.from_row(row)

    def approve(self, id: int, by: str) -> OutboxEntry:
        """``pending_approval`` → ``queued`` (due now), recording who approved.

        Raises
        ------
        OutboxError
            No such entry, or it is not pending approval.
        """
        now = _now()
        return self._transition(id, ("pending_approval",), "approved", state="queued", approved_by=by,
                                approved_at=now, retry_at=None, updated_at=now, audit=("approve", by, None))

    def reject(self, id: int, by: str, reason: str) -> OutboxEntry:
        """``pending_approval`` (or ``queued``, ``failed``) → ``rejected``: never sent.

        Raises
        ------
        OutboxError
            No such entry, or it is being sent or was sent already.
        """
        return self._transition(id, ("pending_approval", "queued", "failed", "unknown"), "rejected",
                                state="rejected", decided_by=by, decision=one_line(reason, 500), retry_at=None,
                                audit=("reject", by, reason))

    def retry(self, id: int, by: str) -> OutboxEntry:
        """``failed``, ``unknown``, ``rejected`` or ``withdrawn`` → ``queued``, due now.

        For ``unknown``: only after checking on the channel that it did not go out.
        A retried entry that requires approval and was never approved goes back to
        ``pending_approval``.

        Raises
        ------
        OutboxError
            No such entry, or it is queued, pending, being sent or sent.
        """
        e = self.get(int(id))
        if e is None:
            raise OutboxError(f"no outbox entry {id}")
        state = "pending_approval" if e.requires_approval and e.approved_at is None else "queued"
        return self._transition(id, RETRYABLE_STATES, "retried", state=state, retry_at=None, decided_by=by,
                                decision=f"retry (was {e.state})", audit=("retry", by, f"was {e.state}"))

    def edit(self, id: int, by: str, payload: dict) -> OutboxEntry:
        """Replace the payload of an entry still ``pending_approval`` (the approval desk's edit).

        The new payload is validated by the entry's channel first (when this outbox has
        its channels), ``payload_sha256`` is recomputed, and an ``outbox_audit`` row with
        the sha256 before and after is written in the same transaction. The key stays:
        the entry is the same message, changed before anyone approved it.

        Parameters
        ----------
        id : int
        by : str
            Who edits (kept in the audit row).
        payload : dict
            The whole new payload (JSON-ready).

        Returns
        -------
        OutboxEntry
            The entry with its new payload, still ``pending_approval``.

        Raises
        ------
        ValueError
            Not a JSON object, not JSON (NaN, a datetime), or refused by the channel's
            ``validate`` (the message names the field).
        OutboxError
            No such entry, or it is no longer pending approval (approved, rejected,
            sent: an edit never changes what was decided or sent).
        """
        if not isinstance(payload, dict):
            raise ValueError(f"outbox {id}: payload must be a JSON object, got {type(payload).__name__}")
        try:
            digest = canonical_sha256(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"outbox {id}: payload is not JSON ({exc})") from None
        e = self.get(int(id))
        if e is None:
            raise OutboxError(f"no outbox entry {id}")
        if self.channels is not None and e.channel in self.channels:
            self.channels[e.channel].validate(payload)
        detail = "no change" if digest == e.payload_sha256 else "payload replaced"
        return self._transition(id, ("pending_approval",), "edited", payload=payload, payload_sha256=digest,
                                audit=("edit", by, detail))

    def audit(self, id: int | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Decisions recorded in ``outbox_audit``, newest first: of entry ``id``, or of all.

        Returns
        -------
        list of dict
            ``id, outbox_id, action, actor, at, state_before, state_after,
            sha256_before, sha256_after, detail`` (``at`` a UTC datetime).
        """
        a = OUTBOX_AUDIT
        q = sa.select(a).order_by(a.c.id.desc()).limit(limit)
        if id is not None:
            q = q.where(a.c.outbox_id == int(id))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def withdraw_group(self, group_key: str, by_event_id: str) -> tuple[list[OutboxEntry], list[OutboxEntry]]:
        """A retraction of the group's source event: withdraw what was not sent.

        Parameters
        ----------
        group_key : str
            The event group (enrich) whose messages are withdrawn.
        by_event_id : str
            The retraction Event's id (kept in ``decided_by``).

        Returns
        -------
        withdrawn : list of OutboxEntry
            Entries that were ``pending_approval``, ``queued`` or ``failed``, now
            ``withdrawn``: they will never be sent.
        sent : list of OutboxEntry
            Entries already ``sent`` (or ``sending``/``unknown``): the caller sends a
            retraction or update where their channel has one.
        """
        t = self.t
        now = _now()
        with self.engine.begin() as conn:
            withdrawn = [OutboxEntry.from_row(r) for r in conn.execute(
                t.update().where(t.c.group_key == group_key, t.c.state.in_(UNSENT_STATES))
                .values(state="withdrawn", decided_by=by_event_id, decision="source event retracted",
                        retry_at=None, updated_at=now).returning(*t.c))]
            sent = [OutboxEntry.from_row(r) for r in conn.execute(
                sa.select(t).where(t.c.group_key == group_key, t.c.state.in_(("sent", "sending", "unknown")))
                .order_by(t.c.id))]
        return sorted(withdrawn, key=lambda e: e.id), sent

    def annotate(self, id: int, by: str, decision: str) -> OutboxEntry:
        """Record a decision about an entry that went out (``sent``, ``sending``,
        ``unknown``) without changing its state: e.g. its source event was retracted and
        its channel has no retraction (TNS), so what was sent stands. Kept in
        ``decided_by`` and ``decision`` (``outbox show`` prints them).

        Raises
        ------
        OutboxError
            No such entry, or it was never sent.
        """
        return self._transition(id, ("sent", "sending", "unknown"), "annotated", decided_by=by,
                                decision=one_line(decision, 500))

    # ------------------------------------------------------------------ sender side
    @staticmethod
    def _due(now: datetime) -> sa.ColumnElement[bool]:
        t = OUTBOX
        return sa.or_(sa.and_(t.c.state == "queued", sa.or_(t.c.retry_at.is_(None), t.c.retry_at <= now)),
                      sa.and_(t.c.state == "failed", t.c.retry_at <= now))

    def hold_lock(self) -> None:
        """Take (or check) this instance's advisory lock on its claim token.

        The lock lives on a connection of its own for the instance's lifetime, in
        autocommit (idle between statements, so ``NOTIFY``s are delivered; each statement
        its own transaction, committed when it returns); :meth:`claim` runs on it too.
        When that connection was lost (a PostgreSQL restart) the lock is taken again.
        Called by :meth:`wait`; :meth:`close` releases it.
        """
        with self._lock_guard:
            if self._lock_conn is not None:
                try:
                    self._lock_conn.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.DBAPIError:
                    log.warning("outbox: the claim-lock connection was lost; taking the lock again")
                    self._drop_lock_conn()
            self._take_lock()

    def _take_lock(self) -> sa.Connection:
        """Connect, take the advisory lock and LISTEN (caller holds ``_lock_guard``)."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sa.text("SELECT pg_advisory_lock(:c, :t)"), {"c": OUTBOX_LOCK_CLASS, "t": self.token})
            conn.execute(sa.text(f"LISTEN {NOTIFY_CHANNEL}"))
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._lock_conn = conn
        return conn

    def _drop_lock_conn(self) -> None:
        """Forget a lost claim-lock connection (caller holds ``_lock_guard``)."""
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is dead anyway
                pass

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for an entry to become due (``NOTIFY`` :data:`NOTIFY_CHANNEL`).

        Listens on the claim-lock connection (:meth:`hold_lock`). Returns True when a
        notification came (the caller claims at once), False after the timeout.
        Entries that become due by time alone (``retry_at``) send no notification: the
        caller's timeout is what finds them.

        Raises
        ------
        psycopg.OperationalError
            The connection was lost (an infrastructure error; the next :meth:`claim`
            connects again).
        """
        self.hold_lock()
        with self._lock_guard:
            pg = self._lock_conn.connection.driver_connection
            got = False
            for _ in pg.notifies(timeout=timeout_s, stop_after=1):
                got = True
            if got:  # drain what else arrived: one claim serves them all
                for _ in pg.notifies(timeout=0):
                    pass
            return got

    def close(self) -> None:
        """Release the claim-token lock (entries still ``sending`` become orphans)."""
        with self._lock_guard:
            if self._lock_conn is not None:
                try:
                    self._lock_conn.close()
                finally:
                    self._lock_conn = None

    def claim(self, limit: int, now: datetime | None = None, *,
              channels: Iterable[str] | None = None) -> list[OutboxEntry]:
        """Take up to ``limit`` due entries (oldest due first): → ``sending`` under this token.

        Due: ``queued`` with no ``retry_at`` or one in the past, ``failed`` with a
        ``retry_at`` in the past. Rows locked by another sender's claim are skipped
        (``FOR UPDATE SKIP LOCKED``), so concurrent senders never take the same entry.
        ``channels``: only entries of these channels (the ones this sender can send).
        """
        now = now or _now()
        t = self.t
        cond = self._due(now)
        if channels is not None:
            cond = sa.and_(cond, t.c.channel.in_(list(channels)))
        due = (sa.select(t.c.id).where(cond).order_by(t.c.retry_at.asc().nulls_first(), t.c.id)
               .limit(limit).with_for_update(skip_locked=True).scalar_subquery())
        claim = (t.update().where(t.c.id.in_(due))
                 .values(state="sending", claim_token=self.token, claimed_at=now, updated_at=now).returning(*t.c))
        # one statement on the claim-lock connection (autocommit): it is committed, hence
        # durable, when it returns, before anything is sent; and it succeeds only while that
        # connection, which holds the token's lock, is alive (a lost one raises here and is
        # connected again by the next call)
        with self._lock_guard:
            conn = self._lock_conn if self._lock_conn is not None else self._take_lock()
            try:
                rows = conn.execute(claim).all()
                conn.commit()  # nothing for the database (autocommit); ends SQLAlchemy's autobegun block
            except sa.exc.DBAPIError:
                self._drop_lock_conn()
                raise
        return sorted((OutboxEntry.from_row(r) for r in rows), key=lambda e: (e.retry_at is not None, e.id))

    def _finish(self, id: int, what: str, **values: Any) -> bool:
        t = self.t
        values.setdefault("updated_at", _now())
        with self.engine.begin() as conn:
            n = conn.execute(t.update().where(t.c.id == int(id), t.c.state == "sending",
                                              t.c.claim_token == self.token).values(**values)).rowcount
        if n == 0:
            log.warning("outbox entry %s: not marked %s: no longer sending under this sender's claim", id, what)
        return n == 1

    def mark_sent(self, id: int, receipt: dict, *, tries: int = 1, poll_after_s: float | None = None) -> bool:
        """``sending`` → ``sent`` with the channel's receipt.

        Parameters
        ----------
        receipt : dict
            JSON-ready. ``pending: true`` (a reply is awaited, e.g. TNS) sets ``poll_at``.
        tries : int
            Sends tried in this claim (added to ``attempts``).
        poll_after_s : float, optional
            Delay of the first poll of a pending receipt, s (default 0).

        Returns
        -------
        bool
            False when the entry was no longer this sender's (logged).
        """
        now = _now()
        poll_at = now + _seconds(poll_after_s or 0) if receipt.get("pending") else None
        return self._finish(id, "sent", state="sent", receipt=receipt, sent_at=now, poll_at=poll_at,
                            attempts=self.t.c.attempts + tries, last_error=None, retry_at=None, updated_at=now)

    def mark_failed(self, id: int, error: str, retry_at: datetime | None, *, tries: int = 1) -> bool:
        """``sending`` → ``failed``; claimed again at ``retry_at`` (None: only by ``retry``)."""
        return self._finish(id, "failed", state="failed", last_error=one_line(error, MAX_ERROR_CHARS),
                            retry_at=retry_at, attempts=self.t.c.attempts + tries)

    def mark_unknown(self, id: int, why: str) -> bool:
        """``sending`` → ``unknown``: it may or may not have gone out; never sent again automatically."""
        return self._finish(id, "unknown", state="unknown", last_error=one_line(why, MAX_ERROR_CHARS), retry_at=None)

    def requeue(self, id: int, why: str = "") -> bool:
        """``sending`` → ``queued`` (due now): it demonstrably did not go out."""
        return self._finish(id, "queued", state="queued", retry_at=None,
                            last_error=one_line(why, MAX_ERROR_CHARS) if why else None)

    def update_receipt(self, id: int, receipt: dict, *, poll_after_s: float | None = None) -> OutboxEntry:
        """Replace a ``sent`` entry's receipt (a reply polled later, e.g. TNS).

        ``pending: true`` keeps it polled (``poll_at`` = now + ``poll_after_s``); a
        receipt with ``status: "rejected"`` (the channel refused it after accepting the
        send: TNS feedback) turns the entry ``failed`` without ``retry_at``, the
        feedback kept in the receipt and summarised in ``last_error``.

        Raises
        ------
        OutboxError
            No such entry, or it is not ``sent``.
        """
        now = _now()
        values: dict[str, Any] = {"receipt": receipt, "updated_at": now,
                                  "poll_at": now + _seconds(poll_after_s or 0) if receipt.get("pending") else None}
        if receipt.get("status") == "rejected":
            fb = receipt.get("feedback")
            values.update(state="failed", retry_at=None,
                          last_error=one_line(f"rejected by the channel: {json.dumps(fb) if fb else ''}",
                                              MAX_ERROR_CHARS))
        return self._transition(id, ("sent",), "updated", **values)

    def due_polls(self, limit: int, now: datetime | None = None) -> list[OutboxEntry]:
        """``sent`` entries whose pending reply is due to be asked for."""
        t = self.t
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.state == "sent", t.c.poll_at <= (now or _now()))
                                .order_by(t.c.poll_at, t.c.id).limit(limit))
            return [OutboxEntry.from_row(r) for r in rows]

    def orphans(self, *, channels: Iterable[str] | None = None, own_except: Iterable[int] | None = None,
                ) -> list[OutboxEntry]:
        """Take over the ``sending`` entries of senders that are gone.

        A claim token whose advisory lock can be taken belongs to no live sender: its
        entries are re-stamped with this instance's token (one UPDATE per token, so two
        senders never take over the same entry) and returned, for
        :meth:`broker.sinks.channels.Channel.recover`.

        Parameters
        ----------
        channels : iterable of str, optional
            Only entries of these channels (those this sender can ask).
        own_except : iterable of int, optional
            Also return this instance's own ``sending`` entries except these ids (a
            sender between two rounds has none in flight: its own leftovers, e.g. a
            recovery that could not be done yet, are returned again).
        """
        self.hold_lock()
        t = self.t
        chan = t.c.channel.in_(list(channels)) if channels is not None else sa.true()
        with self.engine.connect() as conn:
            tokens = list(conn.execute(sa.select(t.c.claim_token).distinct()
                                       .where(t.c.state == "sending", chan,
                                              sa.or_(t.c.claim_token != self.token, t.c.claim_token.is_(None))))
                          .scalars())
            own = []
            if own_except is not None:
                own = [OutboxEntry.from_row(r) for r in conn.execute(
                    sa.select(t).where(t.c.state == "sending", chan, t.c.claim_token == self.token,
                                       t.c.id.not_in(list(own_except))))]
        taken: list[OutboxEntry] = own
        for tok in tokens:
            with self.engine.connect() as conn:
                free = tok is None or conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, :t)"),
                                                   {"c": OUTBOX_LOCK_CLASS, "t": tok}).scalar()
                if not free:
                    conn.rollback()
                    continue
                try:
                    cond = t.c.claim_token.is_(None) if tok is None else t.c.claim_token == tok
                    rows = conn.execute(t.update().where(t.c.state == "sending", chan, cond)
                                        .values(claim_token=self.token, updated_at=_now()).returning(*t.c)).all()
                    conn.commit()
                    taken += [OutboxEntry.from_row(r) for r in rows]
                finally:
                    if tok is not None:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:c, :t)"), {"c": OUTBOX_LOCK_CLASS, "t": tok})
                        conn.commit()
        return sorted(taken, key=lambda e: e.id)


def _notify(conn: sa.Connection) -> None:
    """``NOTIFY`` the senders when ``conn``'s transaction commits."""
    conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})


def _seconds(s: float):
    from datetime import timedelta

    return timedelta(seconds=s)
