"""Table definitions of the alert archive (SQLAlchemy Core).

Core tables rather than ORM classes: the archive writes hundreds of rows per call and
reads them back as :class:`~broker.archive.rows.ArchivedEvent`, so the unit-of-work
machinery of the ORM would cost time and buy nothing. The schema itself is created
and changed only by the Alembic migrations in ``broker/archive/migrations/versions``;
these definitions must match them (``tests/integration/test_archive.py`` checks it).

Spatial index: ``hpx`` is a :class:`healpix_alchemy.Point` — a BIGINT holding the
nested HEALPix index at order 29 (the finest level a signed 8-byte integer can hold,
about 0.4 mas pixels) of the point position, as healpix-alchemy defines it. A sky map
or a cone stored as healpix-alchemy ``Tile`` ranges then joins against it with
``events.hpx BETWEEN lower(tile.hpx) AND upper(tile.hpx)`` on the B-tree index, inside
the database (Singer & Hogg-style multi-order queries; healpix-alchemy docs).
"""

from __future__ import annotations

import sqlalchemy as sa
from healpix_alchemy import Point
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    # --- the normalized Event (DESIGN.md "Normalized Event") ---
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
    sa.Column("category", sa.Text, nullable=True,
              comment="normalized class (broker.category); NULL: archived before 0008"),
    sa.Column("category_rule", sa.Text, nullable=True, comment="id of the rule that decided the category"),
    # --- derived from the localization, for queries ---
    sa.Column("ra_deg", sa.Float(precision=53), nullable=True, comment="ICRS RA of point or max-probability pixel"),
    sa.Column("dec_deg", sa.Float(precision=53), nullable=True, comment="ICRS Dec of point or max-probability pixel"),
    sa.Column("error_radius_deg", sa.Float(precision=53), nullable=True),
    sa.Column("hpx", Point, nullable=True, comment="nested HEALPix index, order 29, of (ra_deg, dec_deg)"),
    sa.Column("area_90_deg2", sa.Float(precision=53), nullable=True),
    # --- retraction state ---
    sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("retracted_by", sa.Text, nullable=True),
    # --- broker metadata, kept apart from the Event ---
    sa.Column("ingested_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("kafka_topic", sa.Text, nullable=True),
    sa.Column("kafka_partition", sa.Integer, nullable=True),
    sa.Column("kafka_offset", sa.BigInteger, nullable=True),
    sa.Column("raw_sha256", sa.Text, nullable=False),
    sa.Column("raw_segment", sa.Text, nullable=True, comment="segment file; NULL: bytes in raw_messages"),
    sa.Column("raw_offset", sa.BigInteger, nullable=True),
    sa.Column("raw_length", sa.BigInteger, nullable=False),
    sa.Index("ix_events_source_time", "source", "time"),
    sa.Index("ix_events_upstream_id", "upstream_id"),
    sa.Index("ix_events_time", "time"),
    sa.Index("ix_events_hpx", "hpx"),
    sa.Index("ix_events_category_time", "category", "time"),  # migration 0008: events list --category
    # migration 0011: the web API's q (= or LIKE prefix) and case-insensitive mission / instrument
    sa.Index("ix_events_upstream_id_pattern", "upstream_id", postgresql_ops={"upstream_id": "text_pattern_ops"}),
    sa.Index("ix_events_lower_mission", sa.func.lower(sa.column("mission"))),
    sa.Index("ix_events_lower_instrument", sa.func.lower(sa.column("instrument"))),
    sa.Index(
        "ix_events_retractions",
        "source",
        "upstream_id",
        postgresql_where=sa.text("alert_type = 'retraction'"),
    ),
)
"""One row per Event (alert revision), keyed by ``Event.id``."""

raw_messages = sa.Table(
    "raw_messages",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
)
"""Raw upstream bytes by content hash, used by :class:`~broker.archive.raw.PostgresRawStore`."""
