"""Localizations as data, event positions and event groups (issue 9, items 1 and 2).

``localizations``: one row per distinct localization, keyed by the sha256 of its
canonical content (the same map in two alerts is stored once): kind (``skymap`` or
``point``), 50 % / 90 % areas, the point's position and error circle, the map's header
keywords. ``localization_tiles``: its multi-order HEALPix tiles as healpix-alchemy
``Tile`` ranges (INT8RANGE of nested order-29 indices) with the probability density,
the cumulative probability of the greedy credible region up to and including the tile
(``cum_prob``: a tile is in the level-p region when ``cum_prob <= p``) and the distance
layers. ``event_localizations``: which localization an Event has. ``event_positions``:
the point position of point-localized Events and ZTF/LSST candidates
(healpix-alchemy ``Point``, order-29 nested index), for region queries.
``event_groups`` / ``event_group_members``: revisions of one superevent or trigger.

A branch of its own from the core's 0001 (it needs neither the follow-up's 0002/0003
nor the catalogs' 0004); ``Archive.migrate`` upgrades every head. Definitions mirror
:func:`broker.enrich.store.localization_tables` and
:func:`broker.enrich.groups.group_tables`.

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-11
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import INT8RANGE, JSONB

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

F8 = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "localizations",
        sa.Column("id", sa.Text, primary_key=True, comment="sha256:<hex> of the canonical content"),
        sa.Column("kind", sa.Text, nullable=False, comment="skymap | point"),
        sa.Column("n_tiles", sa.Integer, nullable=False),
        sa.Column("area_50_deg2", F8, nullable=True),
        sa.Column("area_90_deg2", F8, nullable=True),
        sa.Column("ra_deg", F8, nullable=True, comment="point position, or the densest tile's centre"),
        sa.Column("dec_deg", F8, nullable=True),
        sa.Column("error_radius_deg", F8, nullable=True),
        sa.Column("containment", F8, nullable=True),
        sa.Column("has_distance", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("meta", JSONB, nullable=False, comment="the map's FITS header keywords"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "localization_tiles",
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("hpx", INT8RANGE, primary_key=True, comment="[lo, hi) nested order-29 indices (healpix-alchemy Tile)"),
        sa.Column("probdensity", F8, nullable=False, comment="sr^-1"),
        sa.Column("cum_prob", F8, nullable=False, comment="greedy credible level up to and including this tile"),
        sa.Column("distmu", F8, nullable=True, comment="Mpc"),
        sa.Column("distsigma", F8, nullable=True, comment="Mpc"),
        sa.Column("distnorm", F8, nullable=True, comment="Mpc^-2"),
    )
    op.create_index("ix_localization_tiles_level", "localization_tiles", ["localization_id", "cum_prob"])
    op.create_table(
        "event_localizations",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=False),
        sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_event_localizations_localization", "event_localizations", ["localization_id"])
    op.create_table(
        "event_positions",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("time", sa.TIMESTAMP(timezone=True), nullable=True, comment="T0, or the first detection"),
        sa.Column("ra_deg", F8, nullable=False),
        sa.Column("dec_deg", F8, nullable=False),
        sa.Column("hpx", sa.BigInteger, nullable=False, comment="nested HEALPix index, order 29 (healpix-alchemy Point)"),
    )
    op.create_index("ix_event_positions_hpx", "event_positions", ["hpx"])
    op.create_index("ix_event_positions_source_time", "event_positions", ["source", "time"])
    op.create_table(
        "event_groups",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False, comment="gw | grb | neutrino | frb | xray | optical | user"),
        sa.Column("t0", sa.TIMESTAMP(timezone=True), nullable=False, comment="the latest revision's T0"),
        sa.Column("latest_event_id", sa.Text, nullable=False),
        sa.Column("best_localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=True),
        sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("n_revisions", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_event_groups_t0", "event_groups", ["t0"])
    op.create_table(
        "event_group_members",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("group_key", sa.Text, sa.ForeignKey("event_groups.key", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, comment="arrival order"),
        sa.Column("alert_type", sa.Text, nullable=False),
        sa.Column("time", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("retraction", sa.Boolean, nullable=False),
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=True),
        sa.Column("area_90_deg2", F8, nullable=True),
        sa.Column("added_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_event_group_members_group", "event_group_members", ["group_key", "seq"])


def downgrade() -> None:
    op.drop_index("ix_event_group_members_group", table_name="event_group_members")
    op.drop_table("event_group_members")
    op.drop_index("ix_event_groups_t0", table_name="event_groups")
    op.drop_table("event_groups")
    op.drop_index("ix_event_positions_source_time", table_name="event_positions")
    op.drop_index("ix_event_positions_hpx", table_name="event_positions")
    op.drop_table("event_positions")
    op.drop_index("ix_event_localizations_localization", table_name="event_localizations")
    op.drop_table("event_localizations")
    op.drop_index("ix_localization_tiles_level", table_name="localization_tiles")
    op.drop_table("localization_tiles")
    op.drop_table("localizations")
