"""Exactly once on the follow-up topics after ``kill -9`` at random moments.

The bundled demo alerts (real GCN and IGWN notices: 20+ of them start a follow-up
under the default rules) are replayed; ``mma-broker run`` (ingest, trigger and worker
in one process) is killed with SIGKILL twice at random moments, then run to the end.
A ``read_committed`` reader (every Kafka client's default) must then see each Event
id once on ``mma.events``, each request id once on ``mma.followup.requests`` and at
most once on ``mma.followup.results``; each request must have one outcome (a
published result, or a stored "skipped" row when its revision added nothing to its
trigger's follow-up), and the archive's ``followup_results`` must hold each published
result once, marked published.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.conftest import ROOT, read_to_end, run_cli
from tests.integration.test_followup_e2e import followup_env  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def read_committed(bootstrap: str, topic: str, header: str) -> Counter:
    """How many times each value of ``header`` is on ``topic`` (read_committed, to the end)."""
    return Counter(dict(m.headers())[header].decode() for m in read_to_end(bootstrap, topic, timeout_s=90))


def test_kill_9_during_follow_up_leaves_each_request_and_result_once(followup_env, kafka_bootstrap,  # noqa: F811
                                                                     fresh_db, tmp_path):
    # a consumer killed with SIGKILL stays in its group until its session times out:
    # 6 s (the broker's minimum) instead of librdkafka's 45 s, or each restart below
    # waits ~45 s for the killed run's members before it gets a partition
    env = dict(followup_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db, MMA_BROKER_METRICS__ENABLED="false",
               MMA_BROKER_FOLLOWUP__BATCH_SIZE="3",
               MMA_BROKER_KAFKA__CONFIG=json.dumps({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    run_cli(env, "replay", "--demo")
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    for cycle in range(2):
        log = tmp_path / f"run-{cycle}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "broker", "run"], env=env, cwd=ROOT, stdout=fh,
                                    stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(2.0, 9.0))
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    done = run_cli(env, "run", "--until-caught-up", "--idle", "1", timeout=600)
    assert "follow-up:" in done.stdout, done.stdout[-2000:]

    events = read_committed(kafka_bootstrap, f"{prefix}mma.events", "mma.event.id")
    requests = read_committed(kafka_bootstrap, f"{prefix}mma.followup.requests", "mma.followup.request_id")
    results = read_committed(kafka_bootstrap, f"{prefix}mma.followup.results", "mma.followup.request_id")
    assert len(events) >= 80, f"seed {seed}: only {len(events)} events"
    assert len(requests) >= 20, f"seed {seed}: only {len(requests)} requests"
    for name, seen in (("mma.events", events), ("mma.followup.requests", requests),
                       ("mma.followup.results", results)):
        twice = {k: n for k, n in seen.items() if n > 1}
        assert not twice, f"seed {seed}: {len(twice)} id(s) more than once on {name}: {sorted(twice.items())[:3]}"

    import sqlalchemy as sa

    from followup.store import FollowupStore

    # every request has exactly one outcome: a published result (or withdrawal), or a
    # stored "skipped" row (a revision adding nothing to its trigger's follow-up)
    store = FollowupStore(sa.create_engine(fresh_db))
    rows = store.list(limit=1000)
    skipped = {r.request_id for r in store.list(limit=1000, kinds=("skipped",))}
    assert set(results) | skipped == set(requests), f"seed {seed}: requests without an outcome: " \
        f"{set(requests) - set(results) - skipped}"
    assert not set(results) & skipped
    assert sorted(r.document["request_id"] for r in rows) == sorted(results)
    assert all(r.published for r in rows)
    for r in rows:
        json.dumps(r.document)  # stored documents are plain JSON
