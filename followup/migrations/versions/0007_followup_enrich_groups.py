"""Follow-up groups are the enrich stage's event groups.

``followup_results.group_key`` was ``<source>:<mission lower-cased>:<upstream id>``
(the follow-up's own key); it becomes :func:`broker.enrich.groups.group_key` of the
event, the key the enrich stage stores and publishes on ``mma.events.enriched``:
``gcn:<mission slug>:<trigger id>`` for GCN notices (mission lower-cased, runs of
other characters than a-z and 0-9 made one ``-``), ``<source>:<upstream id>`` for the
rest (``igwn:S230518h``). Existing rows are rewritten with the same rule (the
function is copied here in SQL: a migration must not change when the code does);
the downgrade restores the old key from the same columns.

Revision ID: 0007
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0003"
branch_labels = None
depends_on = None

_MISSION_SLUG = ("coalesce(nullif(trim(both '-' from regexp_replace(lower(coalesce(document->>'mission', '')), "
                 "'[^a-z0-9]+', '-', 'g')), ''), 'unknown')")


def upgrade() -> None:
    op.execute("UPDATE followup_results SET group_key = CASE WHEN source = 'gcn' "
               f"THEN 'gcn:' || {_MISSION_SLUG} || ':' || upstream_id "
               "ELSE source || ':' || upstream_id END")
    op.alter_column("followup_results", "group_key", existing_type=sa.Text, existing_nullable=True,
                    comment="broker.enrich.groups.group_key of the event")


def downgrade() -> None:
    op.alter_column("followup_results", "group_key", existing_type=sa.Text, existing_nullable=True,
                    comment="followup.rules.group_key of the event")
    op.execute("UPDATE followup_results SET group_key = source || ':' || "
               "lower(coalesce(document->>'mission', '')) || ':' || upstream_id")
