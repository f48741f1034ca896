"""Create the events and raw_messages tables.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("messenger", sa.Text, nullable=False),
        sa.Column("mission", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=True),
        sa.Column("upstream_id", sa.Text, nullable=False),
        sa.Column("alert_type", sa.Text, nullable=False),
        sa.Column("time", sa.TIMESTAMP(timezone=True), nullable=False, comment="event time T0, UTC"),
        sa.Column("localization", JSONB, nullable=True),
        sa.Column("properties", JSONB, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("ra_deg", sa.Float(precision=53), nullable=True, comment="ICRS RA of point or max-probability pixel"),
        sa.Column("dec_deg", sa.Float(precision=53), nullable=True, comment="ICRS Dec of point or max-probability pixel"),
        sa.Column("error_radius_deg", sa.Float(precision=53), nullable=True),
        # healpix_alchemy.Point is a BIGINT at the database level; the migration keeps
        # to plain SQL types so it never changes when the Python type does.
        sa.Column("hpx", sa.BigInteger, nullable=True, comment="nested HEALPix index, order 29, of (ra_deg, dec_deg)"),
        sa.Column("area_90_deg2", sa.Float(precision=53), nullable=True),
        sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("retracted_by", sa.Text, nullable=True),
        sa.Column("ingested_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("kafka_topic", sa.Text, nullable=True),
        sa.Column("kafka_partition", sa.Integer, nullable=True),
        sa.Column("kafka_offset", sa.BigInteger, nullable=True),
        sa.Column("raw_sha256", sa.Text, nullable=False),
        sa.Column("raw_segment", sa.Text, nullable=True, comment="segment file; NULL: bytes in raw_messages"),
        sa.Column("raw_offset", sa.BigInteger, nullable=True),
        sa.Column("raw_length", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_events_source_time", "events", ["source", "time"])
    op.create_index("ix_events_upstream_id", "events", ["upstream_id"])
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_hpx", "events", ["hpx"])
    op.create_index(
        "ix_events_retractions",
        "events",
        ["source", "upstream_id"],
        postgresql_where=sa.text("alert_type = 'retraction'"),
    )
    op.create_table(
        "raw_messages",
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # Raw alerts are mostly gzip (ZTF cutouts): skip TOAST compression attempts.
    op.execute("ALTER TABLE raw_messages ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("raw_messages")
    op.drop_index("ix_events_retractions", table_name="events")
    op.drop_index("ix_events_hpx", table_name="events")
    op.drop_index("ix_events_time", table_name="events")
    op.drop_index("ix_events_upstream_id", table_name="events")
    op.drop_index("ix_events_source_time", table_name="events")
    op.drop_table("events")
