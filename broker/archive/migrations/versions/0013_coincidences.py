"""The coincidences the enrich stage found, in PostgreSQL (issue 13).

``coincidences``: one row per version of an ``mma.coincidences`` record (``id``,
``computed_from``), written by the enrich loop in the durable write where it claims its
versions (:func:`broker.enrich.coincidence_store.write_coincidences`): the keys of both
members (group keys, Event ids of the revisions used), the kind, the time offset (s),
the sky overlap integral, the joint FAR (Hz), the ``coincident`` (false: superseded) and
``retracted`` flags, ``retracted_by``, ``created_at`` and the whole record as JSONB;
one index per group key column, so a group page finds its coincidences from either side.
Archive data: exported and imported with its Events, never removed by ``archive gc``.

Continues the enrich branch (0005 → 0006 → 0010: localizations, groups, cross-matches,
coincidence claims). Definition mirrors
:func:`broker.enrich.coincidence_store.coincidence_table`.

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coincidences",
        sa.Column("id", sa.Text, primary_key=True,
                  comment="<kind>:<trigger group>+<other group>, the key on mma.coincidences"),
        sa.Column("computed_from", sa.Text, primary_key=True,
                  comment="the version: Event whose arrival produced the record"),
        sa.Column("kind", sa.Text, nullable=False, comment="gw-grb | gw-neutrino | gw-optical | grb-optical"),
        sa.Column("trigger_group", sa.Text, nullable=False, comment="members[0].group: the GW, else the GRB"),
        sa.Column("trigger_event_id", sa.Text, nullable=False, comment="members[0].event_id: its revision used"),
        sa.Column("other_group", sa.Text, nullable=False, comment="members[1].group"),
        sa.Column("other_event_id", sa.Text, nullable=False, comment="members[1].event_id"),
        sa.Column("dt_s", sa.Float, nullable=True,
                  comment="time offset t_other - t_trigger, s (optical kinds: dt_days * 86400)"),
        sa.Column("overlap_integral", sa.Float, nullable=True, comment="sky overlap integral I_Omega, when computed"),
        sa.Column("joint_far_hz", sa.Float, nullable=True, comment="joint FAR, Hz (gw-grb), when computed"),
        sa.Column("coincident", sa.Boolean, nullable=False,
                  comment="false: superseded, a later revision moved the pair out of its window"),
        sa.Column("retracted", sa.Boolean, nullable=False, comment="a member was retracted"),
        sa.Column("retracted_by", sa.Text, nullable=True, comment="Event id of the retraction"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()"), comment="when the enrich stage wrote the row"),
        sa.Column("record", JSONB, nullable=False, comment="the mma.coincidences record, provenance included"),
    )
    op.create_index("ix_coincidences_trigger_group", "coincidences", ["trigger_group"])
    op.create_index("ix_coincidences_other_group", "coincidences", ["other_group"])


def downgrade() -> None:
    op.drop_index("ix_coincidences_other_group", table_name="coincidences")
    op.drop_index("ix_coincidences_trigger_group", table_name="coincidences")
    op.drop_table("coincidences")
