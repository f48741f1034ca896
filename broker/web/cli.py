"""``mma-broker web``: accounts, API tokens and the read-only role of ``mma-broker serve``.

``pyproject.toml`` registers :data:`app` as ``web`` under the entry-point group
``mma_broker.cli``. Like every CLI plugin module this one imports typer and the standard
library only; each command imports the rest when it runs.

* ``web users add NAME [--password-file FILE]`` — an account; the password is read from
  a prompt (not echoed, asked twice) or from a file of mode 0600 (its first line), never
  from an argument;
* ``web users list`` — accounts, disabled or not, created and last login;
* ``web users disable NAME`` / ``web users enable NAME`` — a disabled account cannot log
  in, its sessions end and its tokens stop working at once;
* ``web users password NAME [--password-file FILE]`` — a new password (sessions end);
* ``web tokens create --user NAME [--expires DAYS] [--name TEXT]`` — prints a new API
  token once (only its sha256 is stored);
* ``web tokens list [--user NAME]`` / ``web tokens revoke ID``;
* ``web readonly-role`` — create or update the PostgreSQL role the pages read as
  (:func:`broker.web.readonly.ensure_readonly_role`; idempotent).

Errors are one line, ``mma-broker: error: ...``, exit code 1.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(name="web", no_args_is_help=True, add_completion=False,
                  help="Logins of the web interface (accounts, API tokens) and its read-only database role.")
users_app = typer.Typer(name="users", no_args_is_help=True, add_completion=False,
                        help="Accounts that may approve, reject and edit on the approval desk.")
tokens_app = typer.Typer(name="tokens", no_args_is_help=True, add_completion=False,
                         help="API tokens for scripts (Authorization: Bearer <token>).")
app.add_typer(users_app)
app.add_typer(tokens_app)


def _fail(message: str) -> None:
    from broker.errors import BrokerError

    raise BrokerError(message)


def _settings():
    from broker.app import current_app

    return current_app().settings


class _Opened:
    """The archive (schema checked, not migrated) and its :class:`~broker.web.auth.Accounts`."""

    def __enter__(self):
        from broker.app import open_archive
        from broker.web.auth import Accounts

        self.archive = open_archive(_settings(), read_only=True)
        return Accounts(self.archive.engine)

    def __exit__(self, *exc) -> None:
        self.archive.close()


def read_password_file(path: Path) -> str:
    """The first line of a password file that only its owner can read.

    Raises
    ------
    BrokerError
        Missing, unreadable, readable or writable by group/others, or empty.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        _fail(f"password file {path}: {exc.strerror}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _fail(f"password file {path} has mode {oct(mode & 0o777)}; run: chmod 600 {path}")
    try:
        with path.open("rb") as fh:
            data = fh.read(8192)
    except OSError as exc:
        _fail(f"password file {path}: {exc.strerror}")
    try:
        line = data.decode("utf-8").split("\n", 1)[0].rstrip("\r")
    except UnicodeDecodeError:
        _fail(f"password file {path}: not UTF-8 text")
    if not line:
        _fail(f"password file {path}: the first line is empty")
    return line


def _password(password_file: Optional[Path], name: str) -> str:
    if password_file is not None:
        return read_password_file(password_file)
    import getpass

    first = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Again: ") != first:
        _fail("the two passwords differ")
    return first


def _name(name: str) -> str:
    from broker.web.auth import AuthError, check_username

    try:
        return check_username(name)
    except AuthError as exc:
        _fail(str(exc))


def _when(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else "-"


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="User name (letters, digits, . _ @ -; at most 64)."),
    password_file: Optional[Path] = typer.Option(None, "--password-file",
                                                 help="Read the password from this file's first line (mode 0600)."),
) -> None:
    """Create an account (the password is prompted for, or read from a 0600 file)."""
    _name(name)
    password = _password(password_file, name)
    with _Opened() as accounts:
        a = accounts.add(name, password)
    print(f"user {a.username} created (id {a.id})")


