"""The read-only PostgreSQL role the pages and the read JSON API run as (issue 13, item 6).

``mma-broker serve`` reads the archive for its pages and ``/api`` through a *read
engine* whose every connection runs ``SET ROLE mma_broker_web_ro`` and
``SET default_transaction_read_only = on`` when it is opened: a bug (or an injected
statement) in a page cannot write, and cannot read the logins' tables. The approval
desk's decisions and the logins use the broker's normal engine.

The role (:func:`ensure_readonly_role`, ``mma-broker web readonly-role``; ``serve``
makes it by itself on the embedded PostgreSQL of the quickstart) is ``NOLOGIN``: it is
reached only by ``SET ROLE`` from the broker's own user, which is made a member of it.
It holds ``USAGE`` on the archive's schema, ``SELECT`` on every table there, and the
default privilege of ``SELECT`` on the tables the broker's user creates later (a new
migration's tables are readable by the pages without another run); ``web_accounts``
and ``web_api_tokens`` (password hashes, token hashes) are revoked from it.

Limits: ``SET ROLE`` can be undone by ``RESET ROLE`` in the same session, so the role
guards against mistakes and single injected statements, not against arbitrary SQL run
on the connection. For a separation the server enforces, create a LOGIN role with its
own password holding the same grants and give its URL as ``[web] read_database_url``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa

from broker.errors import BrokerError

log = logging.getLogger(__name__)

PRIVATE_TABLES = ("web_accounts", "web_api_tokens")
"""Tables the read-only role must not read."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _ident(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BrokerError(f"{name[:70]!r} is not a role name of lower-case letters, digits and _")
    return f'"{name}"'


def ensure_readonly_role(engine: sa.Engine, role: str) -> dict[str, Any]:
    """Create or update the read-only role (idempotent).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine, connected as the user that owns its tables (the one that
        ran the migrations), with the right to create roles (``CREATEROLE`` or superuser)
        when the role does not exist yet.
    role : str
        Role name (``[web] readonly_role``).

    Returns
    -------
    dict
        ``{"role", "created", "schema", "tables"}``: whether it was created now, the
        schema and the number of tables it may read.

    Raises
    ------
    BrokerError
        The role name is not a plain identifier, or PostgreSQL refused (the message
        says which privilege is missing, never the database URL).
    """
    q = _ident(role)
    try:
        with engine.begin() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            me = conn.execute(sa.text("SELECT current_user")).scalar_one()
            if me == role:
                raise BrokerError(f"connected as {role} itself: run this as the archive's owner")
            exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
            if exists is None:
                conn.execute(sa.text(f"CREATE ROLE {q} NOLOGIN"))
            s = f'"{schema}"'
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {s} TO {q}"))
            conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {q}"))
            conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {q}"))
            private = [t for t in PRIVATE_TABLES
                       if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"{s}.{t}"}).scalar() is not None]
            if private:
                conn.execute(sa.text(f"REVOKE ALL ON {', '.join(private)} FROM {q}"))
            member = conn.execute(sa.text("SELECT pg_has_role(current_user, :r, 'MEMBER')"), {"r": role}).scalar()
            if not member:
                conn.execute(sa.text(f'GRANT {q} TO "{me}"'))
            n = conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = :s AND "
                                     "has_table_privilege(:r, format('%I.%I', schemaname, tablename), 'SELECT')"),
                             {"s": schema, "r": role}).scalar_one()
    except sa.exc.DBAPIError as exc:
        reason = getattr(getattr(exc, "orig", None), "diag", None)
        text = getattr(reason, "message_primary", None) or type(exc.orig or exc).__name__
        raise BrokerError(f"cannot set up the read-only role {role}: {text}") from None
    return {"role": role, "created": exists is None, "schema": schema, "tables": int(n)}


def role_usable(engine: sa.Engine, role: str) -> bool:
    """Whether ``role`` exists, the engine's user may ``SET ROLE`` to it, it may read this
    database's ``events`` (roles are cluster-wide, grants are per database: a role set up
    for another database of the same server is not usable here), and it cannot read the logins."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None:
            return False
        if not conn.execute(sa.text("SELECT pg_has_role(current_user, :r, 'MEMBER')"), {"r": role}).scalar():
            return False
        if not conn.execute(sa.text("SELECT has_schema_privilege(:r, current_schema(), 'USAGE') AND "
                                    "has_table_privilege(:r, 'events', 'SELECT')"), {"r": role}).scalar():
            return False
        for t in PRIVATE_TABLES:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": t}).scalar() is not None and \
                    conn.execute(sa.text("SELECT has_table_privilege(:r, :t, 'SELECT')"), {"r": role, "t": t}).scalar():
                return False
    return True


def read_only_engine(url: str | sa.URL, role: str | None, **kwargs: Any) -> sa.Engine:
    """An engine whose connections cannot write: ``SET ROLE role`` (when given) and
    ``default_transaction_read_only``, committed as each connection opens.

    Parameters
    ----------
    url : str or sqlalchemy.URL
    role : str or None
        None: read-only transactions only, as the URL's user.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.
    """
    from sqlalchemy import event

    statements = ([f"SET ROLE {_ident(role)}"] if role else []) + ["SET default_transaction_read_only = on"]
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _readonly(dbapi_conn: Any, _record: Any) -> None:
        # a SET inside a transaction that is rolled back is undone: commit it at once
        cur = dbapi_conn.cursor()
        try:
            for stmt in statements:
                cur.execute(stmt)
        finally:
            cur.close()
        dbapi_conn.commit()

    return engine


def read_engine_for(settings: Any, engine: sa.Engine) -> sa.Engine:
    """The read engine of ``serve``: the pages and ``/api`` use it, the desk ``engine``.

    ``[web] read_database_url`` when set; else the archive's URL with ``SET ROLE [web]
    readonly_role``. On the embedded PostgreSQL (no ``[archive] database_url``) the role
    is created or updated first. When the role is missing or not usable (an operator
    has not run ``mma-broker web readonly-role``) a warning says so and the pages run in
    read-only transactions as the broker's user.
    """
    from broker.web.config import WebSettings

    web = getattr(settings, "web", None)
    if not isinstance(web, WebSettings):
        web = WebSettings()
    opts = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    if web.read_database_url is not None:
        return read_only_engine(web.read_database_url.get_secret_value(), None, **opts)
    role = web.readonly_role
    url = engine.url
    if role is not None:
        embedded = getattr(getattr(settings, "archive", None), "database_url", "x") is None
        try:
            if embedded:
                info = ensure_readonly_role(engine, role)
                log.info("read-only role %s: SELECT on %d tables", role, info["tables"])
            if not role_usable(engine, role):
                log.warning("the read-only role %s is missing, not granted to the broker's user, or can read the "
                            "logins: run `mma-broker web readonly-role`; until then the pages run in read-only "
                            "transactions as the broker's user", role)
                role = None
        except (BrokerError, sa.exc.SQLAlchemyError) as exc:
            log.warning("read-only role %s not set up (%s); the pages run in read-only transactions as the "
                        "broker's user", role, exc if isinstance(exc, BrokerError) else type(exc).__name__)
            role = None
    return read_only_engine(url, role, **opts)
