"""Alembic revisions of the filters' tables (``filter_decisions``, ``filter_runs``).

A migrations plugin, like :mod:`followup.migrations`: ``pyproject.toml`` registers
this package under the entry-point group ``mma_broker.migrations`` (name
``filters``), and :func:`broker.archive.store.alembic_config` adds its ``versions/``
folder to the core's version locations, so ``Archive.migrate()`` creates these
tables without the core importing ``filters``.

Revision ids of this branch are ``01xx`` (globally unique across the core and every
plugin); the first builds on the core's ``0001``.
"""
