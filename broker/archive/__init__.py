"""The alert archive: Events in PostgreSQL (SQLAlchemy + Alembic), raw bytes beside.

Public API: :class:`Archive`, :class:`ArchiveItem`, :class:`KafkaMeta`,
:class:`ArchivedEvent`, :class:`WriteResult`, the raw stores
(:class:`SegmentFileStore`, :class:`PostgresRawStore`, :class:`RoutedRawStore`) and the embedded server helpers
(:func:`ensure_embedded_postgres`, :func:`stop_embedded_postgres`).
"""

from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres
from broker.archive.raw import PostgresRawStore, RawRef, RawStore, RawStoreError, RoutedRawStore, SegmentFileStore
from broker.archive.rows import ArchiveDataError, ArchivedEvent, ArchiveItem, KafkaMeta
from broker.archive.store import Archive, WriteResult, alembic_config

__all__ = [
    "Archive",
    "ArchiveDataError",
    "ArchiveItem",
    "ArchivedEvent",
    "KafkaMeta",
    "PostgresRawStore",
    "RawRef",
    "RawStore",
    "RawStoreError",
    "RoutedRawStore",
    "SegmentFileStore",
    "WriteResult",
    "alembic_config",
    "ensure_embedded_postgres",
    "stop_embedded_postgres",
]
