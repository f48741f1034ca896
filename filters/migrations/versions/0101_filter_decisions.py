"""Filter decisions and time-machine runs.

``filter_decisions``: one row per (Event, filter instance, run, config hash): what the
filter decided (accepted, machine-readable reason, detail, tags, error of a call that
failed), which code and configuration decided it (plugin, version, config hash), and
whether it was the live stage (``run = 'live'``) or a re-run over the archive
(``run`` = the re-run's id). Written by :class:`filters.store.DecisionStore` before
the filter stage commits its Kafka transaction; a redelivered batch overwrites its
own rows (same key), so the table holds what the published records say.

``filter_runs``: one row per time-machine run (:func:`filters.rerun.rerun`): the
filters, the period, where the results went, and the summary.

Revision ID: 0101
Revises: 0001
Create Date: 2025-03-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0101"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "filter_decisions",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("filter", sa.Text, primary_key=True, comment="instance name (topic mma.filter.<filter>)"),
        sa.Column("run", sa.Text, primary_key=True, comment="'live', or the id of a re-run"),
        sa.Column("config_hash", sa.Text, primary_key=True),
        sa.Column("plugin", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, comment="machine-readable code, or 'error'"),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("tags", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("error", sa.Text, nullable=True, comment="raised / garbage / timeout / quarantined"),
        sa.Column("elapsed_ms", sa.Float(precision=53), nullable=True),
        sa.Column("followup", JSONB, nullable=True, comment="follow-ups asked for (accepted only)"),
        sa.Column("decided_at", sa.TIMESTAMP(timezone=True), nullable=False),
    )
    op.create_index("ix_filter_decisions_run_filter", "filter_decisions", ["run", "filter", "decided_at"])
    op.create_table(
        "filter_runs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("filters", JSONB, nullable=False, comment="instance -> plugin, version, config_hash, params"),
        sa.Column("since", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("until", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("output", sa.Text, nullable=True, comment="topic:<name>, file:<name>, or NULL (decisions only)"),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("summary", JSONB, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("filter_runs")
    op.drop_index("ix_filter_decisions_run_filter", table_name="filter_decisions")
    op.drop_table("filter_decisions")
