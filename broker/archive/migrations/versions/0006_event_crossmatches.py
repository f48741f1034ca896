"""Cross-match results archived with the Event (issue 9, item 4).

``event_crossmatches``: one row per Event and catalog, the enrich stage's ranked
catalog matches as published on ``mma.events.enriched`` (JSONB), the number of sources
matched and the localization matched. Branches from 0005 (the enrich branch).
Definition mirrors :func:`broker.enrich.matchstore.crossmatch_table`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_crossmatches",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("catalog", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, comment="skymap | point"),
        sa.Column("n_matched", sa.Integer, nullable=False, comment="inside the region / within the error"),
        sa.Column("localization_id", sa.Text, nullable=True, comment="the localization matched"),
        sa.Column("result", JSONB, nullable=False, comment="ranked matches, as published"),
        sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("event_crossmatches")
