"""The outbox on a real PostgreSQL, and the sender as a real ``mma-broker run --stage publish``.

Exactly once: entries sent by a real subprocess reach the other side once each, also
when the process is killed (SIGKILL, by its own channel at a chosen moment) after the
claim and before the send, or after the send and before the outbox recorded it — with
a channel that records to a file and with a Kafka channel whose recovery must find the
record on the topic. Also: concurrent claims never overlap, orphans are taken only
from senders that are gone, approval is required by default for GCN Circulars and
TNS (the CLI approves and rejects), retries back off then succeed, a retraction
withdraws the unsent drafts of its group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from broker.archive import Archive, PostgresRawStore
from broker.sinks.config import PublishSettings
from broker.sinks.outbox import Outbox, OutboxConflict, OutboxError
from broker.sinks.stage import Sender
from tests.conftest import ROOT, run_cli
from tests.integration import outbox_fakes

pytestmark = pytest.mark.integration


@pytest.fixture
def db(fresh_db):
    archive = Archive(fresh_db, PostgresRawStore())
    archive.migrate()
    yield fresh_db, archive.engine
    archive.close()


@pytest.fixture
def env(broker_env, db, tmp_path):
    """``mma-broker`` environment on the fresh database with the test channels only."""
    url, _ = db
    record = tmp_path / "sent.jsonl"
    broker_env.update(
        MMA_BROKER_ARCHIVE__DATABASE_URL=url,
        MMA_BROKER_PUBLISH__CHANNELS=json.dumps({
            "fake": "tests.integration.outbox_fakes:fake",
            "gcn-circular": "tests.integration.outbox_fakes:gcn_circular",
            "tns": "tests.integration.outbox_fakes:tns",
            "hermes": "tests.integration.outbox_fakes:hermes",
            "kafka-test": "tests.integration.outbox_fakes:kafka"}),
        MMA_BROKER_PUBLISH__GCN_NOTICE__ENABLED="false",
        MMA_BROKER_PUBLISH__POLL_INTERVAL_S="0.1",
        MMA_BROKER_PUBLISH__RETRY_INITIAL_S="0.05",
        **{outbox_fakes.RECORD_ENV: str(record)},
    )
    broker_env.pop(outbox_fakes.KILL_ENV, None)
    return broker_env


def sent_lines(env) -> list[dict]:
    path = env[outbox_fakes.RECORD_ENV]
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_publish(env, kill: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(env)
    if kill:
        e[outbox_fakes.KILL_ENV] = kill
    return subprocess.run([sys.executable, "-m", "broker", "run", "--stage", "publish", "--until-caught-up",
                           "--idle", "0.3"], env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT key, state FROM outbox")).all())


def publish_settings(**kw) -> PublishSettings:
    return PublishSettings(**{"poll_interval_s": 0.05, "retry_initial_s": 0.05, "retry_max_s": 0.2, **kw})


# ---------------------------------------------------------------- the table


def test_put_is_idempotent_on_the_key_and_refuses_another_payload(db):
    _, engine = db
    ob = Outbox(engine)
    a = ob.put("hermes:followup:r1", "hermes", {"title": "x", "n": [1, 2]}, source_event_id="e1", group_key="g1")
    again = ob.put("hermes:followup:r1", "hermes", {"n": [1, 2], "title": "x"})  # same payload, other key order
    assert again.id == a.id and again.state == "queued" and again.group_key == "g1"
    with pytest.raises(OutboxConflict, match="hermes:followup:r1"):
        ob.put("hermes:followup:r1", "hermes", {"title": "y"})
    with pytest.raises(OutboxConflict, match="another channel"):
        ob.put("hermes:followup:r1", "tns", {"title": "x", "n": [1, 2]})
    assert ob.get(a.id) == ob.get("hermes:followup:r1") == ob.get(str(a.id))
    # concurrent puts of one key: one row, every caller gets it
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(ob.put("k:race", "fake", {"text": "t"}).id))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8
    with pytest.raises(OutboxError, match="is queued: only an entry that is pending_approval"):
        ob.approve(a.id, "someone")
    with pytest.raises(OutboxError, match="no outbox entry 99999"):
        ob.reject(99999, "someone", "why")


def test_replaces_withdraws_the_unsent_entry_it_supersedes(db):
    _, engine = db
    ob = Outbox(engine)
    old = ob.put("circ:1:v1", "gcn-circular", {"text": "v1"}, requires_approval=True)
    new = ob.put("circ:1:v2", "gcn-circular", {"text": "v2"}, requires_approval=True, replaces="circ:1:v1")
    assert ob.get(old.id).state == "withdrawn" and ob.get(old.id).decided_by == "replaced by circ:1:v2"
    assert new.state == "pending_approval" and new.replaces == "circ:1:v1"


def test_two_senders_never_claim_the_same_entry(db):
    _, engine = db
    ob = Outbox(engine)
    for i in range(150):
        ob.put(f"k{i}", "fake", {"text": str(i)})
    claimed: dict[int, list[int]] = {1: [], 2: []}

    def worker(n: int) -> None:
        mine = Outbox(engine)
        while batch := mine.claim(7):
            claimed[n] += [e.id for e in batch]
        mine.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not set(claimed[1]) & set(claimed[2])
    assert len(claimed[1]) + len(claimed[2]) == 150 and claimed[1] and claimed[2]


def test_orphans_are_only_the_entries_of_senders_that_are_gone(db):
    _, engine = db
    first, second, third = Outbox(engine), Outbox(engine), Outbox(engine)
    for i in range(3):
        first.put(f"k{i}", "fake", {"text": str(i)})
    assert len(first.claim(10)) == 3
    assert second.orphans() == []  # the first sender is alive (holds its lock)
    first.close()  # its connection ends, as with kill -9
    taken = second.orphans()
    assert [e.key for e in taken] == ["k0", "k1", "k2"] and {e.claim_token for e in taken} == {second.token}
    assert third.orphans() == []  # taken over once
    assert not first.mark_sent(taken[0].id, {"late": True})  # the dead sender's record is refused
    second.close()
    third.close()


def test_a_claim_is_committed_when_it_returns_and_needs_the_lock_connection_alive(db):
    """The claim is one autocommit statement on the claim-lock connection: another
    connection sees the entries ``sending`` as soon as it returns (committed before any
    send), and a claim on a lost lock connection fails (nothing claimed) rather than
    claiming under a lock nobody holds; the next claim takes the lock again."""
    _, engine = db
    ob, other = Outbox(engine), Outbox(engine)
    for i in range(3):
        ob.put(f"k{i}", "fake", {"text": str(i)})
    (first,) = ob.claim(1)
    assert states(engine)["k0"] == "sending"  # visible to another connection: committed
    pid = ob._lock_conn.connection.driver_connection.info.backend_pid
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    with pytest.raises(sa.exc.DBAPIError):
        ob.claim(1)
    assert states(engine) == {"k0": "sending", "k1": "queued", "k2": "queued"}
    # the lock went with the connection: the first claim's entry is an orphan now
    assert [e.key for e in other.orphans()] == ["k0"]
    (again,) = ob.claim(1)  # connected again, under its lock
    assert again.key == "k1" and states(engine)["k1"] == "sending"
    assert other.orphans() == []
    ob.close()
    other.close()


# ---------------------------------------------------------------- the sender, in process


def test_approval_is_required_by_default_for_gcn_circulars_and_tns(db, env):
    from broker.config import load_settings
    from broker.sinks.build import make_outbox

    _, engine = db
    settings = load_settings(archive={"database_url": db[0]})
    ob = make_outbox(settings, engine)
    circ = ob.put("gcn-circular:e1", "gcn-circular", {"text": "circular"}, requires_approval=False)  # cannot waive
    report = ob.put("tns:e1", "tns", {"text": "at report"})
    note = ob.put("hermes:e1", "hermes", {"text": "hermes.test message"})
    assert (circ.state, report.state, note.state) == ("pending_approval", "pending_approval", "queued")
    channels = {n: outbox_fakes.RecordingChannel(n, env[outbox_fakes.RECORD_ENV]) for n in ("gcn-circular", "tns",
                                                                                             "hermes")}
    sender = Sender(Outbox(engine), channels, publish_settings())
    sender.round(threading.Event())
    assert [r["key"] for r in sent_lines(env)] == ["hermes:e1"]
    # the CLI: approve the circular, reject the report
    out = run_cli(env, "outbox", "list", "--state", "pending_approval").stdout
    assert "gcn-circular:e1" in out and "tns:e1" in out and "hermes:e1" not in out
    assert "approved" in run_cli(env, "outbox", "approve", str(circ.id), "--by", "duty scientist").stdout
    run_cli(env, "outbox", "reject", str(report.id), "--reason", "not a real candidate", "--by", "duty scientist")
    bad = run_cli(env, "outbox", "approve", str(report.id), check=False)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("mma-broker: error: outbox entry")
    sender.round(threading.Event())
    assert [r["key"] for r in sent_lines(env)] == ["hermes:e1", "gcn-circular:e1"]
    shown = json.loads(run_cli(env, "outbox", "show", "gcn-circular:e1", "--json").stdout)
    assert shown["state"] == "sent" and shown["approved_by"] == "duty scientist" and shown["payload"] == {
        "text": "circular"}
    rejected = ob.get(report.id)
    assert rejected.state == "rejected" and rejected.decision == "not a real candidate"
    sender.close()


def test_retry_with_backoff_then_success(db, env):
    _, engine = db
    ob = Outbox(engine)
    e = ob.put("k", "fake", {"text": "x"})
    ch = outbox_fakes.RecordingChannel("fake", env[outbox_fakes.RECORD_ENV])
    calls: list[float] = []
    real_send = ch.send

    def flaky(entry):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise ConnectionRefusedError("connection refused")
        return real_send(entry)

    ch.send = flaky
    sender = Sender(Outbox(engine), {"fake": ch}, publish_settings(attempts_per_claim=3))
    sender.round(threading.Event())
    row = ob.get(e.id)
    assert row.state == "sent" and row.attempts == 3 and len(sent_lines(env)) == 1
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert 0.05 <= gaps[0] and 0.1 <= gaps[1]  # 0.05 s, then 0.1 s (+ jitter up to 0.05 s)
    # a claim that fails: failed with retry_at; not claimed before it, claimed after it
    f = ob.put("k2", "fake", {"text": "y"})
    calls.clear()
    sender2 = Sender(Outbox(engine), {"fake": ch}, publish_settings(attempts_per_claim=2, failed_retry_initial_s=0.5))
    sender2.round(threading.Event())
    row = ob.get(f.id)
    assert row.state == "failed" and row.attempts == 2 and "connection refused" in row.last_error
    assert row.retry_at > datetime.now(timezone.utc)
    sender2.round(threading.Event())
    assert ob.get(f.id).state == "failed" and len(calls) == 2
    time.sleep((row.retry_at - datetime.now(timezone.utc)).total_seconds() + 0.05)
    sender2.round(threading.Event())
    assert ob.get(f.id).state == "sent" and ob.get(f.id).attempts == 3
    assert [r["key"] for r in sent_lines(env)] == ["k", "k2"]
    sender.close()
    sender2.close()


def test_withdraw_group_withdraws_unsent_drafts_and_returns_the_sent_ones(db, env):
    _, engine = db
    ob = Outbox(engine)
    sent = ob.put("hermes:g1:1", "hermes", {"text": "sent"}, group_key="g1", source_event_id="e1")
    sender = Sender(Outbox(engine), {"hermes": outbox_fakes.RecordingChannel("hermes", env[outbox_fakes.RECORD_ENV])},
                    publish_settings())
    sender.round(threading.Event())
    draft = ob.put("gcn-circular:g1", "gcn-circular", {"text": "draft"}, group_key="g1", requires_approval=True)
    queued = ob.put("hermes:g1:2", "hermes", {"text": "queued"}, group_key="g1")
    other = ob.put("hermes:g2:1", "hermes", {"text": "other"}, group_key="g2")
    withdrawn, already = ob.withdraw_group("g1", "igwn:S1:retraction:3")
    assert [e.id for e in withdrawn] == [draft.id, queued.id]
    assert all(e.state == "withdrawn" and e.decided_by == "igwn:S1:retraction:3" for e in withdrawn)
    assert [(e.id, e.state) for e in already] == [(sent.id, "sent")]
    sender.round(threading.Event())
    assert [r["key"] for r in sent_lines(env)] == ["hermes:g1:1", "hermes:g2:1"]
    assert ob.get(other.id).state == "sent"
    again, still_sent = ob.withdraw_group("g1", "again")  # nothing left to withdraw
    assert again == [] and [e.id for e in still_sent] == [sent.id]
    sender.close()


# ---------------------------------------------------------------- a real process, killed


def test_exactly_once_with_kill_9_before_send_and_after_send(db, env):
    _, engine = db
    ob = Outbox(engine)
    keys = [f"fake:{i}" for i in range(6)]
    for k in keys:
        ob.put(k, "fake", {"text": k})
    r = run_publish(env, kill="before-send:fake:2")
    assert r.returncode == -9, r.stderr[-2000:]
    assert [x["key"] for x in sent_lines(env)] == keys[:2]
    assert states(engine)["fake:2"] == "sending"
    r = run_publish(env, kill="after-send:fake:4")  # recovers fake:2 (not sent: queued again), dies after sending 4
    assert r.returncode == -9, r.stderr[-2000:]
    assert [x["key"] for x in sent_lines(env)] == keys[:5]
    assert states(engine)["fake:4"] == "sending"
    r = run_publish(env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 found sent" in r.stdout  # fake:4 was found on the other side, not sent again
    assert sorted(x["key"] for x in sent_lines(env)) == sorted(keys)  # each exactly once
    assert set(states(engine).values()) == {"sent"}
    assert ob.get("fake:4").receipt["recovered"] is True


def test_kafka_channel_recovers_a_send_the_killed_sender_did_not_record(db, env, kafka_bootstrap):
    from confluent_kafka import Consumer, TopicPartition

    _, engine = db
    ob = Outbox(engine)
    keys = [f"kafka:{i}" for i in range(4)]
    for k in keys:
        ob.put(k, "kafka-test", {"text": k, "n": keys.index(k)})
    r = run_publish(env, kill="after-send:kafka:1")
    assert r.returncode == -9, r.stderr[-2000:]
    assert states(engine)["kafka:1"] == "sending"
    r = run_publish(env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 found sent" in r.stdout
    rows = {k: ob.get(k) for k in keys}
    assert all(e.state == "sent" for e in rows.values())
    assert rows["kafka:1"].receipt["recovered"] is True
    topic = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + outbox_fakes.KAFKA_TOPIC
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"check-{topic}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    seen: list[tuple[str, dict, int, int]] = []
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    deadline = time.monotonic() + 20
    while sum(1 for _ in seen) < sum(ends.values()) and time.monotonic() < deadline:
        for m in c.consume(50, timeout=0.5):
            if m.error() is None:
                h = dict(m.headers())
                seen.append((h["mma_outbox_key"].decode(), json.loads(m.value()), m.partition(), m.offset()))
    c.close()
    assert sorted(k for k, *_ in seen) == sorted(keys)  # each record exactly once on the topic
    for k, value, p, off in seen:
        assert value == {"text": k, "n": keys.index(k)}
        assert (rows[k].receipt["partition"], rows[k].receipt["offset"]) == (p, off)


def test_a_due_entry_wakes_a_waiting_sender(db):
    _, engine = db
    listener, writer = Outbox(engine), Outbox(engine)
    t0 = time.monotonic()
    assert listener.wait(0.2) is False and time.monotonic() - t0 >= 0.2
    threading.Timer(0.3, lambda: writer.put("k", "fake", {"text": "x"})).start()
    t0 = time.monotonic()
    assert listener.wait(10) is True and time.monotonic() - t0 < 5
    pending = writer.put("k2", "gcn-circular", {"text": "y"}, requires_approval=True)
    assert listener.wait(0.3) is False  # waiting for approval: nothing due
    threading.Timer(0.2, lambda: writer.approve(pending.id, "me")).start()
    assert listener.wait(10) is True
    listener.close()
    writer.close()


def test_serve_answers_a_stored_artifact_by_its_sha256(db, env):
    import socket

    import httpx

    from followup.store import ArtifactStore

    url, _ = db
    archive = Archive(url, PostgresRawStore())
    png = (ROOT / "tests" / "data").glob("**/*.png")
    data = next(png, None)
    data = data.read_bytes() if data is not None else b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
    art = ArtifactStore(archive).put(data, "image/png")
    archive.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = dict(env, MMA_BROKER_PUBLISH__PUBLIC_BASE_URL="https://broker.example.org",
             MMA_BROKER_ARCHIVE__RAW_STORE="postgres")  # where the artifact's bytes were stored above
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--port", str(port)], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{base}/artifacts/sha256/{art['sha256']}", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.2)
        assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "image/png"
        meta = httpx.get(f"{base}/artifacts/sha256/{art['sha256']}.json", timeout=5).json()
        assert meta["url"] == f"https://broker.example.org/artifacts/sha256/{art['sha256']}"
        assert httpx.get(f"{base}/artifacts/sha256/{'0' * 64}", timeout=5).status_code == 404
        # the same app serves the archive's JSON API (broker/web/api.py, docs/web.md)
        api = httpx.get(f"{base}/api/events", params={"limit": 1}, timeout=5)
        assert api.status_code == 200 and "items" in api.json()
        assert "/api/events" in httpx.get(f"{base}/openapi.json", timeout=5).json()["paths"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "/tmp" not in out + err and str(ROOT) not in out
