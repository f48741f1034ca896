"""Follow-up groups, superseded results and content-addressed artifacts.

``followup_results`` gets ``group_key`` (``followup.rules.group_key``: source, mission
case-folded, upstream id; back-filled for existing rows from the same columns),
``superseded_by`` and ``superseded_at`` (the newer result of the group that replaced
a row). ``followup_artifacts`` indexes PNG plots and user sky maps by sha256; their
bytes live in the archive's raw store (segment files or ``raw_messages``), the row
says where. Existing ``plot_png`` bytes stay where they are (``followup show`` still
reads them); new results leave that column empty.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("followup_results", sa.Column("group_key", sa.Text, nullable=True,
                                                comment="followup.rules.group_key of the event"))
    op.add_column("followup_results", sa.Column("superseded_by", sa.Text, nullable=True,
                                                comment="request id of the newer result of the group"))
    op.add_column("followup_results", sa.Column("superseded_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.execute("UPDATE followup_results SET group_key = source || ':' || "
               "lower(coalesce(document->>'mission', '')) || ':' || upstream_id")
    op.create_index("ix_followup_results_group", "followup_results", ["group_key"])
    op.create_table(
        "followup_artifacts",
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("raw_segment", sa.Text, nullable=True, comment="RawRef.segment (file raw store)"),
        sa.Column("raw_offset", sa.BigInteger, nullable=True, comment="RawRef.offset (file raw store)"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("followup_artifacts")
    op.drop_index("ix_followup_results_group", table_name="followup_results")
    op.drop_column("followup_results", "superseded_at")
    op.drop_column("followup_results", "superseded_by")
    op.drop_column("followup_results", "group_key")
