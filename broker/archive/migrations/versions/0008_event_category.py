"""Event category columns on ``events`` (issue 10, item 2).

``category`` and ``category_rule``: the normalized class of the Event and the id of the
rule that decided it (:func:`broker.category.categorize`, docs/categories.md), written
with every new row. Both nullable: rows archived before this revision keep NULL (an
Event read back from them has ``category=None``, as a record of ``mma.events`` of the
previous schema version would). The migration does not back-fill: computing the rules
for every row of a large archive (millions of ZTF candidates) would hold the migration
lock, and so every stage's start, for minutes. ``mma-broker events recategorize`` fills
the NULL rows afterwards, in pages, from the archived Event columns the rules read.

Index ``ix_events_category_time`` on (category, time) serves ``mma-broker events list
--category C`` (``WHERE category = C ORDER BY time DESC LIMIT n``) and the search for
rows still NULL. A branch of its own from the core's 0001, like 0004 and 0005.

Revision ID: 0008
Revises: 0001
Create Date: 2026-12-14
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable columns without a default: PostgreSQL adds them without rewriting the table
    op.add_column("events", sa.Column("category", sa.Text, nullable=True,
                                      comment="normalized class (broker.category); NULL: archived before 0008"))
    op.add_column("events", sa.Column("category_rule", sa.Text, nullable=True,
                                      comment="id of the rule that decided the category"))
    op.create_index("ix_events_category_time", "events", ["category", "time"])


def downgrade() -> None:
    op.drop_index("ix_events_category_time", table_name="events")
    op.drop_column("events", "category_rule")
    op.drop_column("events", "category")
