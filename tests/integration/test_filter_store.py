"""The decisions' archive on a real PostgreSQL (filters.store, migration 0102): one row per
(Event, run) holding its filters' decisions, read back as one DecisionRow per decision with
the values and order the one-row-per-decision table (0101) gave; a write replaces the
decisions of its keys and keeps the Event's others; 0102 migrates both ways without losing
or changing a decision."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from broker.archive import Archive, SegmentFileStore
from broker.archive.store import alembic_config
from filters.api import FilterResult, FollowupSpec
from filters.engine import Decision
from filters.store import DecisionRow, DecisionStore, decision_rows, encode_decisions, rows_of_encoded

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)


def decisions(tag: str = "") -> list[Decision]:
    """Four decisions of every kind: accepted with tags and a follow-up, rejected with a
    detail that needs escaping, an error, and an acceptance cancelled by an error."""
    follow = (FollowupSpec("analyze", ("spiacs",), 50.0), FollowupSpec("withdraw", ()))
    return [
        Decision("b-acc", "plug-a", "1.0", "h" * 16,
                 FilterResult.accept("matched", detail=f"ok {tag}", tags=("x", "t_2"), followup=follow),
                 elapsed_ms=0.1 + 0.2),
        Decision("a-rej", "plug-b", "2", "c" * 16,
                 FilterResult.reject("too_faint", detail=f"quote ' back \\ newline \n ü {tag}"), elapsed_ms=1e-9),
        Decision("c-err", "plug-c", "3", "d" * 16, None, error=f"raised: ValueError: boom {tag}", elapsed_ms=7.25,
                 over_budget=True),
        Decision("d-acc-err", "plug-a", "1.0", "e" * 16, FilterResult.accept("matched", followup=follow),
                 error="garbage: not a FilterResult", elapsed_ms=123456.789),
    ]


def want(event_id: str, ds: list[Decision], run: str, at: datetime) -> list[DecisionRow]:
    """What 0101's table held and returned: decision_rows, by decision time and filter."""
    return sorted(decision_rows(event_id, ds, run=run, decided_at=at), key=lambda r: (r.decided_at, r.filter))


@pytest.fixture
def archive(fresh_db, tmp_path):
    a = Archive(fresh_db, SegmentFileStore(tmp_path / "raw"))
    a.migrate()
    yield a
    a.close()


def test_one_row_per_event_reads_back_as_one_row_per_decision(archive):
    store = DecisionStore(archive.engine)
    ds = decisions()
    assert store.put_decisions([("ztf:1", ds), ("ztf:2", ds[:2]), ("ztf:3", [])], decided_at=T0) == 6
    with archive.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT event_id, run, jsonb_array_length(decisions) FROM filter_decisions "
                                    "ORDER BY 1")).all() == [("ztf:1", "live", 4), ("ztf:2", "live", 2)]
    got = store.why("ztf:1")
    assert got == want("ztf:1", ds, "live", T0)
    assert [r.filter for r in got] == ["a-rej", "b-acc", "c-err", "d-acc-err"]
    acc = got[1]
    assert acc.accepted and acc.tags == ("x", "t_2") and acc.elapsed_ms == 0.1 + 0.2
    assert acc.followup == [{"kind": "analyze", "analyses": ["spiacs"], "window_s": 50.0},
                            {"kind": "withdraw", "analyses": [], "window_s": None}]
    assert not got[3].accepted and got[3].followup is None and got[3].reason == "matched"  # error: not accepted
    assert got[2].reason == "error" and got[2].tags == () and got[2].detail is None
    assert store.why("ztf:3") == [] and store.why("ztf:9") == []
    assert [(r.event_id, r.filter) for r in store.decisions()] == [
        ("ztf:1", "a-rej"), ("ztf:1", "b-acc"), ("ztf:1", "c-err"), ("ztf:1", "d-acc-err"),
        ("ztf:2", "a-rej"), ("ztf:2", "b-acc")]
    assert [(r.event_id, r.filter) for r in store.decisions(filter="b-acc", accepted=True)] == [
        ("ztf:1", "b-acc"), ("ztf:2", "b-acc")]
    assert store.decisions(accepted=False, filter="b-acc") == []
    assert [r.to_json_dict() for r in got] == [r.to_json_dict() for r in want("ztf:1", ds, "live", T0)]


