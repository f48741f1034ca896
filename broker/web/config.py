"""Settings of the web interface's logins: the ``[web]`` section of the broker's settings.

A settings plugin like ``[publish]``: ``pyproject.toml`` registers :class:`WebSettings`
under the entry-point group ``mma_broker.settings`` as ``web``, so the TOML table
``[web]`` and the variables ``MMA_BROKER_WEB__*`` reach it.

Secrets (the key that signs session cookies, the password of a read-only database login)
are ``SecretStr``: never printed, logged or put in an error. They come from the
environment (``MMA_BROKER_WEB__SESSION_SECRET``) or from the 0600 ``secrets_file``
under the keys of :attr:`WebSettings.secrets_file_keys`, never from the TOML preset by
convention.

Imports pydantic and :mod:`broker.config` only: settings load on every command.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from broker.config import Section

READONLY_ROLE = "mma_broker_web_ro"
"""Default name of the PostgreSQL role the pages and the read API run as."""


class WebSettings(Section):
    """Logins, API tokens and the read-only database role of ``mma-broker serve`` (docs/web.md)."""

    session_secret: SecretStr | None = None
    """Key that signs the session and CSRF cookies (at least 32 characters):
    ``MMA_BROKER_WEB__SESSION_SECRET`` or secrets_file ``web_session_secret``. Unset: a
    random key per process, so every login ends when ``serve`` restarts (a log line says so)."""
    session_max_age_s: int = Field(12 * 3600, ge=60, le=30 * 86400)
    """A login lasts this long, s (then the desk asks for the password again)."""
    login_max_failures: int = Field(5, ge=1, le=1000)
    """Failed logins per user name, and per client address, within ``login_window_s``
    before further attempts are refused (HTTP 429) until the window has passed."""
    login_window_s: float = Field(900.0, gt=0, le=86400)
    """Window of ``login_max_failures``, s."""
    readonly_role: str | None = READONLY_ROLE
    """PostgreSQL role the pages and the read JSON API run as (``SET ROLE`` on every
    connection of the read engine, in read-only transactions): it holds SELECT on the
    archive's tables and nothing on the logins' tables. Created by ``mma-broker web
    readonly-role`` (by ``serve`` itself on the embedded PostgreSQL). None: read-only
    transactions only, as the broker's own user."""
    read_database_url: SecretStr | None = None
    """A separate database URL for the read engine (a LOGIN role with SELECT only, its own
    password): ``MMA_BROKER_WEB__READ_DATABASE_URL`` or secrets_file
    ``web_read_database_url``. When set, ``readonly_role`` is not used."""
    max_form_bytes: int = Field(256 * 1024, ge=1024, le=16 * 2**20)
    """Largest form or JSON body the login and desk routes accept, bytes (a circular
    edit included); larger ones answer 413."""

    secrets_file_keys: ClassVar[dict[str, str]] = {
        "web_session_secret": "session_secret",
        "web_read_database_url": "read_database_url",
    }
    """Keys of the ``secrets_file`` that fill fields of this section (key → field)."""

    @field_validator("session_secret")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must have at least 32 characters (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        return v

    @field_validator("readonly_role")
    @classmethod
    def _role_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("a role name of lower-case letters, digits and _ (at most 63)")
        return v
