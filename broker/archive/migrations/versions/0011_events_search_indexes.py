"""Indexes for the web API's text filters (issue 13: p95 <= 100 ms at 10^5+ Events).

``ix_events_upstream_id_pattern``: a B-tree on ``upstream_id text_pattern_ops``. The API's
``q`` is ``upstream_id = q OR upstream_id LIKE 'q%'`` (broker/web/api.py); under a
non-C collation the default-opclass ``ix_events_upstream_id`` cannot serve the ``LIKE``
prefix, so the whole ``OR`` was a sequential scan of ``events`` (linear in the archive).
The ``text_pattern_ops`` operator class compares byte-wise and holds ``=`` too, so both
halves of the ``OR`` are index range scans (PostgreSQL docs, "Operator Classes and
Operator Families"; "Indexes and LIKE").

``ix_events_lower_mission`` / ``ix_events_lower_instrument``: expression B-trees on
``lower(mission)`` and ``lower(instrument)``, which the API's case-insensitive
``mission=`` / ``instrument=`` filters compare; a plain index on the column cannot serve
``lower(col) = x``.

A branch from 0008 (the events-columns branch of the core's 0001); the downgrade drops
the three indexes and nothing else. Mirrored in :data:`broker.archive.models.events`.

Revision ID: 0011
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_upstream_id_pattern", "events", ["upstream_id"],
                    postgresql_ops={"upstream_id": "text_pattern_ops"})
    op.create_index("ix_events_lower_mission", "events", [sa.text("lower(mission)")])
    op.create_index("ix_events_lower_instrument", "events", [sa.text("lower(instrument)")])


def downgrade() -> None:
    op.drop_index("ix_events_lower_instrument", table_name="events")
    op.drop_index("ix_events_lower_mission", table_name="events")
    op.drop_index("ix_events_upstream_id_pattern", table_name="events")
