"""The approval desk of ``mma-broker serve`` (broker/web/desk.py) on the real PostgreSQL.

Outbox entries are written with :class:`broker.sinks.outbox.Outbox` as the reports stage
writes them (a GCN Circular draft, a GCN notice valid against the vendored schema,
pending approval); the desk is used through FastAPI's TestClient, logged in as a real
account (tests/unit/test_web_auth.py's helpers). The sending itself (once, to a local
SMTP server) is checked by the browser test and the outbox tests.
"""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from broker.archive import Archive, PostgresRawStore
from broker.sinks.gcn import NOTICE_SCHEMA_ID
from broker.sinks.outbox import OUTBOX_AUDIT, Outbox, canonical_sha256
from broker.web.auth import Accounts
from tests.conftest import _new_database
from tests.unit.test_web_auth import PASSWORD, client_for, login

CIRCULAR = {"subject": "LIGO/Virgo S230518h: INTEGRAL SPI-ACS upper limits",
            "body": "A. Person (Inst.) report on behalf of the INTEGRAL team:\n\nNo significant excess.\n",
            "references": ["GCN 33813"]}
NOTICE = {"$schema": NOTICE_SCHEMA_ID, "mission": "INTEGRAL", "instrument": "SPI-ACS",
          "trigger_time": "2026-12-01T00:00:00Z", "alert_datetime": "2026-12-01T00:01:00Z", "alert_type": "initial",
          "ref_ID": "S230518h", "followup_id": "0" * 32, "status": "done"}


@pytest.fixture(scope="module")
def db(pg_url):
    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        Accounts(archive.engine).add("alice", PASSWORD)
        try:
            yield archive.engine
        finally:
            archive.close()


@pytest.fixture()
def desk(db):
    c = client_for(db)
    assert login(c).status_code == 303
    return c


def pending(engine, channel: str = "gcn-circular", payload: dict | None = None) -> int:
    p = payload if payload is not None else CIRCULAR
    return Outbox(engine).put(f"test:{uuid.uuid4().hex}", channel, p, group_key="igwn:S230518h",
                              requires_approval=True).id


def csrf(page_text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page_text).group(1)


def audit(engine, i: int) -> list[dict]:
    return Outbox(engine).audit(i)


def test_desk_lists_pending_entries_newest_first(db, desk):
    a, b = pending(db), pending(db, "gcn-notice", NOTICE)
    page = desk.get("/desk")
    assert page.status_code == 200 and 'id="pending"' in page.text
    ids = [int(x) for x in re.findall(r'<tr data-outbox-id="(\d+)" data-channel', page.text)]
    assert ids.index(b) < ids.index(a)
    assert CIRCULAR["subject"] in page.text and "no-store" in page.headers["cache-control"]


def test_entry_page_renders_the_circular_as_it_will_be_sent(db, desk):
    i = pending(db)
    page = desk.get(f"/desk/{i}")
    assert page.status_code == 200
    for hook in ('id="approve"', 'id="reject"', 'id="edit"', 'id="audit"', 'id="circular-body"'):
        assert hook in page.text
    assert "Subject: LIGO/Virgo S230518h: INTEGRAL SPI-ACS upper limits" in page.text
    assert "No significant excess." in page.text
    n = pending(db, "gcn-notice", NOTICE)
    page = desk.get(f"/desk/{n}")
    assert "spiacs_followup.schema.json" in page.text and 'name="payload"' in page.text


def test_unknown_or_bad_ids_are_404(desk):
    assert desk.get("/desk/999999999").status_code == 404
    assert desk.get("/desk/abc").status_code == 404
    assert desk.get("/desk/" + "9" * 5000).status_code == 404


