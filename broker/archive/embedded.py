"""Embedded PostgreSQL for laptops, tests and the demo (the ``pgserver`` package).

``pgserver`` ships PostgreSQL 16 binaries in a wheel. We use its binaries (``initdb``,
``pg_ctl``, ``postgres``) but start the server ourselves, because pgserver's own start-up
is not safe on a shared machine: it configures ``trust`` authentication for everyone,
and when the data directory's path is too long for a unix socket it puts the socket in a
world-writable runtime folder, so any local user could connect as the superuser.

Here the server is private:

- no TCP port (``listen_addresses = ''``); one unix socket, in a directory of mode 0700
  owned by the server's user: the data directory itself when the socket path fits the
  kernel limit (107 bytes), otherwise a ``mkdtemp`` folder ``/tmp/mma-pg-XXXXXXXX``
  (recorded in the data directory so restarts keep the same URL); the socket file
  itself has mode 0700;
- ``pg_hba.conf`` allows only ``local`` connections with a password (SCRAM-SHA-256);
- the ``postgres`` role's password is random, generated once and kept in
  ``<data dir>/mma-broker.password`` (mode 0600, owned by the caller). It is set with the
  server stopped (single-user mode, as a SCRAM verifier, so the password itself never
  reaches the server or its log) and it is put in the URL we return; never logged.

A data directory made before this change (trust authentication, socket maybe in a shared
folder) is converted on the next call: the running server is stopped, the password set,
``pg_hba.conf`` rewritten and the server started privately.

The server runs under a system user ``pgserver`` when the caller is root (PostgreSQL
refuses to run as root). It is left running when the Python process exits: several
broker processes share it, and :func:`stop_embedded_postgres` stops it explicitly.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import shlex
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

DATABASE = "mma_broker"
"""Name of the database created inside the embedded server."""

SUPERUSER = "postgres"
"""The role we connect as (created by initdb)."""

SOCKET_NAME = ".s.PGSQL.5432"
"""File name of the server's unix socket (port 5432, never opened on TCP)."""

SUN_PATH_MAX = 107
"""Longest unix socket path, in bytes: ``sockaddr_un.sun_path`` is 108 bytes on Linux,
including the terminating NUL."""

PASSWORD_FILE = "mma-broker.password"
"""File in the data directory holding the ``postgres`` role's password (mode 0600)."""

SOCKET_DIR_FILE = "mma-broker.socket-dir"
"""File in the data directory recording the ``/tmp`` socket folder, when one is needed."""

PG_HBA = """\
# Written by mma-broker (broker/archive/embedded.py); rewritten if changed.
# Unix socket only (the server opens no TCP port), password (SCRAM-SHA-256) required.
# TYPE  DATABASE  USER  METHOD
local   all       all   scram-sha-256
"""

_START_TIMEOUT_S = 60


