"""Alembic environment of the archive, driven from code by ``Archive.migrate()``.

No alembic.ini: :func:`broker.archive.store.alembic_config` builds the Config. When
the caller passes an open connection in ``config.attributes["connection"]`` (as
``Archive.migrate`` does, holding an advisory lock on it) the migration runs on it;
otherwise an engine is made from ``sqlalchemy.url``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from broker.archive.models import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported for the archive")
run_migrations_online()