def test_approve_queues_once_records_who_and_an_audit_row(db, desk):
    i = pending(db)
    page = desk.get(f"/desk/{i}")
    r = desk.post(f"/desk/{i}/approve", data={"csrf_token": csrf(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/desk/{i}?done=approved"
    e = Outbox(db).get(i)
    assert e.state == "queued" and e.approved_by == "alice" and e.approved_at is not None
    rows = audit(db, i)
    assert [(a["action"], a["actor"], a["state_before"], a["state_after"]) for a in rows] == \
        [("approve", "alice", "pending_approval", "queued")]
    # a second approve: 409 naming the state, nothing changes
    r = desk.post(f"/desk/{i}/approve", data={"csrf_token": csrf(page.text)})
    assert r.status_code == 409 and "the entry is queued" in r.text
    assert Outbox(db).get(i).state == "queued" and len(audit(db, i)) == 1
    page = desk.get(f"/desk/{i}")
    assert 'id="approve"' not in page.text and 'data-action="approve"' in page.text


def test_post_without_csrf_or_login_changes_nothing(db, desk):
    i = pending(db)
    assert desk.post(f"/desk/{i}/approve", data={}).status_code == 403
    assert desk.post(f"/desk/{i}/approve", data={"csrf_token": "f" * 64}).status_code == 403
    anonymous = client_for(db)
    r = anonymous.post(f"/desk/{i}/approve", data={"csrf_token": "f" * 64})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # a cross-site form with the victim's cookie but no token (what SameSite=Lax does not stop on top-level GET)
    assert desk.post(f"/desk/{i}/reject", data={"reason": "x"}).status_code == 403
    assert Outbox(db).get(i).state == "pending_approval" and audit(db, i) == []


def test_reject_needs_a_reason_and_is_final(db, desk):
    i = pending(db)
    token = csrf(desk.get(f"/desk/{i}").text)
    assert desk.post(f"/desk/{i}/reject", data={"csrf_token": token, "reason": "  "}).status_code == 400
    r = desk.post(f"/desk/{i}/reject", data={"csrf_token": token, "reason": "wrong band in the limit"})
    assert r.status_code == 303
    e = Outbox(db).get(i)
    assert e.state == "rejected" and e.decided_by == "alice" and e.decision == "wrong band in the limit"
    assert audit(db, i)[0]["detail"] == "wrong band in the limit"
    assert desk.post(f"/desk/{i}/approve", data={"csrf_token": token}).status_code == 409


def test_edit_a_circular_is_validated_saved_and_audited(db, desk):
    i = pending(db)
    before = Outbox(db).get(i)
    token = csrf(desk.get(f"/desk/{i}").text)
    form = {"csrf_token": token, "base_sha256": before.payload_sha256, "subject": CIRCULAR["subject"] + " (revised)",
            "body": CIRCULAR["body"].replace("\n", "\r\n") + "Typo fixed.\r\n"}
    r = desk.post(f"/desk/{i}/edit", data=form)
    assert r.status_code == 303
    e = Outbox(db).get(i)
    assert e.state == "pending_approval" and e.payload["subject"].endswith("(revised)")
    assert "\r" not in e.payload["body"] and e.payload["references"] == CIRCULAR["references"]
    assert e.payload_sha256 == canonical_sha256(e.payload) != before.payload_sha256
    a = audit(db, i)[0]
    assert (a["action"], a["sha256_before"], a["sha256_after"]) == ("edit", before.payload_sha256, e.payload_sha256)
    # the page shows the edited circular
    assert "(revised)" in desk.get(f"/desk/{i}").text
    # a stale form (made before this edit) is refused
    assert desk.post(f"/desk/{i}/edit", data=form).status_code == 409


@pytest.mark.parametrize("subject,body,why", [
    ("", "text", "subject"), ("two\nlines", "text", "subject"), ("ok", "", "body"),
    ("ok", "a\x00b", "NUL"), ("x" * 5000, "text", "subject")])
def test_an_invalid_circular_edit_is_not_saved(db, desk, subject, body, why):
    i = pending(db)
    e = Outbox(db).get(i)
    token = csrf(desk.get(f"/desk/{i}").text)
    r = desk.post(f"/desk/{i}/edit", data={"csrf_token": token, "base_sha256": e.payload_sha256,
                                           "subject": subject, "body": body})
    assert r.status_code == 400 and "Traceback" not in r.text
    assert Outbox(db).get(i).payload == CIRCULAR and audit(db, i) == []


@pytest.mark.parametrize("text,status", [
    ("{not json", 400), ("[1, 2]", 400), ('{"a": NaN}', 400), ("[" * 20_000 + "]" * 20_000, 400),
    ('{"a": ' * 100 + "1" + "}" * 100, 400),
    ('{"$schema": "https://example.org/x.json"}', 400)])
def test_an_invalid_json_edit_is_not_saved(db, desk, text, status):
    i = pending(db, "gcn-notice", NOTICE)
    e = Outbox(db).get(i)
    token = csrf(desk.get(f"/desk/{i}").text)
    r = desk.post(f"/desk/{i}/edit", data={"csrf_token": token, "base_sha256": e.payload_sha256, "payload": text})
    assert r.status_code == status and "Traceback" not in r.text
    assert Outbox(db).get(i).payload == NOTICE


def test_a_valid_notice_edit_and_a_huge_one(db, desk):
    import json

    i = pending(db, "gcn-notice", NOTICE)
    e = Outbox(db).get(i)
    token = csrf(desk.get(f"/desk/{i}").text)
    new = {**NOTICE, "status": "no_data"}
    r = desk.post(f"/desk/{i}/edit", data={"csrf_token": token, "base_sha256": e.payload_sha256,
                                           "payload": json.dumps(new)})
    assert r.status_code == 303 and Outbox(db).get(i).payload == new
    r = desk.post(f"/desk/{i}/edit", data={"csrf_token": token, "base_sha256": "x", "payload": "x" * 400_000})
    assert r.status_code == 413


def test_an_entry_no_longer_pending_cannot_be_edited(db, desk):
    i = pending(db)
    token = csrf(desk.get(f"/desk/{i}").text)  # the page open in the browser...
    Outbox(db).approve(i, "cli-user")  # ...while it is approved on the CLI (the same method): audited too
    e = Outbox(db).get(i)
    r = desk.post(f"/desk/{i}/edit", data={"csrf_token": token, "base_sha256": e.payload_sha256,
                                           "subject": "changed", "body": "changed"})
    assert r.status_code == 409
    assert Outbox(db).get(i).payload == CIRCULAR
    assert [(a["action"], a["actor"]) for a in audit(db, i)] == [("approve", "cli-user")]


def test_the_edit_method_keeps_the_sha256_and_refuses_what_the_channel_refuses(db):
    from broker.sinks.outbox import OutboxError
    from broker.web.desk import validators

    ob = Outbox(db, channels=validators())
    i = pending(db)
    with pytest.raises(ValueError, match=r"\$.subject"):
        ob.edit(i, "alice", {**CIRCULAR, "subject": ""})
    with pytest.raises(ValueError, match="not JSON"):
        ob.edit(i, "alice", {**CIRCULAR, "x": float("nan")})
    e = ob.edit(i, "alice", {**CIRCULAR, "body": CIRCULAR["body"] + "More.\n"})
    assert e.payload_sha256 == canonical_sha256(e.payload)
    ob.reject(i, "alice", "no")
    with pytest.raises(OutboxError, match="is rejected"):
        ob.edit(i, "alice", CIRCULAR)


# ------------------------------------------------------------------ JSON routes
@pytest.fixture()
def token(db):
    return Accounts(db).create_token("alice", name="desk test")


def test_api_approve_with_a_token_then_409(db, token):
    c = client_for(db)
    tok, _ = token
    i = pending(db)
    h = {"Authorization": f"Bearer {tok}"}
    assert i in [it["id"] for it in c.get("/api/desk/pending", headers=h).json()["items"]]
    r = c.post(f"/api/desk/{i}/approve", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["approved_by"] == "alice"
    r = c.post(f"/api/desk/{i}/approve", headers=h)
    assert r.status_code == 409 and r.json()["state"] == "queued"
    assert [a["action"] for a in audit(db, i)] == ["approve"]
    assert c.post("/api/desk/99999999/approve", headers=h).status_code == 404
    assert c.post("/api/desk/x%00y/approve", headers=h).status_code == 400


def test_api_unauthorized_attempts_change_nothing(db, token):
    c = client_for(db)
    tok, tid = token
    i = pending(db)
    for headers in ({}, {"Authorization": "Bearer mmab_" + "A" * 43}, {"Authorization": f"Token {tok}"}):
        r = c.post(f"/api/desk/{i}/approve", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # a logged-in browser session is not an API credential (no CSRF on JSON routes, so cookies do not count)
    login(c)
    assert c.post(f"/api/desk/{i}/approve").status_code == 401
    Accounts(db).revoke_token(tid)
    assert c.post(f"/api/desk/{i}/approve", headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    assert Outbox(db).get(i).state == "pending_approval" and audit(db, i) == []


def test_api_reject_needs_a_reason(db, token):
    c = client_for(db)
    h = {"Authorization": f"Bearer {token[0]}"}
    i = pending(db)
    assert c.post(f"/api/desk/{i}/reject", headers=h, json={}).status_code == 400
    assert c.post(f"/api/desk/{i}/reject", headers=h, content=b"\xff\xfe").status_code == 400
    assert c.post(f"/api/desk/{i}/reject", headers=h, json={"reason": "x" * 501}).status_code == 400
    assert c.post(f"/api/desk/{i}/reject", headers=h, content=b"x" * 300_000).status_code == 413
    r = c.post(f"/api/desk/{i}/reject", headers=h, json={"reason": "superseded by a new draft"})
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    assert r.json()["decision"] == "superseded by a new draft"


def test_recent_decisions_on_the_desk(db, desk):
    i = pending(db)
    Outbox(db).reject(i, "carol", "duplicate")
    page = desk.get("/desk")
    assert 'id="recent"' in page.text and "carol" in page.text and "duplicate" in page.text
    with db.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(OUTBOX_AUDIT)).scalar()
    assert n >= 1


def test_retry_from_the_desk_and_the_attention_list(db, desk):
    import sqlalchemy as sa

    from broker.sinks.outbox import OUTBOX

    i = pending(db)
    Outbox(db).reject(i, "alice", "too early")
    token = csrf(desk.get(f"/desk/{i}").text)
    assert 'id="retry"' in desk.get(f"/desk/{i}").text
    assert desk.post(f"/desk/{i}/retry", data={}).status_code == 403
    r = desk.post(f"/desk/{i}/retry", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == f"/desk/{i}?done=retried"
    assert Outbox(db).get(i).state == "pending_approval"  # never approved: back to approval, not to the queue
    assert [a["action"] for a in audit(db, i)] == ["retry", "reject"]
    assert desk.post(f"/desk/{i}/retry", data={"csrf_token": token}).status_code == 409
    # an entry whose send may have happened (unknown) is listed and warned about
    j = pending(db)
    with db.begin() as conn:
        conn.execute(OUTBOX.update().where(OUTBOX.c.id == j).values(state="unknown", last_error="sender died"))
    page = desk.get("/desk")
    assert 'id="attention"' in page.text and f'<tr data-outbox-id="{j}">' in page.text
    assert "It may have gone out" in desk.get(f"/desk/{j}").text
    with db.connect() as conn:
        assert conn.execute(sa.select(OUTBOX.c.state).where(OUTBOX.c.id == j)).scalar() == "unknown"