def _pgserver():
    """The pgserver package, imported without platformdirs' XDG_RUNTIME_DIR warning
    (pgserver computes a runtime folder at import; we do not use it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
        import pgserver.utils  # noqa: F401
    return pgserver


# ---------------------------------------------------------------- users and files
def _server_user() -> str | None:
    return "pgserver" if os.name == "posix" and os.geteuid() == 0 else None


def _server_ids(user: str | None) -> tuple[int, int]:
    if user is None:
        return os.geteuid(), os.getegid()
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _is_private_dir(path: Path, uid: int) -> bool:
    """A real directory (not a symlink) owned by ``uid`` that nobody else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def _ensure_traversable(path: Path) -> None:
    """Let the server user (root case) reach ``path``: add only the search bit (x) for
    group and others to each ancestor that lacks it (never read: listings stay private)."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if mode & 0o011 != 0o011:
            p.chmod(mode | 0o011)


def _write_private(path: Path, text: str, *, owner: tuple[int, int] | None = None) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600 (chowned to ``owner``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(pgdata: Path) -> Iterator[None]:
    """Serialize start/stop of one data directory across processes (flock on the dir)."""
    fd = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- password
def _read_password(pgdata: Path) -> str | None:
    """The stored password, or None if absent or if the file could have been read by
    someone else (then a new one is made)."""
    path = pgdata / PASSWORD_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        log.warning("%s is not a private file of this user: making a new database password", path)
        return None
    password = path.read_text().strip()
    return password or None


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``ALTER ROLE ... PASSWORD '<verifier>'`` stores it as is, so the password itself never
    reaches the server. ``password`` must be ASCII (SASLprep is then the identity).
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _single_user(pgdata: Path, user: str | None, sql: str) -> None:
    """Run ``sql`` in single-user mode (server stopped), as the server user."""
    POSTGRES_BIN_PATH = _pgserver()._commands.POSTGRES_BIN_PATH

    proc = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--single", "-D", str(pgdata), "postgres"],
        input=sql + "\n", capture_output=True, text=True, user=user, timeout=120, check=False,
    )
    if proc.returncode != 0 or "ERROR:" in proc.stderr or "FATAL:" in proc.stderr:
        tail = " | ".join(line for line in proc.stderr.splitlines() if "ERROR" in line or "FATAL" in line)
        raise RuntimeError(f"embedded PostgreSQL in {pgdata}: single-user command failed: {tail or proc.returncode}")


def _secure(pgdata: Path, user: str | None, password: str | None) -> str:
    """With the server stopped: make sure the password is set and pg_hba.conf is ours.

    Returns the password.
    """
    hba = pgdata / "pg_hba.conf"
    try:
        hba_ok = hba.read_text() == PG_HBA
    except OSError:
        hba_ok = False
    if password is not None and hba_ok:
        return password
    if password is None:
        password = secrets.token_urlsafe(32)  # URL-safe: goes into the URL unescaped
        _write_private(pgdata / PASSWORD_FILE, password + "\n")
    # the password first, pg_hba.conf last: our pg_hba.conf means "password is set"
    _single_user(pgdata, user, f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_sha256_verifier(password)}'")
    _write_private(hba, PG_HBA, owner=_server_ids(user) if user else None)
    log.info("embedded PostgreSQL %s: password authentication configured", pgdata)
    return password


# ---------------------------------------------------------------- server
def _postmaster(pgdata: Path):
    PostmasterInfo = _pgserver().utils.PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return None  # a postmaster.pid being written or left half-written by a crash
    if info is not None and info.is_running() and info.status == "ready":
        return info
    return None


def _starting(pgdata: Path) -> bool:
    """A postmaster process is running for ``pgdata`` but not ready (start-up, recovery)."""
    try:
        info = _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return False
    return info is not None and info.is_running()


def _is_private(pgdata: Path, info, password: str | None, uid: int) -> bool:
    """True if the running server is the private one this module starts."""
    try:
        hba_ok = (pgdata / "pg_hba.conf").read_text() == PG_HBA
    except OSError:
        hba_ok = False
    return (password is not None and hba_ok and info.hostname is None and info.socket_dir is not None
            and _is_private_dir(info.socket_dir, uid))


def _socket_dir(pgdata: Path, uid: int, gid: int) -> Path:
    """A private (0700, owned by the server user) folder for the socket, short enough."""
    if len(os.fsencode(pgdata / SOCKET_NAME)) <= SUN_PATH_MAX:
        return pgdata
    record = pgdata / SOCKET_DIR_FILE
    with contextlib.suppress(OSError):
        recorded = Path(record.read_text().strip())
        if (recorded.is_absolute() and len(os.fsencode(recorded / SOCKET_NAME)) <= SUN_PATH_MAX
                and _is_private_dir(recorded, uid)):
            return recorded
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    d = Path(tempfile.mkdtemp(prefix="mma-pg-", dir=base))  # mode 0700, owned by us
    if (uid, gid) != (os.geteuid(), os.getegid()):
        os.chown(d, uid, gid)
    if len(os.fsencode(d / SOCKET_NAME)) > SUN_PATH_MAX:
        d.rmdir()
        raise RuntimeError(f"no folder for the embedded PostgreSQL socket: {base} is too long a path")
    _write_private(record, f"{d}\n")
    log.info("embedded PostgreSQL %s: socket in %s (the data directory's path is too long)", pgdata, d)
    return d


def _start(pgdata: Path, socket_dir: Path, user: str | None) -> None:
    pg_ctl = _pgserver().pg_ctl
    opts = f"-h '' -k {shlex.quote(str(socket_dir))} -c unix_socket_permissions=0700"
    try:
        pg_ctl(["-w", "-t", str(_START_TIMEOUT_S), "-o", opts, "-l", str(pgdata / "log"), "start"],
               pgdata=pgdata, user=user, timeout=_START_TIMEOUT_S + 30)
    except subprocess.CalledProcessError:
        log.error("embedded PostgreSQL in %s did not start; its log is %s", pgdata, pgdata / "log")
        raise


def _wait_ready(pgdata: Path, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        info = _postmaster(pgdata)
        if info is not None:
            return info
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded PostgreSQL in {pgdata} started but is not ready (log: {pgdata / 'log'})")
        time.sleep(0.2)


def _prepare(pgdata: Path, user: str | None) -> None:
    """Data directory exists (0700) and, as root, the server user can reach it and run
    the binaries."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        pgs = _pgserver()
        POSTGRES_BIN_PATH = pgs._commands.POSTGRES_BIN_PATH
        ensure_folder_permissions, ensure_user_exists = pgs.utils.ensure_folder_permissions, pgs.utils.ensure_user_exists

        ensure_user_exists(user)
        _ensure_traversable(pgdata.parent)
        _ensure_traversable(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    uid, gid = _server_ids(user)
    st = os.stat(pgdata)
    if user is not None and (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(pgdata, uid, gid)
    if st.st_mode & 0o077:
        pgdata.chmod(0o700)


def ensure_embedded_postgres(data_dir: Path) -> str:
    """Start the embedded PostgreSQL in ``data_dir`` (or reuse it if running), privately.

    Idempotent and safe to call from several processes (start-up is serialized with a
    lock on the data directory). Creates the database ``mma_broker`` on first use. A
    server found running without the private set-up (a data directory from an older
    version) is restarted with it.

    Parameters
    ----------
    data_dir : Path
        The PostgreSQL data directory (PGDATA). Created, with its parents, if missing.
        The unix socket lives in this directory when the socket path fits in 107 bytes;
        otherwise in a private ``/tmp/mma-pg-XXXXXXXX`` folder.

    Returns
    -------
    str
        SQLAlchemy URL
        ``postgresql+psycopg://postgres:<password>@/mma_broker?host=<socket dir>``. It
        holds the password: treat it as a secret (never log it).

    Raises
    ------
    subprocess.CalledProcessError
        If initdb or pg_ctl fail (the server log is ``data_dir/log``).
    RuntimeError
        If the password cannot be set or the server does not become ready.
    """
    import psycopg

    pgdata = Path(data_dir).expanduser().resolve()
    user = _server_user()
    _prepare(pgdata, user)
    uid, gid = _server_ids(user)
    with _locked(pgdata):
        if not (pgdata / "PG_VERSION").exists():
            initdb = _pgserver().initdb

            log.info("initializing embedded PostgreSQL in %s", pgdata)
            # trust only until _secure() below rewrites pg_hba.conf; the server is not running
            initdb(["--auth=trust", "--encoding=utf8", "--no-instructions", "-U", SUPERUSER],
                   pgdata=pgdata, user=user)
        password = _read_password(pgdata)
        info = _postmaster(pgdata)
        if info is None and _starting(pgdata):
            info = _wait_ready(pgdata)  # started by someone else (pg_ctl), not ready yet
        if info is not None and not _is_private(pgdata, info, password, uid):
            pg_ctl = _pgserver().pg_ctl
            log.warning("restarting embedded PostgreSQL in %s with a private socket and password authentication",
                        pgdata)
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
            info = None
        if info is None:
            password = _secure(pgdata, user, password)
            _start(pgdata, _socket_dir(pgdata, uid, gid), user)
            info = _wait_ready(pgdata)
        assert password is not None
        socket_dir = info.socket_dir
        with psycopg.connect(host=str(socket_dir), user=SUPERUSER, password=password, dbname="postgres",
                             connect_timeout=10, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
                log.info("created database %s in embedded PostgreSQL %s", DATABASE, pgdata)
    return f"postgresql+psycopg://{SUPERUSER}:{password}@/{DATABASE}?host={quote(str(socket_dir), safe='/')}"


def embedded_initialized(data_dir: Path) -> bool:
    """True if ``data_dir`` holds an initialized PostgreSQL data directory."""
    return (Path(data_dir).expanduser() / "PG_VERSION").exists()


def stop_embedded_postgres(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the embedded PostgreSQL running in ``data_dir``, if any.

    Idempotent: stopping a stopped (or never initialized) server does nothing. The
    socket folder and the password are kept, so a restart gives the same URL.

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
    pg_ctl = _pgserver().pg_ctl
    pgdata = Path(data_dir).expanduser().resolve()
    if not (pgdata / "PG_VERSION").exists() or _postmaster(pgdata) is None:
        return False
    with _locked(pgdata):
        if _postmaster(pgdata) is None:
            return False
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=_server_user())
    log.info("stopped embedded PostgreSQL in %s", pgdata)
    return True
