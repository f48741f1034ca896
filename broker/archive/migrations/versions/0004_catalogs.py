"""Catalogs for cross-matching, with a HEALPix index.

``catalogs``: one row per loaded catalog (name, file name and sha256 or origin,
columns used, rows read and stored, refused rows per reason). ``catalog_sources``: one
row per accepted source, keyed by (catalog, 0-based row in the file), with its position,
``hpx`` (healpix-alchemy ``Point``: nested HEALPix index at order 29), distance, error
circle or ellipse and the file's other columns as JSONB; the (catalog_id, hpx) B-tree
index makes a cone or a sky-map region (``Tile`` ranges) a range join.

A branch of its own from the core's 0001: catalogs do not depend on the follow-up
plugin's tables (0002, 0003), and ``Archive.migrate`` upgrades every head.
Definitions mirror :func:`broker.enrich.catalogs.catalog_tables`.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalogs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("file_name", sa.Text, nullable=True, comment="file name only, no folder"),
        sa.Column("file_sha256", sa.Text, nullable=True),
        sa.Column("origin", sa.Text, nullable=True, comment="e.g. 'vizier:VII/281/glade2'"),
        sa.Column("n_rows", sa.Integer, nullable=False, comment="rows in the file"),
        sa.Column("n_sources", sa.Integer, nullable=False, comment="rows stored"),
        sa.Column("refused", JSONB, nullable=False, comment="refused rows per reason"),
        sa.Column("columns", JSONB, nullable=False, comment="columns used: ra, dec, dist, err"),
        sa.Column("err_containment", sa.Float(precision=53), nullable=True),
        sa.Column("loaded_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "catalog_sources",
        sa.Column("catalog_id", sa.Integer, sa.ForeignKey("catalogs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("row", sa.Integer, primary_key=True, comment="0-based row in the catalog file"),
        sa.Column("ra_deg", sa.Float(precision=53), nullable=False),
        sa.Column("dec_deg", sa.Float(precision=53), nullable=False),
        sa.Column("hpx", sa.BigInteger, nullable=False, comment="nested HEALPix index, order 29, of the position"),
        sa.Column("dist_mpc", sa.Float(precision=53), nullable=True),
        sa.Column("err_major_deg", sa.Float(precision=53), nullable=True),
        sa.Column("err_minor_deg", sa.Float(precision=53), nullable=True),
        sa.Column("err_pa_deg", sa.Float(precision=53), nullable=True),
        sa.Column("properties", JSONB, nullable=False, comment="the file's other columns"),
    )
    op.create_index("ix_catalog_sources_hpx", "catalog_sources", ["catalog_id", "hpx"])


def downgrade() -> None:
    op.drop_index("ix_catalog_sources_hpx", table_name="catalog_sources")
    op.drop_table("catalog_sources")
    op.drop_table("catalogs")