def test_a_write_replaces_its_keys_and_keeps_the_events_other_decisions(archive):
    store = DecisionStore(archive.engine)
    ds = decisions()
    store.put_decisions([("ztf:1", ds)], decided_at=T0)
    store.put_decisions([("ztf:1", ds)], decided_at=T0, run="rerun-1")
    # the batch consumed again after a crash: the same keys, new values, overwritten (as the stage writes)
    t1 = T0 + timedelta(seconds=5)
    again = decisions("again")
    assert store.put_encoded([("ztf:1", encode_decisions(again))], decided_at=t1) == 1
    assert store.why("ztf:1", run="live") == want("ztf:1", again, "live", t1)
    # one filter's configuration changed: its new decision beside the old ones, each with its own time
    t2 = T0 + timedelta(minutes=1)
    changed = Decision("a-rej", "plug-b", "2", "n" * 16, FilterResult.accept("bright"), elapsed_ms=2.0)
    store.put_decisions([("ztf:1", [changed])], decided_at=t2)
    assert store.why("ztf:1", run="live") == want("ztf:1", again, "live", t1) + want("ztf:1", [changed], "live", t2)
    # and that one written again keeps the others' times
    store.put_decisions([("ztf:1", [changed])], decided_at=t2 + timedelta(seconds=1))
    assert store.why("ztf:1", run="live") == want("ztf:1", again, "live", t1) + want(
        "ztf:1", [changed], "live", t2 + timedelta(seconds=1))
    # the re-run's row was not touched; live first, then re-runs
    assert store.why("ztf:1", run="rerun-1") == want("ztf:1", ds, "rerun-1", T0)
    assert [r.run for r in store.why("ztf:1")] == ["live"] * 5 + ["rerun-1"] * 4
    # put_many: rows of several times for one Event, a key met twice keeps the last
    rows = decision_rows("ztf:2", ds[:2], decided_at=T0) + decision_rows("ztf:2", ds[2:], decided_at=t1)
    last = rows[0]._replace(detail="last")
    assert store.put_many(rows + [last]) == 4
    assert store.why("ztf:2") == sorted([last] + rows[1:], key=lambda r: (r.decided_at, r.filter))
    with pytest.raises(ValueError):  # elapsed_ms is not JSON
        store.put_decisions([("ztf:3", [Decision("x", "p", "1", "h", FilterResult.reject("no"),
                                                 elapsed_ms=float("nan"))])])


def test_0102_migrates_every_decision_both_ways(archive):
    store = DecisionStore(archive.engine)
    t1 = T0 + timedelta(seconds=3)
    store.put_decisions([("ztf:1", decisions()), ("ztf:2", decisions("b"))], decided_at=T0)
    store.put_decisions([("ztf:1", decisions()[:2])], decided_at=t1, run="rerun-1")
    store.put_decisions([("ztf:1", [Decision("a-rej", "plug-b", "2", "n" * 16, FilterResult.accept("bright"),
                                             elapsed_ms=2.0)])], decided_at=t1)
    before = {e: store.why(e) for e in ("ztf:1", "ztf:2")}
    assert len(before["ztf:1"]) == 7
    cfg = alembic_config()
    with archive.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0102@-1")
    with archive.engine.connect() as conn:  # 0101's table: one row per decision, every value as it was
        cols = ("event_id", "filter", "run", "config_hash", "plugin", "version", "accepted", "reason", "detail", "tags",
                "error", "elapsed_ms", "followup", "decided_at")
        old = [DecisionRow(*r[:9], tuple(r[9]), *r[10:]) for r in conn.execute(sa.text(
            f"SELECT {', '.join(cols)} FROM filter_decisions ORDER BY event_id, "
            "CASE WHEN run = 'live' THEN 0 ELSE 1 END, decided_at, filter, run"))]
    assert old == before["ztf:1"] + before["ztf:2"]
    with archive.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    assert {e: store.why(e) for e in before} == before
    with archive.engine.connect() as conn:  # (Event, run) rows again; the older decisions keep their own time
        assert conn.execute(sa.text("SELECT event_id, run, decided_at, jsonb_array_length(decisions) "
                                    "FROM filter_decisions ORDER BY 1, 2")).all() == [
            ("ztf:1", "live", t1, 5), ("ztf:1", "rerun-1", t1, 2), ("ztf:2", "live", T0, 4)]


def test_encoded_decisions_read_back_as_their_rows():
    ds = decisions()
    assert rows_of_encoded("ztf:1", encode_decisions(ds), run="r", decided_at=T0) == decision_rows(
        "ztf:1", ds, run="r", decided_at=T0)
    with pytest.raises(ValueError):
        encode_decisions([Decision("x", "p", "1", "h", FilterResult.reject("no"), elapsed_ms=float("inf"))])
