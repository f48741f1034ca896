"""The filter stage end to end on the real Kafka and PostgreSQL, and the time machine.

Real alerts are replayed (``mma-broker replay``: every ZTF alert file of tests/data/ztf,
36 alerts, and the LVK user guide's MS181101ab preliminary alert and retraction), then
``mma-broker run --stage ingest --stage enrich --stage filters --until-caught-up``.
Three filters are enabled by settings (``MMA_BROKER_FILTERS__FILTERS``):

* ``ztf-good``: a plugin of this test (registered as an installed distribution would
  be: a ``.dist-info`` folder with ``entry_points.txt`` on ``PYTHONPATH``) that reads
  each ZTF alert's raw bytes (from the archive, through the stage) and accepts
  ``candidate.rb >= 0.7`` with at least 3 detections (the candidate and its
  ``prv_candidates`` with a ``candid`` and a ``magpsf``);
* ``broken``: a plugin that raises on half of the ZTF alerts and returns garbage on
  the others;
* ``bright``: the example plugin package (examples/mma-broker-example-filter, installed
  by deploy/setup.sh), ``bright-ztf`` with its default cuts;
* ``fu-gw``: the built-in ``followup-rule`` for IGWN alerts (the mock superevent
  taken), which asks for an INTEGRAL follow-up and a withdrawal on the retraction.

What ``ztf-good`` and ``bright`` must accept is computed here from the files with fastavro, not with
the broker's decoders.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fastavro
import jsonschema
import pytest
import sqlalchemy as sa

from tests.conftest import DATA, ROOT, run_cli

pytestmark = pytest.mark.integration

ZTF_FILES = sorted((DATA / "ztf").rglob("*.avro"))
GW = DATA / "igwn/userguide/MS181101ab-preliminary.json"
GW_RETRACTION = DATA / "igwn/userguide/MS181101ab-retraction.json"
MIN_RB, MIN_NDET = 0.7, 3

PLUGIN = '''
import io

import fastavro

from filters.api import Filter, FilterConfig, FilterInput, FilterResult


class GoodConfig(FilterConfig):
    min_rb: float = 0.5
    min_ndet: int = 1


class ZtfGood(Filter[GoodConfig]):
    """rb and number of detections, from the raw alert."""

    name = "test-ztf-good"
    version = "2"
    sources = frozenset({"ztf"})

    def apply(self, alert: FilterInput) -> FilterResult:
        raw = alert.raw()
        if not raw:
            return FilterResult.reject("no_raw")
        candid = alert.event.properties["candid"]
        rec = next(r for r in fastavro.reader(io.BytesIO(raw)) if r["candidate"]["candid"] == candid)
        prv = rec.get("prv_candidates") or []
        ndet = 1 + sum(1 for p in prv if p.get("candid") is not None and p.get("magpsf") is not None)
        if rec["candidate"]["rb"] < self.config.min_rb:
            return FilterResult.reject("rb_low")
        if ndet < self.config.min_ndet:
            return FilterResult.reject("few_detections", detail=f"ndet {ndet}")
        return FilterResult.accept("good", tags=("ztf",), detail=f"ndet {ndet}")


class Broken(Filter[FilterConfig]):
    """Raises or returns garbage."""

    name = "test-broken"
    sources = frozenset({"ztf"})

    def apply(self, alert: FilterInput) -> FilterResult:
        if alert.event.properties["candid"] % 2:
            raise RuntimeError("broken on purpose")
        return "not a result"
'''


def expected_accepted() -> set[str]:
    """Event ids ``ztf-good`` accepts, from the files (fastavro)."""
    out = set()
    for path in ZTF_FILES:
        with path.open("rb") as fh:
            for rec in fastavro.reader(fh):
                prv = rec.get("prv_candidates") or []
                ndet = 1 + sum(1 for p in prv if p.get("candid") is not None and p.get("magpsf") is not None)
                if rec["candidate"]["rb"] >= MIN_RB and ndet >= MIN_NDET:
                    out.add(f"ztf:{rec['candidate']['candid']}")
    return out


def expected_bright(max_mag: float = 19.0, min_rb: float = 0.65, min_sso_arcsec: float = 20.0) -> set[str]:
    """Event ids the example's ``bright-ztf`` accepts with its defaults, from the files (fastavro)."""
    out = set()
    for path in ZTF_FILES:
        with path.open("rb") as fh:
            for rec in fastavro.reader(fh):
                c = rec["candidate"]
                sso = c.get("ssdistnr")
                if (c["isdiffpos"] in ("t", "1") and c.get("magpsf") is not None and c["magpsf"] <= max_mag
                        and c.get("rb") is not None and c["rb"] >= min_rb
                        and not (sso is not None and 0.0 <= sso < min_sso_arcsec)):
                    out.add(f"ztf:{c['candid']}")
    return out


