"""Filter decisions: one row per (Event, run) holding all its filters' decisions.

Before (0101), ``filter_decisions`` had one row per (Event, filter instance, run,
config hash): the filter stage wrote 20 rows per ZTF alert with 20 filters, and
PostgreSQL spent about 80 µs of CPU per alert on their rows and two indexes
(docs/filters-speed.md, third pass). Now a row is one (Event, run) and its decisions
are one JSONB array, ``decisions``; each entry a positional array::

    [filter, config_hash, plugin, version, accepted, reason, detail, tags, error,
     elapsed_ms, followup]

with a 12th element, the decision time (ISO 8601 text), only when it differs from the
row's ``decided_at`` (decisions merged from an earlier write: a changed configuration
decided the Event again, or ``DecisionStore.put_many`` got rows of several times).
The key of a decision is still (Event, filter, run, config hash): a write replaces the
entries of its keys and keeps the others (:class:`filters.store.DecisionStore`).

Upgrade: the rows of each (Event, run) are aggregated, ordered by decision time,
filter and config hash; ``decided_at`` is the latest of them. Downgrade: every entry
becomes a row of 0101's table again, with its own decision time. Both keep every
value (the float ``elapsed_ms`` goes through JSON's shortest exact text).

Revision ID: 0102
Revises: 0101
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0102"
down_revision = "0101"
branch_labels = None
depends_on = None

ENTRY = "jsonb_build_array(filter, config_hash, plugin, version, accepted, reason, detail, to_jsonb(tags), error, " \
        "elapsed_ms, followup)"


def upgrade() -> None:
    op.execute("ALTER TABLE filter_decisions RENAME TO filter_decisions_0101")
    op.execute("ALTER TABLE filter_decisions_0101 RENAME CONSTRAINT filter_decisions_pkey "
               "TO filter_decisions_0101_pkey")
    op.drop_index("ix_filter_decisions_run_filter", table_name="filter_decisions_0101")
    op.create_table(
        "filter_decisions",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("run", sa.Text, primary_key=True, comment="'live', or the id of a re-run"),
        sa.Column("decided_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  comment="time of the decisions (an entry's 12th element when it differs)"),
        sa.Column("decisions", JSONB, nullable=False,
                  comment="[[filter, config_hash, plugin, version, accepted, reason, detail, tags, error, elapsed_ms, "
                          "followup(, decided_at)], ...]"),
    )
    op.create_index("ix_filter_decisions_run", "filter_decisions", ["run", "decided_at"])
    op.execute(
        "INSERT INTO filter_decisions (event_id, run, decided_at, decisions) "
        "SELECT event_id, run, last, jsonb_agg(CASE WHEN decided_at = last THEN entry "
        "ELSE entry || jsonb_build_array(decided_at) END ORDER BY decided_at, filter, config_hash) "
        f"FROM (SELECT *, max(decided_at) OVER (PARTITION BY event_id, run) AS last, {ENTRY} AS entry "
        "FROM filter_decisions_0101) d GROUP BY event_id, run, last")
    op.drop_table("filter_decisions_0101")


def downgrade() -> None:
    op.execute("ALTER TABLE filter_decisions RENAME TO filter_decisions_0102")
    op.execute("ALTER TABLE filter_decisions_0102 RENAME CONSTRAINT filter_decisions_pkey "
               "TO filter_decisions_0102_pkey")
    op.drop_index("ix_filter_decisions_run", table_name="filter_decisions_0102")
    op.create_table(  # 0101's
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
    op.execute(
        "INSERT INTO filter_decisions (event_id, filter, run, config_hash, plugin, version, accepted, reason, detail, "
        "tags, error, elapsed_ms, followup, decided_at) "
        "SELECT f.event_id, e->>0, f.run, e->>1, e->>2, e->>3, (e->>4)::boolean, e->>5, e->>6, "
        "ARRAY(SELECT t FROM jsonb_array_elements_text(e->7) WITH ORDINALITY AS x(t, i) ORDER BY i), e->>8, "
        "(e->>9)::float8, "
        "CASE WHEN jsonb_typeof(e->10) = 'null' THEN NULL ELSE e->10 END, "
        "coalesce((e->>11)::timestamptz, f.decided_at) "
        "FROM filter_decisions_0102 f CROSS JOIN LATERAL jsonb_array_elements(f.decisions) e")
    op.drop_table("filter_decisions_0102")
