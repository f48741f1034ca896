"""Logins, sessions, CSRF and API tokens of ``mma-broker serve`` (issue 13, item 6).

Reading pages stay open; approving, rejecting and editing outgoing messages (the approval
desk, :mod:`broker.web.desk`) need a login or, for scripts, an API token.

Accounts (table ``web_accounts``, migration 0012)
    A user name and an Argon2id password hash made by argon2-cffi's
    :class:`argon2.PasswordHasher` (RFC 9106's recommended parameters; the encoded hash
    carries them with its salt, and a hash made with older parameters is replaced at the
    next login). ``mma-broker web users add|list|disable|enable`` manages them; a
    password is read from a prompt or a 0600 file, never from an argument.
Sessions
    ``/login`` checks the password and sets the cookie ``mma_session``: the account id,
    its ``session_epoch`` and a random nonce, signed with ``[web] session_secret`` by
    itsdangerous (``URLSafeTimedSerializer``, HMAC-SHA1 over a key derived with the salt;
    the signature includes the time, so a cookie older than ``session_max_age_s`` is
    refused). Each request re-reads the account: a disabled account, or one whose epoch
    moved on (logout, disable, a new password) has no session any more. The cookie is
    ``HttpOnly``, ``SameSite=Lax``, and ``Secure`` when ``[publish] public_base_url`` is
    https. Without a configured secret a random one is made per process (a log line says
    sessions end when ``serve`` restarts).
CSRF
    Every POST form carries ``csrf_token``: an HMAC-SHA256 (keyed with the session
    secret) of the session's nonce, or, on the login form, of the nonce of the
    short-lived cookie ``mma_login``. A POST whose token is missing or wrong answers 403
    before anything is done. (The synchronizer-token pattern of the OWASP CSRF
    Prevention Cheat Sheet, with the token derived instead of stored.)
Failed logins
    Counted in memory per user name and per client address (:class:`LoginLimiter`):
    after ``login_max_failures`` failures within ``login_window_s`` further attempts
    answer 429 until the oldest failure leaves the window, without checking the
    password. An unknown user name costs the same Argon2 verification as a known one.
API tokens (table ``web_api_tokens``)
    ``mma-broker web tokens create --user NAME [--expires DAYS]`` prints a token
    (``mmab_`` + 43 URL-safe characters, 256 random bits) once; only its sha256 is
    stored. ``Authorization: Bearer <token>`` authenticates the desk's JSON routes; a
    revoked or expired token, or one of a disabled account, is refused at once (each
    request looks the hash up).

OIDC logins are not built: the accounts above cover a broker's handful of approvers,
and an OIDC client (authlib) needs a registered client, its secret and a redirect URL
per deployment; docs/web.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote

import sqlalchemy as sa
from fastapi import Request

from broker.errors import BrokerError

log = logging.getLogger(__name__)

SESSION_COOKIE = "mma_session"
LOGIN_COOKIE = "mma_login"
"""Cookie of the login form's CSRF nonce (10 minutes)."""
TOKEN_PREFIX = "mmab_"
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""User names: 1 to 64 ASCII letters, digits and ``. _ @ -``, starting with a letter or digit."""
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
"""Longest password accepted (Argon2 hashes any length; this bounds the work of a request)."""
MAX_TOKEN_NAME_CHARS = 200


class AuthError(BrokerError):
    """A user name, password or token that cannot be used (one line, no secret in it)."""


# ------------------------------------------------------------------ tables
def auth_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Define ``web_accounts`` and ``web_api_tokens`` (migration 0012) on ``metadata``."""
    accounts = sa.Table(
        "web_accounts", metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False, comment="Argon2id, argon2-cffi encoded form"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0",
                  comment="moved on by logout, disable and a new password: older session cookies stop working"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_login_at", sa.TIMESTAMP(timezone=True), nullable=True),
    )
    tokens = sa.Table(
        "web_api_tokens", metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("account_id", sa.BigInteger, sa.ForeignKey("web_accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default="", comment="what the token is for"),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True, comment="sha256 hex of the token"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Index("ix_web_api_tokens_account_id", "account_id"),
    )
    return accounts, tokens


ACCOUNTS, TOKENS = auth_tables(sa.MetaData())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_username(name: Any) -> str:
    """``name`` if it is a valid user name (:data:`USERNAME`).

    Raises
    ------
    AuthError
        Not text, empty, longer than 64 characters, or other characters (NUL, spaces,
        non-ASCII); the message never repeats the input.
    """
    if not isinstance(name, str) or not USERNAME.fullmatch(name):
        raise AuthError("a user name has 1 to 64 ASCII letters, digits and . _ @ - (starting with a letter or digit)")
    return name


def check_password(password: Any) -> str:
    """``password`` if it can be set: 10 to 1,024 characters, no control characters.

    Raises
    ------
    AuthError
    """
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AuthError(f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in password):
        raise AuthError("a password holds no control characters and no lone surrogates")
    return password


def token_sha256(token: str) -> str:
    """sha256 hex of a token's UTF-8 bytes (what ``web_api_tokens`` stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Account:
    """One ``web_accounts`` row, without its hash."""

    id: int
    username: str
    disabled: bool
    session_epoch: int
    created_at: datetime | None = None
    last_login_at: datetime | None = None


def _account(row: Any) -> Account:
    m = row._mapping
    return Account(id=m["id"], username=m["username"], disabled=m["disabled"], session_epoch=m["session_epoch"],
                   created_at=m["created_at"], last_login_at=m["last_login_at"])


class Accounts:
    """The logins and API tokens in the archive (tables of migration 0012).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's engine with write access (never the pages' read-only one: that
        role cannot read these tables).
    """

    def __init__(self, engine: sa.Engine) -> None:
        from argon2 import PasswordHasher

        self.engine = engine
        self.hasher = PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))  # an unknown user costs one verification too

    # -------------------------------------------------------------- accounts
    def add(self, username: str, password: str) -> Account:
        """Create an account.

        Raises
        ------
        AuthError
            Bad user name or password, or the name is taken.
        """
        check_username(username)
        h = self.hasher.hash(check_password(password))
        with self.engine.begin() as conn:
            row = conn.execute(sa.dialects.postgresql.insert(ACCOUNTS)
                               .values(username=username, password_hash=h)
                               .on_conflict_do_nothing(index_elements=["username"])
                               .returning(*ACCOUNTS.c)).first()
        if row is None:
            raise AuthError(f"user {username} exists (mma-broker web users list)")
        return _account(row)

    def get(self, username_or_id: str | int) -> Account | None:
        """The account of a user name or id; None if absent."""
        c = ACCOUNTS.c
        cond = c.id == username_or_id if isinstance(username_or_id, int) else c.username == username_or_id
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ACCOUNTS).where(cond)).first()
        return _account(row) if row is not None else None

    def list(self) -> list[Account]:
        """Every account, by user name."""
        with self.engine.connect() as conn:
            return [_account(r) for r in conn.execute(sa.select(ACCOUNTS).order_by(ACCOUNTS.c.username))]

    def set_disabled(self, username: str, disabled: bool) -> Account:
        """Disable (or enable) an account; disabling ends its sessions and its tokens stop working.

        Raises
        ------
        AuthError
            No such user.
        """
        c = ACCOUNTS.c
        with self.engine.begin() as conn:
            row = conn.execute(ACCOUNTS.update().where(c.username == username)
                               .values(disabled=disabled, session_epoch=c.session_epoch + 1)
                               .returning(*ACCOUNTS.c)).first()
        if row is None:
            raise AuthError(f"no user {username}")
        return _account(row)

    def set_password(self, username: str, password: str) -> Account:
        """Replace a password (every session of the account ends).

        Raises
        ------
        AuthError
        """
        h = self.hasher.hash(check_password(password))
        c = ACCOUNTS.c
        with self.engine.begin() as conn:
            row = conn.execute(ACCOUNTS.update().where(c.username == username)
                               .values(password_hash=h, session_epoch=c.session_epoch + 1)
                               .returning(*ACCOUNTS.c)).first()
        if row is None:
            raise AuthError(f"no user {username}")
        return _account(row)

    def end_sessions(self, account_id: int) -> None:
        """Log out everywhere: move the account's session epoch on."""
        c = ACCOUNTS.c
        with self.engine.begin() as conn:
            conn.execute(ACCOUNTS.update().where(c.id == int(account_id)).values(session_epoch=c.session_epoch + 1))

    def verify(self, username: str, password: str) -> Account | None:
        """The enabled account whose password this is, else None.

        An unknown or malformed user name, a disabled account and a wrong password all
        cost one Argon2 verification and give None. A hash made with weaker parameters
        than the hasher's is replaced (``check_needs_rehash``); ``last_login_at`` is set.
        """
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        row = None
        if isinstance(username, str) and USERNAME.fullmatch(username):
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(ACCOUNTS).where(ACCOUNTS.c.username == username)).first()
        ok_text = isinstance(password, str) and 0 < len(password) <= MAX_PASSWORD_CHARS
        stored = row.password_hash if row is not None else self._dummy
        try:
            good = self.hasher.verify(stored, password if ok_text else "\x00invalid")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        if not good or row is None or not ok_text or row.disabled:
            return None
        values: dict[str, Any] = {"last_login_at": _now()}
        if self.hasher.check_needs_rehash(stored):
            values["password_hash"] = self.hasher.hash(password)
        with self.engine.begin() as conn:
            row = conn.execute(ACCOUNTS.update().where(ACCOUNTS.c.id == row.id).values(**values)
                               .returning(*ACCOUNTS.c)).first()
        return _account(row)

    def session_account(self, account_id: int, epoch: int) -> Account | None:
        """The account of a session cookie, if it is enabled and the epoch still current."""
        c = ACCOUNTS.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ACCOUNTS).where(c.id == int(account_id), c.session_epoch == int(epoch),
                                                         c.disabled.is_(False))).first()
        return _account(row) if row is not None else None

    # -------------------------------------------------------------- tokens
    def create_token(self, username: str, *, name: str = "", expires_days: float | None = None) -> tuple[str, int]:
        """Make an API token for an enabled account.

        Parameters
        ----------
        username : str
        name : str
            What it is for (kept with it, shown by ``tokens list``).
        expires_days : float, optional
            Lifetime in days (> 0); None: until revoked.

        Returns
        -------
        token : str
            The token: shown once, never stored (only its sha256 is).
        id : int
            Its row id (for ``tokens revoke``).

        Raises
        ------
        AuthError
            No such user, a disabled one, a bad lifetime or name.
        """
        acct = self.get(check_username(username))
        if acct is None:
            raise AuthError(f"no user {username}")
        if acct.disabled:
            raise AuthError(f"user {username} is disabled")
        if expires_days is not None and not 0 < expires_days <= 3650:
            raise AuthError("--expires is a number of days in (0, 3650]")
        if len(name) > MAX_TOKEN_NAME_CHARS or any(unicodedata.category(c) == "Cc" for c in name):
            raise AuthError(f"a token name has at most {MAX_TOKEN_NAME_CHARS} characters, none of them control ones")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = _now() + timedelta(days=expires_days) if expires_days is not None else None
        with self.engine.begin() as conn:
            tid = conn.execute(TOKENS.insert().values(account_id=acct.id, name=name, token_sha256=token_sha256(token),
                                                      expires_at=expires).returning(TOKENS.c.id)).scalar_one()
        return token, tid

    def list_tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        """Tokens (never their value nor hash): id, user, name, created, expires, last use, revoked."""
        t, a = TOKENS.c, ACCOUNTS.c
        q = (sa.select(t.id, a.username, t.name, t.created_at, t.expires_at, t.last_used_at, t.revoked_at)
             .join_from(TOKENS, ACCOUNTS, t.account_id == a.id).order_by(t.id))
        if username is not None:
            q = q.where(a.username == username)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def revoke_token(self, token_id: int) -> bool:
        """Revoke a token by id; False when there is no such token or it was revoked already."""
        with self.engine.begin() as conn:
            n = conn.execute(TOKENS.update().where(TOKENS.c.id == int(token_id), TOKENS.c.revoked_at.is_(None))
                             .values(revoked_at=_now())).rowcount
        return n == 1

    def token_account(self, token: str) -> Account | None:
        """The enabled account of a valid (known, unrevoked, unexpired) token; records its use."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        t, a = TOKENS.c, ACCOUNTS.c
        now = _now()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(ACCOUNTS, t.id.label("token_id")).join_from(TOKENS, ACCOUNTS, t.account_id == a.id)
                .where(t.token_sha256 == token_sha256(token), t.revoked_at.is_(None), a.disabled.is_(False),
                       sa.or_(t.expires_at.is_(None), t.expires_at > now))).first()
            if row is None:
                return None
            conn.execute(TOKENS.update().where(t.id == row.token_id).values(last_used_at=now))
        return _account(row)


# ------------------------------------------------------------------ failed logins
class LoginLimiter:
    """Failed logins per key (a user name, a client address) within a sliding window.

    In memory, per process, thread-safe; at most ``max_keys`` keys are remembered (the
    oldest forgotten first), and a key is stored as its sha256, so a 10 kB user name
    costs 64 bytes.

    Parameters
    ----------
    max_failures : int
        Failures within ``window_s`` after which the key is refused.
    window_s : float
        Window, s.
    """

    def __init__(self, max_failures: int, window_s: float, *, max_keys: int = 100_000,
                 clock: Any = time.monotonic) -> None:
        self.max_failures, self.window_s, self.max_keys, self.clock = max_failures, window_s, max_keys, clock
        self._fails: dict[str, deque] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _k(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again (0: it may now)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._fails.get(self._k(key))
                if not q:
                    continue
                while q and q[0] <= now - self.window_s:
                    q.popleft()
                if len(q) >= self.max_failures:
                    wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        """Count one failure for each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                k = self._k(key)
                q = self._fails.pop(k, None) or deque(maxlen=self.max_failures)
                q.append(now)
                self._fails[k] = q  # re-inserted: the dict's order is the keys' last failure
            while len(self._fails) > self.max_keys:
                self._fails.pop(next(iter(self._fails)))

    def succeeded(self, key: str) -> None:
        """Forget a key's failures (a good login of that user name)."""
        with self._lock:
            self._fails.pop(self._k(key), None)


