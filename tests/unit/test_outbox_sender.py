"""The sender loop (broker.sinks.stage.Sender) against an in-memory outbox and fake channels.

The real table (claims, advisory locks, SKIP LOCKED) is tested in
tests/integration/test_outbox_db.py; here the sender's decisions: retries with
exponential backoff and jitter, failure and ``retry_at``, invalid messages, recovery of
orphans, replies polled, outcomes kept while the database is away, --until-caught-up.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from broker.sinks.channels import BaseChannel, ChannelError
from broker.sinks.config import PublishSettings
from broker.sinks.outbox import OutboxEntry
from broker.sinks.stage import Sender


def now() -> datetime:
    return datetime.now(timezone.utc)


class MemoryOutbox:
    """The Outbox methods the sender uses, on a dict (one sender: token 1)."""

    def __init__(self) -> None:
        self.rows: dict[int, OutboxEntry] = {}
        self.fail_next_marks = 0
        self.closed = False

    def add(self, key: str, channel: str = "fake", payload: dict | None = None, **kw) -> OutboxEntry:
        e = OutboxEntry(id=len(self.rows) + 1, key=key, channel=channel, payload=payload or {"text": key},
                        state=kw.pop("state", "queued"), **kw)
        self.rows[e.id] = e
        return e

    def _set(self, id: int, **kw) -> bool:
        e = self.rows[id]
        if e.state != "sending" or e.claim_token != 1:
            return False
        if self.fail_next_marks:
            self.fail_next_marks -= 1
            raise sa.exc.OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))
        self.rows[id] = dataclasses.replace(e, updated_at=now(), **kw)
        return True

    def _is_due(self, e: OutboxEntry, t: datetime) -> bool:
        return (e.state == "queued" and (e.retry_at is None or e.retry_at <= t)
                or e.state == "failed" and e.retry_at is not None and e.retry_at <= t)

    def claim(self, limit, now_=None, *, channels=None):
        t = now_ or now()
        out = []
        for e in sorted(self.rows.values(), key=lambda e: e.id):
            if len(out) < limit and self._is_due(e, t) and (channels is None or e.channel in channels):
                e = dataclasses.replace(e, state="sending", claim_token=1, claimed_at=t)
                self.rows[e.id] = e
                out.append(e)
        return out

    def due_count(self, now_=None, *, channels=None):
        return sum(self._is_due(e, now()) and (channels is None or e.channel in channels) for e in self.rows.values())

    def mark_sent(self, id, receipt, *, tries=1, poll_after_s=None):
        poll_at = now() + timedelta(seconds=poll_after_s or 0) if receipt.get("pending") else None
        return self._set(id, state="sent", receipt=receipt, sent_at=now(), poll_at=poll_at,
                         attempts=self.rows[id].attempts + tries, last_error=None, retry_at=None)

    def mark_failed(self, id, error, retry_at, *, tries=1):
        return self._set(id, state="failed", last_error=error, retry_at=retry_at,
                         attempts=self.rows[id].attempts + tries)

    def mark_unknown(self, id, why):
        return self._set(id, state="unknown", last_error=why, retry_at=None)

    def requeue(self, id, why=""):
        return self._set(id, state="queued", retry_at=None, last_error=why or None)

    def orphans(self, *, channels=None, own_except=None):
        out = []
        for e in sorted(self.rows.values(), key=lambda e: e.id):
            if e.state == "sending" and e.claim_token != 1 and (channels is None or e.channel in channels):
                e = dataclasses.replace(e, claim_token=1)
                self.rows[e.id] = e
                out.append(e)
        return out

    def due_polls(self, limit, now_=None):
        return [e for e in self.rows.values() if e.state == "sent" and e.poll_at is not None and e.poll_at <= now()]

    def update_receipt(self, id, receipt, *, poll_after_s=None):
        e = self.rows[id]
        assert e.state == "sent"
        state = "failed" if receipt.get("status") == "rejected" else "sent"
        poll_at = now() + timedelta(seconds=poll_after_s or 0) if receipt.get("pending") else None
        self.rows[id] = dataclasses.replace(e, receipt=receipt, poll_at=poll_at, state=state)
        return self.rows[id]

    def close(self):
        self.closed = True


class FakeChannel(BaseChannel):
    """Records sends; fails the first ``failures`` tries with ``error``."""

    def __init__(self, name="fake", failures=0, error=None, recovered=None, poll_interval_s=0.0):
        self.name = name
        self.sent: list[str] = []
        self.tries = 0
        self.failures = failures
        self.error = error or ChannelError("connection refused", retryable=True)
        self.recovered = recovered or {}
        self.poll_interval_s = poll_interval_s
        self.replies: list[dict | None] = []

    def validate(self, payload):
        if "bad" in payload:
            raise ValueError("$.bad: not allowed")

    def send(self, entry):
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        self.sent.append(entry.key)
        return {"n": len(self.sent)}

    def recover(self, entry):
        r = self.recovered.get(entry.key, "not found")
        if isinstance(r, Exception):
            raise r
        return None if r == "not found" else r

    def poll(self, entry):
        return self.replies.pop(0) if self.replies else None


def make_sender(outbox, channels, **settings):
    sleeps: list[float] = []
    s = PublishSettings(**{"retry_initial_s": 1.0, "retry_max_s": 30.0, "poll_interval_s": 0.01, **settings})
    sender = Sender(outbox, {c.name: c for c in channels}, s, sleep=lambda sec, stop: sleeps.append(sec),
                    rng=random.Random(1))
    return sender, sleeps


def test_retries_with_exponential_backoff_and_jitter_then_success():
    ob, ch = MemoryOutbox(), FakeChannel(failures=3)
    e = ob.add("k1")
    sender, sleeps = make_sender(ob, [ch], attempts_per_claim=4, retry_initial_s=1.0, retry_max_s=30.0)
    assert sender.round(threading.Event()) == 1
    assert ch.sent == ["k1"] and ch.tries == 4
    row = ob.rows[e.id]
    assert row.state == "sent" and row.attempts == 4 and row.receipt == {"n": 1}
    # initial * 2**n + U(0, initial)
    assert len(sleeps) == 3
    for n, s in enumerate(sleeps):
        assert 2**n <= s <= 2**n + 1.0
    assert sender.stats.sent["fake"] == 1 and sender.stats.tries == 4


def test_a_claim_that_keeps_failing_ends_failed_with_a_retry_at_that_doubles_per_claim():
    ob, ch = MemoryOutbox(), FakeChannel(failures=100)
    e = ob.add("k1")
    sender, sleeps = make_sender(ob, [ch], attempts_per_claim=3, failed_retry_initial_s=60,
                                 failed_retry_max_s=1000, max_attempts=9)
    t0 = now()
    sender.round(threading.Event())
    row = ob.rows[e.id]
    assert row.state == "failed" and row.attempts == 3 and "connection refused" in row.last_error
    assert t0 + timedelta(seconds=60) <= row.retry_at <= now() + timedelta(seconds=66)
    assert ch.tries == 3 and len(sleeps) == 2
    # the next claims: 120 s, then after 9 sends in all no retry_at (only `outbox retry`)
    assert 120 <= (sender.next_retry(6, t0) - t0).total_seconds() <= 132
    assert (sender.next_retry(60, t0) - t0).total_seconds() <= 1100  # capped (+10 % jitter)
    ob.rows[e.id] = dataclasses.replace(row, state="queued", retry_at=None, attempts=6)
    sender.round(threading.Event())
    assert ob.rows[e.id].state == "failed" and ob.rows[e.id].retry_at is None and ob.rows[e.id].attempts == 9


def test_a_non_retryable_error_fails_at_once_without_retry_at():
    ob = MemoryOutbox()
    ch = FakeChannel(failures=1, error=ChannelError("HTTP 400: bad report", retryable=False))
    e = ob.add("k1")
    sender, sleeps = make_sender(ob, [ch])
    sender.round(threading.Event())
    row = ob.rows[e.id]
    assert (row.state, row.retry_at, row.attempts, ch.tries, sleeps) == ("failed", None, 1, 1, [])
    assert "HTTP 400" in row.last_error


def test_an_invalid_message_is_never_sent():
    ob, ch = MemoryOutbox(), FakeChannel()
    e = ob.add("k1", payload={"bad": 1})
    sender, _ = make_sender(ob, [ch])
    sender.round(threading.Event())
    row = ob.rows[e.id]
    assert row.state == "failed" and row.retry_at is None and "$.bad" in row.last_error and ch.tries == 0
    assert sender.stats.invalid == 1


def test_entries_of_channels_the_sender_lacks_are_left_alone():
    ob, ch = MemoryOutbox(), FakeChannel()
    other = ob.add("tns:1", channel="tns")
    ob.add("k1")
    sender, _ = make_sender(ob, [ch])
    sender.round(threading.Event())
    assert ob.rows[other.id].state == "queued" and ch.sent == ["k1"]


def test_recovery_of_orphans_sent_not_sent_unknowable_and_postponed():
    ob = MemoryOutbox()
    ch = FakeChannel(recovered={
        "went": {"topic": "t", "partition": 0, "offset": 7, "recovered": True},
        "cannot": ChannelError("smtp cannot tell", retryable=False),
        "later": ChannelError("kafka away", retryable=True),
    })
    went = ob.add("went", state="sending", claim_token=99)
    lost = ob.add("lost", state="sending", claim_token=99)
    cannot = ob.add("cannot", state="sending", claim_token=99)
    later = ob.add("later", state="sending", claim_token=99)
    sender, _ = make_sender(ob, [ch])
    sender.round(threading.Event())
    assert ob.rows[went.id].state == "sent" and ob.rows[went.id].receipt["offset"] == 7
    assert ob.rows[cannot.id].state == "unknown" and "smtp cannot tell" in ob.rows[cannot.id].last_error
    assert ob.rows[later.id].state == "sending"  # asked again at the next sweep
    # "lost" did not go out: queued again, then sent by the same round's claim, once
    assert ob.rows[lost.id].state == "sent" and ch.sent == ["lost"]
    assert "went" not in ch.sent and "cannot" not in ch.sent
    st = sender.stats
    assert (st.recovered_sent, st.requeued, st.unknown) == (1, 1, 1)
    assert "1 found sent, 1 queued again, 1 unknown" in st.summary()


def test_an_outcome_is_kept_while_the_database_is_away_and_never_sent_twice():
    ob, ch = MemoryOutbox(), FakeChannel()
    e = ob.add("k1")
    sender, _ = make_sender(ob, [ch])
    ob.fail_next_marks = 2  # mark_sent fails, then its first replay fails too
    with pytest.raises(sa.exc.OperationalError):
        sender.round(threading.Event())
    assert ob.rows[e.id].state == "sending" and ch.sent == ["k1"]
    with pytest.raises(sa.exc.OperationalError):
        sender.round(threading.Event())
    sender.round(threading.Event())
    assert ob.rows[e.id].state == "sent" and ch.sent == ["k1"]


def test_run_waits_out_the_database_then_stops_when_caught_up():
    ob, ch = MemoryOutbox(), FakeChannel()
    for i in range(5):
        ob.add(f"k{i}")
    ob.fail_next_marks = 1
    sender, _ = make_sender(ob, [ch])
    stop = threading.Event()
    t = threading.Thread(target=sender.run, args=(stop,), kwargs={"until_caught_up": True, "idle_s": 0.0})
    t.start()
    t.join(30)
    assert not t.is_alive() and not stop.is_set()
    assert sorted(ch.sent) == [f"k{i}" for i in range(5)]
    assert all(e.state == "sent" for e in ob.rows.values())


def test_run_does_not_stop_before_upstream_is_done():
    ob, ch = MemoryOutbox(), FakeChannel()
    sender, _ = make_sender(ob, [ch])
    stop, upstream = threading.Event(), threading.Event()
    t = threading.Thread(target=sender.run, args=(stop,),
                         kwargs={"until_caught_up": True, "idle_s": 0.0, "upstream_done": upstream.is_set})
    t.start()
    t.join(0.3)
    assert t.is_alive()
    ob.add("late")  # written by the reports stage before it stopped
    upstream.set()
    t.join(10)
    assert not t.is_alive() and ch.sent == ["late"]


def test_sigterm_stops_the_loop():
    ob, ch = MemoryOutbox(), FakeChannel()
    sender, _ = make_sender(ob, [ch])
    stop = threading.Event()
    t = threading.Thread(target=sender.run, args=(stop,))
    t.start()
    t.join(0.2)
    assert t.is_alive()
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_pending_replies_are_polled_until_final():
    ob, ch = MemoryOutbox(), FakeChannel(name="tns")
    ch.send = lambda entry: {"report_id": "r1", "pending": True}
    e = ob.add("tns:1", channel="tns")
    ch.replies = [None, {"report_id": "r1", "status": "accepted", "objname": "2026abc"}]
    sender, _ = make_sender(ob, [ch])
    sender.round(threading.Event())  # sent, then polled at once: nothing yet
    assert ob.rows[e.id].receipt["pending"] is True
    sender.round(threading.Event())
    row = ob.rows[e.id]
    assert row.state == "sent" and row.receipt["objname"] == "2026abc" and row.poll_at is None
    assert sender.stats.polled == 2 and sender.stats.replies == 1


def test_a_bug_in_the_loop_fails_the_stage():
    ob, ch = MemoryOutbox(), FakeChannel()
    ob.claim = lambda *a, **k: (_ for _ in ()).throw(KeyError("bug"))
    ob.add("k1")
    sender, _ = make_sender(ob, [ch])
    with pytest.raises(KeyError):
        sender.run(threading.Event())


def test_the_wait_is_at_least_what_the_other_side_asked_for():
    class RateLimited(ChannelError):
        def __init__(self):
            super().__init__("HTTP 429: rate limit", retryable=True)
            self.retry_after_s = 7.5

    ob = MemoryOutbox()
    ch = FakeChannel(failures=10, error=RateLimited())
    e = ob.add("k1")
    sender, sleeps = make_sender(ob, [ch], attempts_per_claim=2, retry_initial_s=0.1, failed_retry_initial_s=1)
    t0 = now()
    sender.round(threading.Event())
    assert sleeps == [7.5]
    assert ob.rows[e.id].retry_at >= t0 + timedelta(seconds=7.5)
