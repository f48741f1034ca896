"""Reliability of the ingest stage against the real Kafka and PostgreSQL (DESIGN.md,
"Reliability rules"): good input is in the archive exactly once after ``kill -9`` of a
worker at a random moment, after SIGTERM, across a PostgreSQL restart, and with two
workers sharing one consumer group.

Messages are the real ZTF alerts of ``tests/data/ztf`` repeated with distinct candids
(``benchmarks/bench_e2e.py``: copy *k* of an alert has ``candid + k·10^15``, everything
else byte-identical). Each test uses its own copy range, so its Event ids
(``ztf:<candid>``, the DESIGN.md id contract) are new to the session's archive.

The workers run as ``python -m broker run --stage ingest`` subprocesses with the ZTF
upstream only: with the default upstreams, the notices consumer has no topic to match
here and ``--until-caught-up`` would never see it caught up (an empty assignment is
never "caught up"). ``session.timeout.ms`` is 6 s instead of 45 s so a restarted worker
does not wait 45 s for the group to drop the killed one.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
import psycopg
import pytest
from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.bench_e2e import CANDID_STRIDE, load_bases, make_copy
from tests.conftest import DATA, ROOT, read_to_end, run_cli

pytestmark = pytest.mark.integration

PARTITIONS = 4
ZTF_TOPIC_RE = r"^ztf_[0-9]{8}_programid[0-9]+$"
SUMMARY_RE = re.compile(r"this run: (\d+) message")


# ------------------------------------------------------------------ messages
@pytest.fixture(scope="module")
def ztf_bases():
    bases = load_bases(DATA / "ztf")
    assert len(bases) >= 30, "the bundled ZTF samples should hold ~36 alerts"
    return bases


def ztf_messages(bases, n: int, first_copy: int) -> dict[str, bytes]:
    """``n`` real ZTF alerts, copies ``first_copy``, ``first_copy + 1``, ... of each:
    Event id → message bytes. The ids come from the construction (candid + k·10^15);
    one copy of every alert is read back with fastavro to check it."""
    out: dict[str, bytes] = {}
    for i in range(n):
        base, k = bases[i % len(bases)], first_copy + i // len(bases)
        out[f"ztf:{base.record['candid'] + k * CANDID_STRIDE}"] = make_copy(base, k)
    assert len(out) == n
    for eid, data in list(out.items())[: len(bases)]:
        (rec,) = fastavro.reader(io.BytesIO(data))
        assert f"ztf:{rec['candid']}" == eid and rec["candidate"]["candid"] == rec["candid"]
    return out


def topic_of(data: bytes) -> str:
    """The upstream topic name ``mma-broker replay`` would use (``ztf_YYYYMMDD_programid1``)."""
    from broker.sources import upstream_topic

    return upstream_topic(data)


# ------------------------------------------------------------------ Kafka / PostgreSQL helpers
@pytest.fixture()
def env(broker_env, kafka_bootstrap):
    """``broker_env`` with the ZTF upstream only, 100-message batches (more moments to
    kill at), and the test's topics and consumer groups deleted afterwards."""
    upstreams = [{"name": "ztf", "kind": "kafka", "topics": [ZTF_TOPIC_RE],
                  "config": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}}]
    e = dict(broker_env, MMA_BROKER_UPSTREAMS=json.dumps(upstreams), MMA_BROKER_INGEST__BATCH_SIZE="100")
    yield e
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    prefix = e["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if topics:
        for fut in admin.delete_topics(topics, operation_timeout=30).values():
            fut.result()
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid
              if g.group_id.startswith(e["MMA_BROKER_GROUP_ID"] + ".")]
    if groups:
        for fut in admin.delete_consumer_groups(groups).values():
            fut.result()


def produce(bootstrap: str, topic: str, msgs: list[bytes], shift: int = 0) -> None:
    """Publish round-robin over ``PARTITIONS`` partitions, message i on partition
    (i + shift) mod PARTITIONS (topic created if missing)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    failed: list = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "message.max.bytes": 16 << 20, "queue.buffering.max.kbytes": 131072, "linger.ms": 5})
    for i, m in enumerate(msgs):
        while True:
            try:
                p.produce(topic, m, partition=(i + shift) % PARTITIONS, on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0 and not failed, f"produce to {topic} failed: {failed[:1]}"


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


class RowCounter:
    """Counts the archive rows this test wrote (kafka_topic under its prefix)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.conn = psycopg.connect(psycopg_url(url), autocommit=True)
        self.prefix = prefix

    def __call__(self) -> int:
        try:
            return self.conn.execute("SELECT count(*) FROM events WHERE starts_with(kafka_topic, %s)",
                                     (self.prefix,)).fetchone()[0]
        except psycopg.errors.UndefinedTable:  # a fresh database, before the worker's migration
            return 0

    def close(self) -> None:
        self.conn.close()


