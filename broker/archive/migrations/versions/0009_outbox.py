"""The outbox (issue 11, item 4): every outgoing message, written before it is sent.

``outbox``: one row per message (HERMES message, GCN notice, GCN Circular, TNS report)
under a unique idempotency ``key``, with its ``channel``, the ``payload`` as it will be
sent (JSONB) and its sha256, its ``state`` (pending_approval, queued, sending, sent,
failed, withdrawn, rejected, unknown: a CHECK constraint), the sender's claim token and
the channel's receipt. Definition mirrors :func:`broker.sinks.outbox.outbox_table`;
docs/publishing.md explains the states.

Indexes: the due entries (partial, on ``retry_at, id`` where the state is queued or
failed: the sender's claim), ``group_key`` (withdrawals), ``source_event_id``, and
(state, channel) for ``mma-broker outbox list``. A branch of its own from the core's
0001, like 0004, 0005 and 0008.

Revision ID: 0009
Revises: 0001
Create Date: 2026-12-20
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None

STATES = ("pending_approval", "queued", "sending", "sent", "failed", "withdrawn", "rejected", "unknown")


def upgrade() -> None:
    op.create_table(
        "outbox",
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
    )
    op.create_index("ix_outbox_due", "outbox", ["retry_at", "id"],
                    postgresql_where=sa.text("state IN ('queued', 'failed')"))
    op.create_index("ix_outbox_group_key", "outbox", ["group_key"])
    op.create_index("ix_outbox_source_event_id", "outbox", ["source_event_id"])
    op.create_index("ix_outbox_state_channel", "outbox", ["state", "channel"])


def downgrade() -> None:
    op.drop_table("outbox")
