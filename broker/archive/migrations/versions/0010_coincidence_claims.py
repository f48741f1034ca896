"""Coincidence claims (issue 11, lanes): which enrich lane publishes a pair both found.

``coincidence_claims``: one row per version of a trigger–optical coincidence record
(``id``, ``computed_from``) naming the enrich loop that publishes it, so that a pair found
by the notices and the optical lanes at once is on ``mma.coincidences`` once. Branches
from 0006 (the enrich branch). Definition mirrors :func:`broker.enrich.claims.claim_table`.

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coincidence_claims",
        sa.Column("id", sa.Text, primary_key=True, comment="coincidence id, as keyed on mma.coincidences"),
        sa.Column("computed_from", sa.Text, primary_key=True, comment="the version: Event it was computed from"),
        sa.Column("owner", sa.Text, nullable=False, comment="enrich loop that publishes it (enrich.<lane>)"),
        sa.Column("claimed_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("coincidence_claims")
