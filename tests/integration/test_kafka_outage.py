"""A Kafka outage longer than the producer's message timeout pauses the broker; it
resumes when Kafka returns, with nothing lost.

The worker reads the real alerts from the session's Kafka and writes ``mma.events`` and
``mma.dlq`` to a second, real Kafka (its own KRaft broker on other ports) that the test
kills with ``kill -9`` while the worker has output in flight. The producer's
``message.timeout.ms`` is set to 1 s so that the outage (5 s, then the ~10 s the broker
takes to start again) outlasts it many times over: before, the worker died after 60 s
(``flush_or_raise``) and a delivery timeout killed it at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.test_ingest_e2e import read_topic

pytestmark = pytest.mark.integration

PORT, CONTROLLER_PORT = 19392, 19393
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


def _kafka_env(home: Path) -> dict[str, str]:
    return dict(os.environ, MMA_BROKER_HOME=str(home), MMA_BROKER_KAFKA_PORT=str(PORT),
                MMA_BROKER_KAFKA_CONTROLLER_PORT=str(CONTROLLER_PORT), MMA_BROKER_PYTHON=sys.executable,
                MMA_BROKER_KAFKA_HEAP_OPTS="-Xmx384m -Xms128m")


@pytest.fixture()
def output_kafka(tmp_path):
    """A second single-node Kafka for the outputs; its jars are the session Kafka's."""
    home = tmp_path / "kafka-b"
    shared_lib = ROOT / ".mma-broker" / "kafka" / "lib"
    if (shared_lib / ".fetched").is_file():
        (home / "kafka").mkdir(parents=True)
        (home / "kafka" / "lib").symlink_to(shared_lib)
    env = _kafka_env(home)
    subprocess.run([str(KAFKA_SH), "start"], env=env, check=True, capture_output=True, timeout=300)
    pid_file = home / "kafka" / "kafka.pid"
    try:
        yield env, pid_file
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True, timeout=120)


def _rows(pg_url: str, prefix: str) -> int:
    import sqlalchemy as sa

    eng = sa.create_engine(pg_url)
    try:
        with eng.connect() as conn:
            n = conn.execute(sa.text("SELECT count(*) FROM events WHERE kafka_topic LIKE :p"),
                             {"p": prefix + "%"}).scalar()
    except sa.exc.ProgrammingError:  # the worker has not created the schema yet
        n = 0
    finally:
        eng.dispose()
    return int(n or 0)


def test_outage_longer_than_the_delivery_timeout_pauses_and_resumes(broker_env, kafka_bootstrap, fresh_db,
                                                                     output_kafka, tmp_path):
    from broker.serde import EventCodec
    from broker.sources import decode

    kenv, pid_file = output_kafka
    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    pg_url = fresh_db
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    env["MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{PORT}"
    env["MMA_BROKER_KAFKA__CONFIG"] = json.dumps({"message.timeout.ms": 1000})
    env["MMA_BROKER_UPSTREAMS"] = json.dumps([
        {"name": "notices", "kind": "kafka", "topics": [r"^(igwn\.gwalert|gcn\..+)$"], "batch_size": 20,
         "bootstrap_servers": kafka_bootstrap},
    ])
    env["MMA_BROKER_FOLLOWUP__ENABLED"] = "false"
    files = sorted((ROOT / "tests/data/gcn/gwcelery-kafka").glob("*.json"))
    first, second = files[:4], files[4:]
    upstream_env = dict(broker_env, MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap)
    run_cli(upstream_env, "replay", *map(str, first))

    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "broker", "run", "--stage", "ingest"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while _rows(pg_url, prefix) < len(first) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _rows(pg_url, prefix) == len(first)
        # their transaction is committed on the output Kafka before it dies
        read_topic(f"127.0.0.1:{PORT}", f"{prefix}mma.events", expect=len(first), timeout_s=90)

        before_outage = len((tmp_path / "worker.log").read_text())
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the output Kafka dies
        run_cli(upstream_env, "replay", *map(str, second))  # more alerts arrive meanwhile
        deadline = time.monotonic() + 60
        while _rows(pg_url, prefix) == len(first) and time.monotonic() < deadline:
            time.sleep(0.5)
        # a batch of the new alerts is archived (archive before publish) and now waits for Kafka
        assert _rows(pg_url, prefix) > len(first)
        time.sleep(5)  # five times the delivery timeout with Kafka away
        assert proc.poll() is None, "the worker must wait for Kafka, not exit"
        text = (tmp_path / "worker.log").read_text()[before_outage:]  # what it logged during the outage
        assert "waiting" in text and "not delivered" in text, text[-3000:]

        subprocess.run([str(KAFKA_SH), "start"], env=kenv, check=True, capture_output=True, timeout=300)
        events = read_topic(f"127.0.0.1:{PORT}", f"{prefix}mma.events", expect=len(files), timeout_s=120)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            proc.kill()
            log.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    codec = EventCodec()
    got = {codec.decode(m.value())[0].id for m in events}
    assert got == {decode(f.read_bytes())[0].id for f in files}