@users_app.command("password")
def users_password(
    name: str = typer.Argument(...),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="First line of this 0600 file."),
) -> None:
    """Set a new password (every session of the account ends)."""
    _name(name)
    password = _password(password_file, name)
    with _Opened() as accounts:
        accounts.set_password(name, password)
    print(f"password of {name} changed; its sessions ended")


@users_app.command("list")
def users_list(as_json: bool = typer.Option(False, "--json", help="JSON Lines.")) -> None:
    """List the accounts."""
    with _Opened() as accounts:
        rows = accounts.list()
    if as_json:
        for a in rows:
            print(json.dumps({"id": a.id, "username": a.username, "disabled": a.disabled,
                              "created_at": _when(a.created_at), "last_login_at": _when(a.last_login_at)}))
        return
    print(f"{len(rows)} account{'s' if len(rows) != 1 else ''}")
    for a in rows:
        print(f"{a.id:>5}  {a.username:<24} {'disabled' if a.disabled else 'enabled':<9} "
              f"created {_when(a.created_at)}  last login {_when(a.last_login_at)}")


@users_app.command("disable")
def users_disable(name: str = typer.Argument(...)) -> None:
    """Disable an account: no login, its sessions end and its tokens stop working at once."""
    _name(name)
    with _Opened() as accounts:
        accounts.set_disabled(name, True)
    print(f"user {name} disabled")


@users_app.command("enable")
def users_enable(name: str = typer.Argument(...)) -> None:
    """Enable a disabled account again (its unrevoked, unexpired tokens work again)."""
    _name(name)
    with _Opened() as accounts:
        accounts.set_disabled(name, False)
    print(f"user {name} enabled")


@tokens_app.command("create")
def tokens_create(
    user: str = typer.Option(..., "--user", help="The account the token acts as."),
    expires: Optional[float] = typer.Option(None, "--expires", help="Lifetime in days (default: until revoked)."),
    name: str = typer.Option("", "--name", help="What the token is for (shown by tokens list)."),
) -> None:
    """Create an API token and print it once (only its sha256 is stored)."""
    _name(user)
    with _Opened() as accounts:
        token, tid = accounts.create_token(user, name=name, expires_days=expires)
    import sys

    print(f"token {tid} for {user}{f', expires in {expires:g} days' if expires else ''}; "
          "it is shown only now:", file=sys.stderr)
    print(token)


@tokens_app.command("list")
def tokens_list(user: Optional[str] = typer.Option(None, "--user", help="Only this account's tokens.")) -> None:
    """List the tokens (never their values)."""
    with _Opened() as accounts:
        rows = accounts.list_tokens(user)
    print(f"{len(rows)} token{'s' if len(rows) != 1 else ''}")
    for t in rows:
        state = "revoked" if t["revoked_at"] else "active"
        print(f"{t['id']:>5}  {t['username']:<20} {state:<8} created {_when(t['created_at'])}  "
              f"expires {_when(t['expires_at'])}  last used {_when(t['last_used_at'])}  {t['name']}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: int = typer.Argument(..., help="Token id (tokens list).")) -> None:
    """Revoke a token: refused from the next request on."""
    with _Opened() as accounts:
        ok = accounts.revoke_token(token_id)
    if not ok:
        _fail(f"no active token {token_id}")
    print(f"token {token_id} revoked")


@app.command("readonly-role")
def readonly_role(
    role: Optional[str] = typer.Option(None, "--role", help="Role name (default [web] readonly_role)."),
) -> None:
    """Create or update the read-only PostgreSQL role the pages and the read API run as (idempotent)."""
    from broker.app import open_archive
    from broker.web.readonly import ensure_readonly_role

    s = _settings()
    name = role or getattr(getattr(s, "web", None), "readonly_role", None) or "mma_broker_web_ro"
    archive = open_archive(s, read_only=True)
    try:
        info = ensure_readonly_role(archive.engine, name)
    finally:
        archive.close()
    print(f"read-only role {info['role']} {'created' if info['created'] else 'updated'}: SELECT on "
          f"{info['tables']} tables of schema {info['schema']} (and on new ones), nothing on the logins' tables")
