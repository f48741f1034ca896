"""Embedded PostgreSQL for laptops, tests and the demo (the ``pgserver`` package).

``pgserver`` ships PostgreSQL 16 binaries in a wheel. The server runs on a unix-domain
socket only (no TCP port is opened), under a system user ``pgserver`` when the
caller is root (PostgreSQL refuses to run as root). The server is left running when
the Python process exits (``cleanup_mode=None``): several broker processes share it,
and :func:`stop_embedded_postgres` stops it explicitly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgserver import PostgresServer

log = logging.getLogger(__name__)

DATABASE = "mma_broker"
"""Name of the database created inside the embedded server."""

_UNIX_SOCKET_PATH_MAX = 100
"""Longest socket path we accept; the kernel limit (sun_path) is 108 bytes on Linux."""


def _server_user() -> str | None:
    return "pgserver" if os.name == "posix" and os.geteuid() == 0 else None


def _postmaster(pgdata: Path):
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and info.status == "ready":
        return info
    return None


def _get_server(pgdata: Path) -> "PostgresServer":
    import pgserver

    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if _postmaster(pgdata) is None:
        # pgserver caches one handle per directory; if the postmaster was stopped since
        # (stop_embedded_postgres, or an operator's pg_ctl stop), start it again.
        with server._lock:
            server.ensure_postgres_running()
    return server


def ensure_embedded_postgres(data_dir: Path) -> str:
    """Start the embedded PostgreSQL in ``data_dir`` (or reuse it if running).

    Idempotent and safe to call from several processes (pgserver serializes start-up
    with an inter-process file lock). Creates the database ``mma_broker`` on first use.

    Parameters
    ----------
    data_dir : Path
        The PostgreSQL data directory (PGDATA). Created, with its parents, if missing.
        The unix socket lives in this directory when the resulting socket path is
        short enough; otherwise pgserver puts it under the user runtime directory.

    Returns
    -------
    str
        SQLAlchemy URL ``postgresql+psycopg://postgres@/mma_broker?host=<socket dir>``.
        It is a unix-socket URL: the socket path (``<socket dir>/.s.PGSQL.5432``) must
        stay under 100 characters (the kernel limit is 108), so keep ``data_dir`` short
        (e.g. ``/tmp/mma-pg-xxxx`` in tests).

    Raises
    ------
    RuntimeError
        If the socket path would exceed 100 characters.
    subprocess.CalledProcessError
        If initdb or pg_ctl fail (the server log is ``data_dir/log``).
    """
    import psycopg

    pgdata = Path(data_dir).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _get_server(pgdata)
    info = server.get_postmaster_info()
    socket_path = info.socket_path
    if socket_path is not None and len(str(socket_path)) > _UNIX_SOCKET_PATH_MAX:
        raise RuntimeError(
            f"embedded PostgreSQL socket path {socket_path} is longer than "
            f"{_UNIX_SOCKET_PATH_MAX} characters: use a shorter data directory"
        )
    admin_uri = info.get_uri(database="postgres")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists is None:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
                log.info("created database %s in embedded PostgreSQL %s", DATABASE, pgdata)
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE
    return f"postgresql+psycopg://postgres@/{DATABASE}?host={info.socket_dir}"


def stop_embedded_postgres(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the embedded PostgreSQL running in ``data_dir``, if any.

    Idempotent: stopping a stopped (or never initialized) server does nothing.

    Parameters
    ----------
    data_dir : Path
        The data directory given to :func:`ensure_embedded_postgres`.
    mode : {"smart", "fast", "immediate"}
        ``pg_ctl stop -m`` mode; "fast" rolls back open transactions and disconnects
        clients, which is what a restart in production does.

    Returns
    -------
    bool
        True if a running server was stopped.
    """
    from pgserver import pg_ctl

    pgdata = Path(data_dir).expanduser().resolve()
    if not (pgdata / "PG_VERSION").exists() or _postmaster(pgdata) is None:
        return False
    pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=_server_user())
    log.info("stopped embedded PostgreSQL in %s", pgdata)
    return True
