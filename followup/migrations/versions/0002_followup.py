"""Follow-up results and the follow-up provenance cache.

``followup_results``: one row per follow-up request id (deterministic from the event
revision, analyses and parameters; see ``followup.messages.request_id``), so a replayed
alert finds its result and is not analysed again. Withdrawals (after a retraction)
are rows too (``kind = 'withdrawal'``) and mark the earlier results ``withdrawn``.

``followup_cache``: the lineage-keyed cache of ``followup.cache.SqlCache`` (same
columns as ``followup.cache.cache_table``).

Lives in the follow-up's own version location (:mod:`followup.migrations`); it keeps
the id and parent it had in the core's folder, so existing archives upgrade as before.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "followup_results",
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
    )
    op.create_index("ix_followup_results_upstream", "followup_results", ["source", "upstream_id"])
    op.create_index("ix_followup_results_event", "followup_results", ["event_id"])
    op.create_table(
        "followup_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(200), nullable=False),
        sa.Column("code_version", sa.String(200), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("hit_count", sa.Integer, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("products", sa.JSON, nullable=False),
    )
    op.create_index("ix_followup_cache_step", "followup_cache", ["step"])


def downgrade() -> None:
    op.drop_index("ix_followup_cache_step", table_name="followup_cache")
    op.drop_table("followup_cache")
    op.drop_index("ix_followup_results_event", table_name="followup_results")
    op.drop_index("ix_followup_results_upstream", table_name="followup_results")
    op.drop_table("followup_results")
