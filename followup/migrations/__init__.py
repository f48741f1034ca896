"""Alembic revisions of the follow-up's tables (``followup_results``, ``followup_cache``).

A migrations plugin: ``pyproject.toml`` registers this package under the entry-point
group ``mma_broker.migrations``, and the archive's Alembic configuration
(:func:`broker.archive.store.alembic_config`) adds its ``versions/`` folder to the
core's version locations, so ``Archive.migrate()`` creates these tables without the
broker core importing ``followup``.

A revision here builds on a core revision (``down_revision``), never the other way
round. ``0002`` keeps the id and parent it had when it lived in the core's folder, so
archives created before the move upgrade as before.
"""