def ztf_ids() -> set[str]:
    out = set()
    for path in ZTF_FILES:
        with path.open("rb") as fh:
            out |= {f"ztf:{rec['candidate']['candid']}" for rec in fastavro.reader(fh)}
    return out


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list:
    """Every committed record of ``topic`` (read_committed), read up to the end of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        c.assign(parts)
        msgs, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                msgs.append(m)
            pos = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(ends[p] == 0 or pos.get(p, -1) >= ends[p] for p in ends):
                break
        return msgs
    finally:
        c.close()


@pytest.fixture()
def filters_env(broker_env, fresh_db, tmp_path) -> dict[str, str]:
    plugins = tmp_path / "plugins"
    info = plugins / "mma_test_filters-0.1.dist-info"
    info.mkdir(parents=True)
    (plugins / "mma_test_filters.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mma-test-filters\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mma_broker.filters]\ntest-ztf-good = mma_test_filters:ZtfGood\n"
                                           "test-broken = mma_test_filters:Broken\n")
    filters = [
        {"name": "ztf-good", "plugin": "test-ztf-good", "params": {"min_rb": MIN_RB, "min_ndet": MIN_NDET}},
        {"name": "broken", "plugin": "test-broken"},
        {"name": "bright", "plugin": "bright-ztf"},
        {"name": "fu-gw", "plugin": "followup-rule", "params": {"source": "igwn", "exclude_tests": False,
                                                                 "analyses": ["spiacs"]}},
    ]
    return dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db, MMA_BROKER_FOLLOWUP__ENABLED="true",
                MMA_BROKER_FILTERS__FILTERS=json.dumps(filters), MMA_BROKER_FILTERS__QUARANTINE_AFTER="1000",
                PYTHONPATH=str(plugins))


def topic(env: dict[str, str], name: str) -> str:
    return env["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + name


def test_filter_topics_hold_exactly_what_each_filter_accepts_and_a_rerun_reproduces_them(
        filters_env, kafka_bootstrap, fresh_db):
    env = filters_env
    run_cli(env, "replay", *map(str, ZTF_FILES), str(GW), str(GW_RETRACTION))
    proc = run_cli(env, "run", "--stage", "ingest", "--stage", "enrich", "--stage", "filters", "--until-caught-up",
                   "--idle", "1")
    n_events = len(ztf_ids()) + 2
    assert f"filters: {n_events} event(s)" in proc.stdout, proc.stdout[-3000:]

    # ztf-good: exactly the alerts its rule accepts, each once, keyed by upstream id
    live = [(m.key().decode(), json.loads(m.value())) for m in read_topic(kafka_bootstrap, topic(env, "mma.filter.ztf-good"))]
    want = expected_accepted()
    assert 0 < len(want) < len(ztf_ids())
    assert sorted(d["id"] for _, d in live) == sorted(want)
    from filters.stage import json_schema

    schema = json_schema()
    for key, doc in live:
        jsonschema.validate(doc, schema)
        assert key == doc["upstream_id"] and doc["filter"]["version"] == "2" and doc["filter"]["reason"] == "good"
        assert doc["enrichment"]["group"]["key"] == f"ztf:{doc['upstream_id']}"
    # the example plugin's topic: exactly what its rule accepts
    bright = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, topic(env, "mma.filter.bright"))]
    want_bright = expected_bright()
    assert 0 < len(want_bright) < len(ztf_ids())
    assert sorted(d["id"] for d in bright) == sorted(want_bright)
    assert {d["filter"]["plugin"] for d in bright} == {"bright-ztf"}
    # the broken filter published nothing and stopped nothing
    assert read_topic(kafka_bootstrap, topic(env, "mma.filter.broken"), timeout_s=5) == []
    # fu-gw: the preliminary alert asks for SPI-ACS, the retraction withdraws
    reqs = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, topic(env, "mma.followup.requests"))]
    assert sorted((r["kind"], tuple(r["analyses"]), r["requested_by"], r["group"]) for r in reqs) == [
        ("analyze", ("spiacs",), "filter:fu-gw", "igwn:MS181101ab"),
        ("withdraw", (), "filter:fu-gw", "igwn:MS181101ab")]
    analyze = next(r for r in reqs if r["kind"] == "analyze")
    assert analyze["localization_ref"].startswith("sha256:")

    # every decision archived
    from filters.store import DecisionStore

    engine = sa.create_engine(fresh_db)
    store = DecisionStore(engine)
    rows = store.decisions()
    by = {(r.event_id, r.filter): r for r in rows}
    n_igwn = n_events - len(ztf_ids())
    # three ZTF filters; fu-gw (a followup-rule with source igwn) is offered the IGWN alerts only
    assert len(rows) == len(by) == 3 * len(ztf_ids()) + n_igwn
    assert {e for (e, f), r in by.items() if f == "ztf-good" and r.accepted} == want
    broken = [r for (e, f), r in by.items() if f == "broken"]
    assert len(broken) == len(ztf_ids()) and all(not r.accepted and r.error for r in broken)
    assert {r.error.split(":")[0] for r in broken} == {"raised", "garbage"}
    some = sorted(want)[0]
    assert [(r.filter, r.run, r.accepted) for r in store.why(some)] == [
        ("bright", "live", some in want_bright), ("broken", "live", False), ("ztf-good", "live", True)]

    # the time machine over the whole archive reproduces the live topic
    script = textwrap.dedent("""
        import json, sys
        from broker.config import load_settings
        from filters.rerun import rerun
        s = rerun(load_settings(), ["ztf-good", "broken", "bright"], "2000-01-01", "2100-01-01", to_topic="rerun-out",
                  run_id="rerun-test-1", progress=lambda d, t: print("progress", d, t, file=sys.stderr))
        print(json.dumps(s.to_json_dict()))
    """)
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["alerts"] == n_events and summary["bare"] == 0 and summary["not_redecoded"] == 0
    assert summary["accepted"] == {"ztf-good": len(want), "bright": len(want_bright)}
    assert summary["errors"] == {"broken": len(ztf_ids())}
    assert f"progress {n_events} {n_events}" in res.stderr
    again = {(d["filter"]["filter"], d["id"]): d
             for d in (json.loads(m.value()) for m in read_topic(kafka_bootstrap, topic(env, "rerun-out")))}
    assert sorted(again) == sorted([("ztf-good", e) for e in want] + [("bright", e) for e in want_bright])
    for doc in [d for _, d in live] + bright:
        r = again[(doc["filter"]["filter"], doc["id"])]
        assert r["rerun"]["id"] == "rerun-test-1" and r["filter"]["version"] == doc["filter"]["version"]
        assert r["filter"]["config_hash"] == doc["filter"]["config_hash"]
        for k in ("group", "localization", "crossmatch"):
            assert r["enrichment"][k] == doc["enrichment"][k], (doc["id"], k)
        assert {k: v for k, v in r.items() if k not in ("filter", "rerun", "enrichment")} == {
            k: v for k, v in doc.items() if k not in ("filter", "enrichment")}
    rerun_rows = {(r.event_id, r.filter): r for r in store.decisions(run="rerun-test-1")}
    assert {k: (r.accepted, r.reason) for k, r in rerun_rows.items()} == {
        k: (r.accepted, r.reason) for k, r in by.items() if k[1] != "fu-gw"}
    assert store.run_info("rerun-test-1")["summary"]["accepted"] == {"ztf-good": len(want), "bright": len(want_bright)}
    # a batch written again (consumed again after a crash) replaces its own rows, nothing more
    again_rows = [r._replace(detail="written again") for r in rows[:50]]
    store.put_many(again_rows + again_rows[:5])
    after = store.decisions()
    assert len(after) == len(rows)
    assert sum(r.detail == "written again" for r in after) == 50
    engine.dispose()
