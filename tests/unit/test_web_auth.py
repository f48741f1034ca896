"""Logins, sessions, CSRF, API tokens and the read-only role of ``mma-broker serve``
(broker/web/auth.py, broker/web/readonly.py, broker/web/cli.py) on the real PostgreSQL.

Requests go through FastAPI's TestClient to the app ``serve`` builds
(:func:`broker.sinks.web.make_app` with settings, so every page module is mounted).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from broker.archive import Archive, PostgresRawStore
from broker.config import settings_class
from broker.sinks.web import make_app
from broker.web.auth import ACCOUNTS, TOKENS, Accounts, AuthError, LoginLimiter
from tests.conftest import _new_database

PASSWORD = "correct horse battery staple"
SECRET = "s3cr3t-" * 6


def web_settings(**web):
    public = web.pop("public", "http://broker.test")
    return settings_class()(web={"session_secret": SECRET, **web}, publish={"public_base_url": public})


@pytest.fixture(scope="module")
def db(pg_url):
    """(url, engine) of a migrated archive with the accounts alice (enabled) and bob (disabled)."""
    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        acc = Accounts(archive.engine)
        acc.add("alice", PASSWORD)
        acc.add("bob", PASSWORD)
        acc.set_disabled("bob", True)
        try:
            yield url, archive.engine
        finally:
            archive.close()


def client_for(engine, **web) -> TestClient:
    base = "https://testserver" if web.get("public", "").startswith("https://") else "http://testserver"
    return TestClient(make_app(lambda _: None, "http://broker.test", engine, web_settings(**web)),
                      raise_server_exceptions=False, follow_redirects=False, base_url=base)


def login_token(client: TestClient) -> str:
    page = client.get("/login")
    assert page.status_code == 200 and 'id="login"' in page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def login(client: TestClient, username: str = "alice", password: str = PASSWORD, next_path: str = "/desk"):
    return client.post("/login", data={"username": username, "password": password, "next": next_path,
                                       "csrf_token": login_token(client)})


@pytest.fixture()
def client(db):
    return client_for(db[1], login_max_failures=1000)


def test_password_is_stored_as_argon2id_never_in_clear(db):
    with db[1].connect() as conn:
        h = conn.execute(sa.select(ACCOUNTS.c.password_hash).where(ACCOUNTS.c.username == "alice")).scalar_one()
    assert h.startswith("$argon2id$") and PASSWORD not in h
    acc = Accounts(db[1])
    assert acc.verify("alice", PASSWORD).username == "alice"
    assert acc.verify("alice", PASSWORD + "x") is None and acc.verify("nobody", PASSWORD) is None
    assert acc.verify("bob", PASSWORD) is None  # disabled
    with pytest.raises(AuthError, match="exists"):
        acc.add("alice", PASSWORD)
    with pytest.raises(AuthError, match="10 to 1024"):
        acc.add("carol", "short")


def test_desk_without_login_redirects_to_login(client):
    r = client.get("/desk")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/desk"
    r = client.get("/desk/5")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/desk/5"


def test_good_login_sets_a_safe_session_cookie_and_opens_the_desk(client):
    r = login(client, next_path="/desk")
    assert r.status_code == 303 and r.headers["location"] == "/desk"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("mma_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # http public URL
    page = client.get("/desk")
    assert page.status_code == 200 and 'id="pending"' in page.text and "alice" in page.text
    # the read pages show who is logged in too (context processor)
    assert "alice" in client.get("/login").text


def test_session_cookie_is_secure_behind_https(db):
    c = client_for(db[1], public="https://broker.example.org")
    r = login(c)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("mma_session="))
    assert "Secure" in cookie


@pytest.mark.parametrize("username,password", [("alice", "wrong password!"), ("bob", PASSWORD),
                                               ("nobody", PASSWORD)])
def test_bad_or_disabled_login_is_refused_the_same_way(client, username, password):
    r = login(client, username, password)
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert not any(h.startswith("mma_session=") for h in r.headers.get_list("set-cookie"))
    assert client.get("/desk").status_code == 303


def test_login_without_csrf_token_is_403(client):
    client.get("/login")
    r = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 403
    r = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": "0" * 64})
    assert r.status_code == 403
    assert client.get("/desk").status_code == 303


def test_next_is_local_only(client):
    r = login(client, next_path="https://evil.example/")
    assert r.headers["location"] == "/desk"
    r = login(client, next_path="//evil.example/x")
    assert r.headers["location"] == "/desk"


def test_failed_logins_are_limited_per_user_name(db):
    c = client_for(db[1], login_max_failures=3, login_window_s=60)
    for _ in range(3):
        assert login(c, "alice", "wrong password!").status_code == 401
    r = login(c, "alice", PASSWORD)  # even the right password waits
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_limiter_window_slides():
    now = [0.0]
    lim = LoginLimiter(2, 10.0, clock=lambda: now[0])
    lim.failed("user:x")
    assert lim.retry_after("user:x") == 0
    lim.failed("user:x")
    assert lim.retry_after("user:x") == pytest.approx(10.0)
    now[0] = 10.5
    assert lim.retry_after("user:x") == 0
    lim.failed("user:" + "y" * 10_000)  # stored by hash
    assert all(len(k) == 64 for k in lim._fails)


def test_logout_ends_the_session_everywhere(db):
    c1, c2 = client_for(db[1]), client_for(db[1])
    login(c1)
    login(c2)
    assert c2.get("/desk").status_code == 200
    page = c1.get("/logout")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert c1.post("/logout", data={}).status_code == 403  # CSRF-less logout refused
    r = c1.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303
    assert c1.get("/desk").status_code == 303 and c2.get("/desk").status_code == 303


def test_disabling_an_account_ends_its_session_at_once(db):
    acc = Accounts(db[1])
    acc.add("dave", PASSWORD)
    c = client_for(db[1])
    assert login(c, "dave").status_code == 303 and c.get("/desk").status_code == 200
    acc.set_disabled("dave", True)
    assert c.get("/desk").status_code == 303


def test_a_forged_or_foreign_session_cookie_is_no_login(db):
    c = client_for(db[1])
    login(c)
    value = c.cookies.get("mma_session")
    other = client_for(db[1], session_secret="another-secret-" * 3)
    other.cookies.set("mma_session", value)
    assert other.get("/desk").status_code == 303
    c.cookies.set("mma_session", value[:-3] + "abc")
    assert c.get("/desk").status_code == 303


@pytest.mark.parametrize("username", ["a" * 10_000, "alïce", " alice", "alice\n", "ａｌｉｃｅ"])
def test_hostile_user_names_are_a_failed_login(client, username):
    r = login(client, username, PASSWORD)
    assert r.status_code == 401 and "a" * 200 not in r.text


def test_a_nul_in_a_form_is_refused_before_any_check(client):
    r = login(client, "al\x00ice", PASSWORD)
    assert r.status_code == 400 and "NUL" in r.text


def test_undecodable_or_huge_forms(client):
    token = login_token(client)
    r = client.post("/login", content=f"username=%ff%fe&password=x&csrf_token={token}".encode(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    r = client.post("/login", content=f"username=%ed%a0%80&password=x&csrf_token={token}".encode(),  # a surrogate
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    r = client.post("/login", content=b"username=" + b"a" * 300_000,
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = client.post("/login", content=b'{"username": "alice"}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/login", content=b"username=al%00ice&password=x&csrf_token=" + token.encode(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Traceback" not in r.text


def test_tokens_create_use_revoke_expire(db):
    acc = Accounts(db[1])
    c = client_for(db[1])
    token, tid = acc.create_token("alice", name="script")
    assert token.startswith("mmab_") and len(token) >= 40
    with db[1].connect() as conn:
        stored = conn.execute(sa.select(TOKENS.c.token_sha256).where(TOKENS.c.id == tid)).scalar_one()
    assert token not in stored and len(stored) == 64
    ok = c.get("/api/desk/pending", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "items" in ok.json()
    for bad in (None, "Bearer ", "Bearer mmab_nope", f"Basic {token}", f"Bearer {token}x"):
        r = c.get("/api/desk/pending", headers={"Authorization": bad} if bad else {})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert acc.revoke_token(tid) and not acc.revoke_token(tid)
    assert c.get("/api/desk/pending", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # expired
    t2, id2 = acc.create_token("alice", expires_days=1)
    assert c.get("/api/desk/pending", headers={"Authorization": f"Bearer {t2}"}).status_code == 200
    with db[1].begin() as conn:
        conn.execute(TOKENS.update().where(TOKENS.c.id == id2)
                     .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert c.get("/api/desk/pending", headers={"Authorization": f"Bearer {t2}"}).status_code == 401
    # a disabled account's tokens stop working; enabled again, they work again
    acc.add("erin", PASSWORD)
    t3, _ = acc.create_token("erin")
    acc.set_disabled("erin", True)
    assert c.get("/api/desk/pending", headers={"Authorization": f"Bearer {t3}"}).status_code == 401
    acc.set_disabled("erin", False)
    assert c.get("/api/desk/pending", headers={"Authorization": f"Bearer {t3}"}).status_code == 200
    with pytest.raises(AuthError):
        acc.create_token("bob")  # disabled
    listed = acc.list_tokens("alice")
    assert {t["id"] for t in listed} >= {tid, id2} and all("token_sha256" not in t for t in listed)


def test_session_secret_is_a_secret_and_must_be_long(clean_env_web):
    from broker.config import SettingsError

    with pytest.raises(SettingsError) as err:
        settings_class()(web={"session_secret": "short-secret-value"})
    assert "short-secret-value" not in str(err.value) and "session_secret" in str(err.value)
    s = settings_class()(web={"session_secret": SECRET})
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())


def test_session_secret_from_the_0600_secrets_file(clean_env_web, tmp_path):
    from broker.config import load_settings

    f = tmp_path / "secrets.toml"
    f.write_text(f'web_session_secret = "{SECRET}"\n')
    os.chmod(f, 0o600)
    clean_env_web.setenv("MMA_BROKER_SECRETS_FILE", str(f))
    assert load_settings().web.session_secret.get_secret_value() == SECRET


@pytest.fixture()
def clean_env_web(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_without_a_secret_sessions_use_a_random_key_and_say_so(db, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="broker.web.auth")
    app = make_app(lambda _: None, "http://broker.test", db[1],
                   settings_class()(publish={"public_base_url": "http://broker.test"}))
    assert any("session_secret is not set" in r.getMessage() and "restarts" in r.getMessage() for r in caplog.records)
    c = TestClient(app, follow_redirects=False)
    assert login(c).status_code == 303 and c.get("/desk").status_code == 200


def test_password_file_must_be_0600(tmp_path):
    from broker.errors import BrokerError
    from broker.web.cli import read_password_file

    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\nignored\n")
    os.chmod(f, 0o644)
    with pytest.raises(BrokerError, match="chmod 600"):
        read_password_file(f)
    os.chmod(f, 0o600)
    assert read_password_file(f) == PASSWORD


# ------------------------------------------------------------------ read-only role
def test_readonly_role_cannot_write_nor_read_logins(db):
    from broker.web.readonly import ensure_readonly_role, read_only_engine, role_usable

    url, engine = db
    info = ensure_readonly_role(engine, "mma_broker_web_ro")
    again = ensure_readonly_role(engine, "mma_broker_web_ro")  # idempotent
    assert info["tables"] == again["tables"] > 5 and not again["created"]
    assert role_usable(engine, "mma_broker_web_ro")
    ro = read_only_engine(url, "mma_broker_web_ro")
    try:
        with ro.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == "mma_broker_web_ro"
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() >= 0
        for stmt in ("INSERT INTO outbox (key, channel, payload, payload_sha256, state) "
                     "VALUES ('k', 'hermes', '{}', 'x', 'queued')",
                     "UPDATE web_accounts SET disabled = true", "SELECT password_hash FROM web_accounts",
                     "SELECT token_sha256 FROM web_api_tokens", "CREATE TABLE x (i int)"):
            with ro.connect() as conn, pytest.raises(sa.exc.DBAPIError) as err:
                conn.execute(sa.text(stmt))
            assert type(err.value.orig).__name__ in ("InsufficientPrivilege", "ReadOnlySqlTransaction"), stmt
        # even back as the broker's user, the transaction stays read-only
        with ro.connect() as conn, pytest.raises(sa.exc.DBAPIError) as err:
            conn.execute(sa.text("RESET ROLE"))
            conn.execute(sa.text("DELETE FROM outbox"))
        assert type(err.value.orig).__name__ == "ReadOnlySqlTransaction"
    finally:
        ro.dispose()
    # a table made later (a new migration) is readable by the role through the default privileges
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE later_table (i int)"))
        assert conn.execute(sa.text("SELECT has_table_privilege('mma_broker_web_ro', 'later_table', 'SELECT')")
                            ).scalar()
        conn.execute(sa.text("DROP TABLE later_table"))


def test_the_app_pages_and_api_run_on_the_read_engine_and_the_desk_writes(db):
    from broker.web.readonly import ensure_readonly_role, read_only_engine

    url, engine = db
    ensure_readonly_role(engine, "mma_broker_web_ro")
    ro = read_only_engine(url, "mma_broker_web_ro")
    try:
        app = make_app(lambda _: None, "http://broker.test", ro, web_settings(), write_engine=engine)
        c = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
        assert c.get("/api/events").status_code == 200
        assert login(c).status_code == 303 and c.get("/desk").status_code == 200  # logins on the write engine
        assert app.state.api_engine is ro
    finally:
        ro.dispose()


def test_web_settings_validate_the_role_name():
    from broker.config import SettingsError

    with pytest.raises(SettingsError, match="readonly_role"):
        settings_class()(web={"readonly_role": "x; DROP TABLE events"})


# ------------------------------------------------------------------ the CLI
def test_cli_users_tokens_and_readonly_role(pg_url, tmp_path):
    """``mma-broker web ...`` as a user runs it, on a database of its own."""
    from tests.conftest import run_cli

    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
        env.update(MMA_BROKER_HOME=str(tmp_path / "home"), MMA_BROKER_ARCHIVE__DATABASE_URL=url)
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD + "\n")
        os.chmod(pw, 0o644)
        bad = run_cli(env, "web", "users", "add", "frank", "--password-file", str(pw), check=False)
        assert bad.returncode == 1 and "chmod 600" in bad.stderr and "Traceback" not in bad.stderr
        os.chmod(pw, 0o600)
        run_cli(env, "web", "users", "add", "frank", "--password-file", str(pw))
        assert Accounts(archive.engine).verify("frank", PASSWORD) is not None
        bad = run_cli(env, "web", "users", "add", "x" * 10_000, "--password-file", str(pw), check=False)
        assert bad.returncode == 1 and "x" * 100 not in bad.stderr
        made = run_cli(env, "web", "tokens", "create", "--user", "frank", "--expires", "7", "--name", "ci")
        token = made.stdout.strip()
        assert token.startswith("mmab_") and "shown only now" in made.stderr
        listed = run_cli(env, "web", "tokens", "list").stdout
        assert "frank" in listed and token not in listed and "active" in listed
        tid = re.search(r"^\s*(\d+)\s+frank", listed, re.M).group(1)
        run_cli(env, "web", "tokens", "revoke", tid)
        assert Accounts(archive.engine).token_account(token) is None
        assert "disabled" in run_cli(env, "web", "users", "disable", "frank").stdout
        assert "frank" in run_cli(env, "web", "users", "list").stdout
        out = run_cli(env, "web", "readonly-role", "--role", "mma_test_ro").stdout
        assert "read-only role mma_test_ro" in out and "tables" in out
        out = run_cli(env, "web", "readonly-role", "--role", "mma_test_ro").stdout  # idempotent
        assert "updated" in out
        archive.close()


def test_serve_read_engine_sets_the_role_up_on_the_embedded_database_and_warns_otherwise(db, caplog):
    import logging

    from broker.web.readonly import read_engine_for

    url, engine = db
    embedded = settings_class()(web={"readonly_role": "mma_embedded_ro"})  # no [archive] database_url
    assert embedded.archive.database_url is None
    ro = read_engine_for(embedded, engine)
    try:
        with ro.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == "mma_embedded_ro"
            with pytest.raises(sa.exc.DBAPIError):
                conn.execute(sa.text("DELETE FROM outbox"))
    finally:
        ro.dispose()
    caplog.set_level(logging.WARNING, logger="broker.web.readonly")
    configured = settings_class()(web={"readonly_role": "mma_never_made"}, archive={"database_url": url})
    ro = read_engine_for(configured, engine)  # not embedded: never created by serve, a warning instead
    try:
        assert any("mma-broker web readonly-role" in r.getMessage() for r in caplog.records)
        with ro.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() != "mma_never_made"
            with pytest.raises(sa.exc.DBAPIError):
                conn.execute(sa.text("DELETE FROM outbox"))  # still read-only transactions
    finally:
        ro.dispose()
    assert url not in caplog.text


def test_a_role_set_up_for_another_database_is_not_used(db, pg_url):
    """Roles are cluster-wide, grants per database: serve must not SET ROLE to a role that
    cannot read this database (every page would fail)."""
    from broker.web.readonly import ensure_readonly_role, role_usable

    url, engine = db
    ensure_readonly_role(engine, "mma_other_db_ro")
    with _new_database(pg_url) as other_url:
        other = Archive(other_url, PostgresRawStore())
        other.migrate()
        try:
            assert not role_usable(other.engine, "mma_other_db_ro")
            ensure_readonly_role(other.engine, "mma_other_db_ro")
            assert role_usable(other.engine, "mma_other_db_ro")
        finally:
            other.close()