# ------------------------------------------------------------------ the web side
class NotLoggedIn(Exception):
    """A page that needs a login was asked for without one: redirected to ``/login``."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class FormError(Exception):
    """A form or body that cannot be read: too large (413), not UTF-8 or malformed (400)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def safe_next(path: str | None) -> str:
    """A local path to go to after login (``/desk`` when absent or not local)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 500 or \
            any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "/desk"
    return path


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The request body, refusing more than ``max_bytes`` (FormError 413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise FormError(413, f"the request body is larger than {max_bytes} bytes")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > max_bytes:
            raise FormError(413, f"the request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Any, max_bytes: int, *, max_fields: int = 20) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (last value wins).

    An empty body is an empty dict.

    Raises
    ------
    FormError
        413 when larger than ``max_bytes``; 400 when another content type, not UTF-8,
        more than ``max_fields`` fields, or a value holding NUL.
    """
    body = await read_body(request, max_bytes)
    if not body:
        return {}  # no fields (a POST without its CSRF token is then refused by the caller: 403)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise FormError(400, "expected a form (application/x-www-form-urlencoded)")
    try:
        text = body.decode("ascii")  # a urlencoded body is ASCII; its %-escapes must be UTF-8
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict",
                          max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "the form is not valid UTF-8 text or has too many fields") from None
    out = {}
    for k, v in pairs:
        if "\x00" in k or "\x00" in v:
            raise FormError(400, f"form field {k[:40]!r} holds a NUL character" if "\x00" not in k
                            else "a form field name holds a NUL character")
        out[k] = v
    return out


