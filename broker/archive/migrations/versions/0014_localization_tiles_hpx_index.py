"""An SP-GiST index on ``localization_tiles.hpx`` for "which stored sky maps hold this point".

The web API's cone search (broker/web/api.py ``_cone``) finds the stored sky maps whose
90 % credible region holds the cone's centre: the tile of each map that contains the
centre's order-29 nested index, then its ``cum_prob``. Written as ``lower(hpx) <= p AND
upper(hpx) > p`` no index serves it, and PostgreSQL read the 90 % tiles of every stored
map (``ix_localization_tiles_level``): cheap with the tens of maps of a test archive,
linear in an observing run's thousands. ``hpx`` is a healpix-alchemy ``Tile`` (an
``int8range``); the tiles of one map do not overlap, so ``hpx @> p`` holds for at most
one tile per map, and SP-GiST's ``range_ops`` answers it from a quad tree of the ranges
(PostgreSQL docs, "SP-GiST Indexes", built-in operator classes; healpix-alchemy
recommends it for Tile columns).

A branch from 0013 (the localizations branch of the core's 0005); the downgrade drops the
index and nothing else. Mirrored in :func:`broker.enrich.store.localization_tables`.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_localization_tiles_hpx", "localization_tiles", ["hpx"], postgresql_using="spgist")


def downgrade() -> None:
    op.drop_index("ix_localization_tiles_hpx", table_name="localization_tiles")
