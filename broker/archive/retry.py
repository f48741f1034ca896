"""Wait out transient database failures (a PostgreSQL restart, a dropped connection).

DESIGN.md, reliability rules: after a PostgreSQL restart "the stage waits, then
resumes". :func:`retry_transient` re-runs a whole transaction with capped exponential
backoff while the error is a connection-level one; any other error (a constraint
violation, bad SQL) is raised at once, since retrying it would loop forever.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import sqlalchemy.exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """True for errors that a new connection may cure.

    ``OperationalError`` covers refused connections, "the database system is starting
    up / shutting down" and "terminating connection due to administrator command";
    ``DBAPIError.connection_invalidated`` covers a connection that died mid-query.
    """
    if isinstance(exc, sa_exc.OperationalError):
        return is_outage_sqlstate(sqlstate(exc))
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""SQLSTATE classes that mean "the database is away or busy", worth waiting out:
connection exception, transaction rollback (serialization, deadlock), insufficient
resources (disk full, out of memory, too many connections), operator intervention
(shutdown, "cannot connect now"), system error (I/O). Every other class (54 "program
limit exceeded", 22 "data exception", ...) is about the statement or the data:
retrying cannot cure it."""


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a driver error (psycopg, or wrapped by SQLAlchemy)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None)


def is_outage_sqlstate(code: str | None) -> bool:
    """True for an error with no SQLSTATE (the client lost the server) or of an outage class.

    PostgreSQL reports an index row too large (``54000``, e.g. an Event id of 4 kB of
    UTF-8) as an ``OperationalError``; it must not be waited out forever.
    """
    return code is None or code[:2] in OUTAGE_SQLSTATE_CLASSES


def describe(exc: BaseException, secret: str | None = None) -> str:
    """One line naming the driver error, without SQL, parameters or ``secret``."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    if secret:
        text = text.replace(secret, "***")
    return f"{type(orig).__name__}: {text}"


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    deadline_s: float | None = None,
    initial_delay_s: float = 0.5,
    max_delay_s: float = 10.0,
    secret: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient database errors.

    Parameters
    ----------
    fn : callable
        Runs one complete transaction (it must be safe to run again after a failure).
    what : str
        Named in the warnings, e.g. ``"archive write of 500 events"``.
    deadline_s : float or None
        Give up (re-raise the last error) when this many seconds have passed since
        the first attempt; None waits forever.
    initial_delay_s, max_delay_s : float
        First wait, doubled after each failure up to ``max_delay_s``, s.
    secret : str or None
        The database password, masked if a driver message ever contains it.
    sleep, clock : callable
        Injected for tests.

    Returns
    -------
    The result of ``fn``.

    Raises
    ------
    sqlalchemy.exc.DBAPIError
        A non-transient error at once, or the last transient one after the deadline.
    """
    start = clock()
    delay = initial_delay_s
    attempt = 1
    while True:
        try:
            return fn()
        except sa_exc.DBAPIError as exc:
            if not is_transient(exc):
                raise
            waited = clock() - start
            if deadline_s is not None and waited + delay > deadline_s:
                log.error("%s failed after %d attempts in %.1f s: %s", what, attempt, waited, describe(exc, secret))
                raise
            log.warning(
                "%s: database unavailable (%s); retry %d in %.1f s", what, describe(exc, secret), attempt, delay
            )
            sleep(delay)
            delay = min(delay * 2, max_delay_s)
            attempt += 1


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when ``exc`` says the archive's storage is unavailable, not that a message is bad.

    Such errors are waited out (the batch is retried) instead of bisected: a full disk
    or a lost database connection must not send good alerts to the dead-letter topic.
    """
    import psycopg
    import sqlalchemy.exc as sa_exc

    from broker.archive.raw import RawStoreError

    if isinstance(exc, (OSError, RawStoreError)):
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError,
                        psycopg.InterfaceError)):
        return is_outage_sqlstate(sqlstate(exc))
    return False