class WebAuth:
    """Sessions, CSRF tokens, bearer tokens and the login limiter of one app.

    Parameters
    ----------
    accounts : Accounts
    secret : str or None
        ``[web] session_secret``; None: a random one for this process (logged).
    max_age_s : int
        Session lifetime, s.
    secure : bool
        Set the cookies' ``Secure`` flag (the public URL is https).
    limiter : LoginLimiter
    """

    def __init__(self, accounts: Accounts, secret: str | None, *, max_age_s: int, secure: bool,
                 limiter: LoginLimiter) -> None:
        from itsdangerous import URLSafeTimedSerializer

        if secret is None:
            secret = secrets.token_urlsafe(48)
            log.warning("[web] session_secret is not set: using a random key for this process; "
                        "every login ends when serve restarts")
        self.accounts, self.max_age_s, self.secure, self.limiter = accounts, max_age_s, secure, limiter
        self._key = hashlib.sha256(b"mma-broker csrf\x00" + secret.encode()).digest()
        self._sessions = URLSafeTimedSerializer(secret, salt="mma-broker.web.session")
        self._logins = URLSafeTimedSerializer(secret, salt="mma-broker.web.login")

    # -------------------------------------------------------------- cookies
    def _set(self, response: Any, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=self.secure)

    def start_session(self, response: Any, account: Account) -> None:
        """Set the session cookie of a good login (a new nonce: a fixed one cannot be planted)."""
        value = self._sessions.dumps({"a": account.id, "e": account.session_epoch, "n": secrets.token_urlsafe(16)})
        self._set(response, SESSION_COOKIE, value, self.max_age_s)
        response.delete_cookie(LOGIN_COOKIE, path="/")

    def end_session(self, response: Any) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)

    def _session(self, request: Any) -> dict | None:
        from itsdangerous import BadData

        raw = request.cookies.get(SESSION_COOKIE)
        if not raw or len(raw) > 1000:
            return None
        try:
            data = self._sessions.loads(raw, max_age=self.max_age_s)
        except BadData:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("a"), int) or not isinstance(data.get("e"), int) \
                or not isinstance(data.get("n"), str):
            return None
        return data

    def user(self, request: Any) -> Account | None:
        """The logged-in account of a request (cached on ``request.state``), else None."""
        if hasattr(request.state, "mma_account"):
            return request.state.mma_account
        data = self._session(request)
        acct = self.accounts.session_account(data["a"], data["e"]) if data is not None else None
        request.state.mma_account = acct
        return acct

    def require_user(self, request: Any) -> Account:
        """The logged-in account, or :class:`NotLoggedIn` (the app redirects to ``/login``)."""
        acct = self.user(request)
        if acct is None:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise NotLoggedIn(path)
        return acct

    # -------------------------------------------------------------- CSRF
    def _mac(self, what: str, nonce: str) -> str:
        return hmac.new(self._key, f"{what}\x00{nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, request: Any) -> str | None:
        """The CSRF token of the request's session (None without a session)."""
        data = self._session(request)
        return self._mac("session", data["n"]) if data is not None else None

    def check_csrf(self, request: Any, form: dict[str, str]) -> bool:
        """Whether the form's ``csrf_token`` belongs to the request's session."""
        want = self.csrf_token(request)
        got = form.get("csrf_token", "")
        return want is not None and hmac.compare_digest(want.encode(), got.encode("utf-8", "surrogatepass"))

    def login_csrf(self) -> tuple[str, str]:
        """A fresh login-form token and the value of its ``mma_login`` cookie (:meth:`set_login_cookie`)."""
        nonce = secrets.token_urlsafe(16)
        return self._mac("login", nonce), self._logins.dumps(nonce)

    def set_login_cookie(self, response: Any, value: str) -> None:
        self._set(response, LOGIN_COOKIE, value, 600)

    def check_login_csrf(self, request: Any, form: dict[str, str]) -> bool:
        from itsdangerous import BadData

        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw or len(raw) > 500:
            return False
        try:
            nonce = self._logins.loads(raw, max_age=600)
        except BadData:
            return False
        got = form.get("csrf_token", "")
        return isinstance(nonce, str) and hmac.compare_digest(self._mac("login", nonce).encode(),
                                                              got.encode("utf-8", "surrogatepass"))

    # -------------------------------------------------------------- bearer
    def bearer(self, request: Any) -> Account | None:
        """The account of a valid ``Authorization: Bearer <token>`` header, else None."""
        h = request.headers.get("authorization", "")
        scheme, _, token = h.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.accounts.token_account(token.strip())


def client_address(request: Any) -> str:
    """The peer address of a request (the limiter's per-address key)."""
    return request.client.host if request.client is not None else "unknown"


def build_auth(settings: Any, engine: sa.Engine) -> WebAuth:
    """The :class:`WebAuth` of ``serve``, from ``[web]`` and ``[publish] public_base_url``."""
    from broker.web.config import WebSettings

    web = getattr(settings, "web", None)
    if not isinstance(web, WebSettings):
        web = WebSettings()
    secret = web.session_secret.get_secret_value() if web.session_secret is not None else None
    if secret is not None and len(secret) < 32:
        raise BrokerError("[web] session_secret must have at least 32 characters")
    publish = getattr(settings, "publish", None)
    secure = str(getattr(publish, "public_base_url", "")).startswith("https://")
    return WebAuth(Accounts(engine), secret, max_age_s=web.session_max_age_s, secure=secure,
                   limiter=LoginLimiter(web.login_max_failures, web.login_window_s))


# ------------------------------------------------------------------ routes
def install(app: Any, ctx: Any) -> None:
    """Add ``/login`` and ``/logout`` and share the :class:`WebAuth` as ``ctx.extra["auth"]``.

    Every page module gets ``user`` (the logged-in user name) in its template context
    through a context processor; pages needing a login call
    ``ctx.extra["auth"].require_user(request)``, whose :class:`NotLoggedIn` answers a
    303 redirect to ``/login?next=<path>``.
    """
    from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
    from starlette.concurrency import run_in_threadpool

    from broker.web.config import WebSettings

    engine = ctx.extra.get("write_engine", ctx.engine)
    auth = ctx.extra.get("auth") or build_auth(ctx.settings, engine)
    ctx.extra["auth"] = auth
    web = getattr(ctx.settings, "web", None)
    max_bytes = web.max_form_bytes if isinstance(web, WebSettings) else WebSettings().max_form_bytes
    templates = ctx.templates

    def who(request: Any) -> dict[str, Any]:
        if request.cookies.get(SESSION_COOKIE) is None:
            return {}
        try:
            acct = auth.user(request)
        except sa.exc.SQLAlchemyError:
            return {}
        return {"user": acct.username, "csrf_token": auth.csrf_token(request)} if acct is not None else {}

    templates.context_processors.append(who)

    @app.exception_handler(NotLoggedIn)
    async def _login_first(request: Request, exc: NotLoggedIn):
        return RedirectResponse("/login?next=" + quote(safe_next(exc.next_path), safe="/"), status_code=303)

    @app.exception_handler(FormError)
    async def _bad_form(request: Request, exc: FormError):
        if request.url.path.startswith("/api/"):
            from fastapi.responses import JSONResponse

            return JSONResponse({"detail": exc.detail, "parameter": None}, status_code=exc.status)
        return PlainTextResponse(exc.detail, status_code=exc.status)

    def _page(request: Request, *, error: str | None = None, status: int = 200, next_path: str = "/desk",
              username: str = "") -> HTMLResponse:
        token, cookie = auth.login_csrf()
        resp = templates.TemplateResponse(request, "login.html", {"error": error, "next": next_path,
                                                                  "username": username, "login_csrf": token},
                                          status_code=status, headers={"cache-control": "no-store"})
        auth.set_login_cookie(resp, cookie)
        return resp

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str | None = None):
        return _page(request, next_path=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await read_form(request, max_bytes)
        # Argon2 takes ~0.1 s of CPU and 64 MiB: off the event loop (the live stream runs on it)
        return await run_in_threadpool(_login, request, form)

    def _login(request: Request, form: dict[str, str]):
        next_path = safe_next(form.get("next"))
        if not auth.check_login_csrf(request, form):
            return _page(request, error="The form expired or was not sent by this site; try again.", status=403,
                         next_path=next_path)
        username, password = form.get("username", ""), form.get("password", "")
        keys = (f"user:{username[:200]}", f"addr:{client_address(request)}")
        wait = auth.limiter.retry_after(*keys)
        if wait > 0:
            resp = _page(request, error=f"Too many failed logins; try again in {int(wait) + 1} s.", status=429,
                         next_path=next_path)
            resp.headers["retry-after"] = str(int(wait) + 1)
            return resp
        acct = auth.accounts.verify(username, password)
        if acct is None:
            auth.limiter.failed(*keys)
            shown = username if USERNAME.fullmatch(username) else ""
            log.info("web login failed from %s", client_address(request))
            return _page(request, error="Wrong user name or password, or the account is disabled.", status=401,
                         next_path=next_path, username=shown)
        auth.limiter.succeeded(keys[0])
        log.info("web login: %s", acct.username)
        resp = RedirectResponse(next_path, status_code=303)
        auth.start_session(resp, acct)
        return resp

    @app.get("/logout", response_class=HTMLResponse, include_in_schema=False)
    def logout_page(request: Request):
        return templates.TemplateResponse(request, "login.html", {"logout": True},
                                          headers={"cache-control": "no-store"})

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        return await run_in_threadpool(_logout, request, await read_form(request, max_bytes))

    def _logout(request: Request, form: dict[str, str]):
        acct = auth.user(request)
        if acct is not None:
            if not auth.check_csrf(request, form):
                return PlainTextResponse("CSRF token missing or wrong", status_code=403)
            auth.accounts.end_sessions(acct.id)
        resp = RedirectResponse("/", status_code=303)
        auth.end_session(resp)
        return resp