def wait_until(pred: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start_worker(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    """``python -m broker run --stage ingest [extra]``, stdout and stderr into ``log``."""
    with log.open("w") as fh:
        return subprocess.Popen([sys.executable, "-m", "broker", "run", "--stage", "ingest", *extra],
                                env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def messages_this_run(text: str) -> int:
    m = SUMMARY_RE.search(text)
    assert m, f"no summary in the worker output:\n{text[-3000:]}"
    return int(m.group(1))


def group_members(bootstrap: str, group: str) -> int:
    """Members of ``group`` when it is Stable, else 0."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return len(desc.members) if desc.state == ConsumerGroupState.STABLE else 0


# ------------------------------------------------------------------ the exactly-once check
def assert_exactly_once(url: str, env: dict[str, str], expected: dict[str, bytes], bootstrap: str) -> None:
    """One archive row per alert (no loss, nothing extra), each with its own raw bytes,
    and every archived id published on ``mma.events`` exactly once, as a
    ``read_committed`` reader (every Kafka client's default) sees the topic."""
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    with psycopg.connect(psycopg_url(url)) as conn:
        rows = conn.execute(
            "SELECT id, kafka_topic, raw_segment, raw_offset, raw_length FROM events "
            "WHERE starts_with(kafka_topic, %s) OR id = ANY(%s)", (prefix, list(expected))).fetchall()
    ids = [r[0] for r in rows]
    missing = set(expected) - set(ids)
    extra = set(ids) - set(expected)
    assert not missing, f"{len(missing)} alert(s) lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} unexpected row(s), e.g. {sorted(extra)[:3]}"
    assert len(ids) == len(set(ids)) == len(expected)
    raw_dir = Path(env["MMA_BROKER_HOME"]) / "raw"
    for eid, topic, segment, offset, length in rows:
        assert topic.startswith(prefix), f"{eid} archived from {topic}, not this test's topic"
        with open(raw_dir / segment, "rb") as fh:
            fh.seek(offset)
            assert fh.read(length) == expected[eid], f"raw bytes of {eid} differ from the message sent"

    from broker.serde import EventCodec

    codec = EventCodec()
    from collections import Counter

    # read to the end (read_committed); the workers have exited, so the end is final
    seen: Counter = Counter(codec.decode(m.value())[0].id
                            for m in read_to_end(bootstrap, f"{prefix}mma.events", min_count=len(expected)))
    unpublished = set(expected) - set(seen)
    assert not unpublished, f"{len(unpublished)} archived event(s) never on mma.events, e.g. {sorted(unpublished)[:3]}"
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} event(s) more than once on mma.events, e.g. {sorted(twice.items())[:3]}"
    assert set(seen) == set(expected), f"unexpected ids on mma.events: {sorted(set(seen) - set(expected))[:3]}"


# ------------------------------------------------------------------ tests
def test_kill_9_at_random_moments(env, pg_url, kafka_bootstrap, ztf_bases, tmp_path):
    """kill -9 three times at random moments while consuming; a restart finishes exactly once.

    A kill lands inside the archive → publish → commit sequence of a batch about one
    time in three, so three kills catch an offset committed ahead of the archive (a
    mutant that commits first lost alerts in 3 of 4 runs with two kills)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    expected = ztf_messages(ztf_bases, 3000, first_copy=100)
    msgs = list(expected.values())
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    produce(kafka_bootstrap, prefix + topic_of(msgs[0]), msgs)
    # upstream sends 300 alerts a second time, on other partitions
    resent = rng.sample(msgs, 300)
    produce(kafka_bootstrap, prefix + topic_of(msgs[0]), resent, shift=1)
    msgs = msgs + resent
    count = RowCounter(pg_url, prefix)
    proc = None
    try:
        before = 0
        for cycle in range(3):
            threshold = before + rng.randint(1, (len(msgs) - before) // 4)
            delay_s = rng.uniform(0.0, 0.15)
            proc = start_worker(env, tmp_path / f"worker-{cycle}.log")
            wait_until(lambda: count() >= threshold or proc.poll() is not None, 90, f"{threshold} rows")
            assert proc.poll() is None, (tmp_path / f"worker-{cycle}.log").read_text()[-3000:]
            time.sleep(delay_s)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            after = count()
            assert before < after < len(msgs), f"seed {seed}: kill {cycle} at {after} rows is not mid-stream"
            before = after
        done = run_cli(env, "run", "--stage", "ingest", "--until-caught-up", timeout=180)
    finally:
        count.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    # the restart consumed at least everything not yet archived (no offset ran ahead of the archive)
    assert messages_this_run(done.stdout) >= len(expected) - before, f"seed {seed}"
    assert_exactly_once(pg_url, env, expected, kafka_bootstrap)


def test_sigterm_stops_cleanly(env, pg_url, kafka_bootstrap, ztf_bases, tmp_path):
    """SIGTERM mid-stream: exit 0 within seconds, offsets committed for exactly what
    was archived, and a restart finishes the rest without redelivery."""
    expected = ztf_messages(ztf_bases, 2000, first_copy=300)
    msgs = list(expected.values())
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    produce(kafka_bootstrap, prefix + topic_of(msgs[0]), msgs)
    count = RowCounter(pg_url, prefix)
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    try:
        wait_until(lambda: count() > 0 or proc.poll() is not None, 90, "the first archived rows")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        took_s = time.monotonic() - t0
        first = count()
    finally:
        count.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert took_s < 5.0, f"SIGTERM took {took_s:.1f} s"
    n_first = messages_this_run(text)
    assert 0 < n_first == first < len(msgs)
    done = run_cli(env, "run", "--stage", "ingest", "--until-caught-up", timeout=180)
    assert messages_this_run(done.stdout) == len(msgs) - n_first
    assert_exactly_once(pg_url, env, expected, kafka_bootstrap)


@pytest.fixture()
def own_pg():
    """A PostgreSQL of this test alone (it gets stopped and restarted): (url, pgdata)."""
    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="mmarel-", dir="/tmp"))
    try:
        yield ensure_embedded_postgres(root / "pg"), root / "pg"
    finally:
        stop_embedded_postgres(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restart_during_ingest(env, own_pg, kafka_bootstrap, ztf_bases, tmp_path):
    """PostgreSQL stops (pg_ctl stop -m fast) mid-stream and comes back 4 s later: the
    worker waits, resumes, and the archive ends exactly once."""
    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    url, pgdata = own_pg
    env = dict(env, MMA_BROKER_ARCHIVE__DATABASE_URL=url)
    expected = ztf_messages(ztf_bases, 3000, first_copy=500)
    msgs = list(expected.values())
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    produce(kafka_bootstrap, prefix + topic_of(msgs[0]), msgs)
    log = tmp_path / "worker.log"
    count = RowCounter(url, prefix)
    proc = start_worker(env, log, "--until-caught-up")
    try:
        wait_until(lambda: count() > 0 or proc.poll() is not None, 90, "the first archived rows")
        at_stop = count()
        assert stop_embedded_postgres(pgdata, mode="fast")
        time.sleep(4.0)
        assert proc.poll() is None, f"the worker died while PostgreSQL was down:\n{log.read_text()[-3000:]}"
        ensure_embedded_postgres(pgdata)
        rc = proc.wait(120)
    finally:
        count.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert at_stop < len(msgs), "the worker had finished before PostgreSQL stopped"
    assert "database unavailable" in text, "the worker never saw the outage"
    assert messages_this_run(text) >= len(msgs)
    assert_exactly_once(url, env, expected, kafka_bootstrap)


def test_two_workers_one_group(env, pg_url, kafka_bootstrap, ztf_bases, tmp_path):
    """Two workers share a 4-partition topic; the second joins while the first is busy
    (a rebalance during its commits). Both consume, and the archive ends exactly once."""
    expected = ztf_messages(ztf_bases, 3000, first_copy=700)
    msgs = list(expected.values())
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    topic = prefix + topic_of(msgs[0])
    group = f"{env['MMA_BROKER_GROUP_ID']}.ingest.ztf"
    produce(kafka_bootstrap, topic, msgs[:1500])
    count = RowCounter(pg_url, prefix)
    procs = []
    try:
        procs.append(start_worker(env, tmp_path / "a.log", "--until-caught-up", "--idle", "10"))
        wait_until(lambda: count() > 0 or procs[0].poll() is not None, 90, "worker A's first rows")
        procs.append(start_worker(env, tmp_path / "b.log", "--until-caught-up", "--idle", "10"))
        wait_until(lambda: group_members(kafka_bootstrap, group) == 2 or procs[0].poll() is not None,
                   60, "both workers in the group", poll_s=0.2)
        produce(kafka_bootstrap, topic, msgs[1500:])
        rcs = [p.wait(180) for p in procs]
    finally:
        count.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [(tmp_path / f"{n}.log").read_text() for n in "ab"]
    assert rcs == [0, 0], "\n----\n".join(t[-3000:] for t in texts)
    per_worker = [messages_this_run(t) for t in texts]
    assert all(n > 0 for n in per_worker), f"a worker got no partition: {per_worker}"
    assert sum(per_worker) >= len(msgs)
    assert_exactly_once(pg_url, env, expected, kafka_bootstrap)
