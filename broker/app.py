"""Build the broker's parts from settings, in one place (no import-time singletons)."""

from __future__ import annotations

import logging

from broker import __version__
from broker.config import Settings
from broker.serde import Provenance

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The archive URL: the configured one, or the embedded PostgreSQL (started if needed)."""
    if settings.archive.database_url is not None:
        return settings.archive.database_url.get_secret_value()
    from broker.archive.embedded import ensure_embedded_postgres

    return ensure_embedded_postgres(settings.home / "postgres")


def open_archive(settings: Settings, *, migrate: bool = True):
    """An :class:`broker.archive.Archive` for these settings, migrated to the latest schema."""
    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore, SegmentFileStore

    raw = SegmentFileStore(settings.home / "raw") if settings.archive.raw_store == "file" else PostgresRawStore()
    archive = Archive(database_url(settings), raw_store=raw)
    if migrate:
        archive.migrate()
    return archive


def provenance(settings: Settings, component: str) -> Provenance:
    """Provenance stamp for outputs of ``component``."""
    return Provenance(component=component, version=__version__, config_hash=settings.config_hash())
