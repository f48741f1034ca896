"""A Kafka broker lost during a real-alert replay (issue 14, "Survive a broker loss").

``deploy/kafka/cluster.sh`` starts three Kafka nodes (KRaft, broker + controller each)
in a temporary folder: replication factor 3 and ``min.insync.replicas`` 2 for every
topic, the transaction log and ``__consumer_offsets`` included. The ingest stage runs
as ``python -m broker run --stage ingest`` on it with ``[kafka] replication_factor = 3``
(its producers: ``acks=all``, idempotent, transactional), reading real ZTF alerts of
``tests/data/ztf`` (distinct candids, as in test_reliability.py) from an upstream topic
of the cluster. In the middle of the stream the node leading ``mma.events`` partition 0
is killed with SIGKILL; more alerts are sent while it is down, it is restarted, and a
last part is sent. Then: every alert archived once with its own raw bytes, on
``mma.events`` exactly once as a ``read_committed`` reader sees it, the group's offsets
at the end of the input, and the stage process never exited (SIGTERM then ends it with
status 0).

The cluster must also have served while the node was down: the alerts sent during the
outage are archived before the restart. With ``MMA_BROKER_KAFKA_CLUSTER_MIN_ISR=3`` in
the environment (cluster.sh reads it) a write needs all three replicas and this check
fails: the stage waits until the node is back (docs/operations.md, "A three-broker
Kafka").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import ROOT
from tests.integration.test_reliability import (RowCounter, assert_exactly_once, topic_of, wait_until,  # noqa: F401
                                                ztf_bases, ztf_messages)

pytestmark = pytest.mark.integration

CLUSTER = ROOT / "deploy" / "kafka" / "cluster.sh"
ZTF_TOPIC_RE = r"^ztf_[0-9]{8}_programid[0-9]+$"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """deploy/kafka/cluster.sh with its own state folder and ports."""

    def __init__(self, state: Path) -> None:
        ports = free_ports(6)
        home = Path(os.environ.get("MMA_BROKER_HOME") or ROOT / ".mma-broker")
        self.env = dict(os.environ, MMA_BROKER_KAFKA_CLUSTER_DIR=str(state),
                        MMA_BROKER_KAFKA_LIB=str(home / "kafka" / "lib"), MMA_BROKER_HOME=str(home),
                        MMA_BROKER_KAFKA_CLUSTER_PORTS=",".join(map(str, ports[:3])),
                        MMA_BROKER_KAFKA_CLUSTER_CONTROLLER_PORTS=",".join(map(str, ports[3:])))
        self.ports = ports[:3]
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def __call__(self, *args: str, timeout: float = 180, ok: tuple[int, ...] = (0,)) -> str:
        proc = subprocess.run([str(CLUSTER), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode in ok, f"cluster.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stdout

    def node_of(self, broker_id: int) -> int:
        return broker_id  # node.id n listens on the n-th port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("kcluster"))
    try:
        c("start")
        yield c
    finally:
        for n in "123":  # its data goes: no controlled shutdown to wait for
            c("kill", n, ok=(0, 1))
        c("stop", "--purge")


def produce(bootstrap: str, topic: str, msgs: list[bytes]) -> None:
    """Send ``msgs`` round-robin over the 4 partitions, acks=all, idempotent; wait for all."""
    failed: list = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "message.max.bytes": 16 << 20, "linger.ms": 5})
    for i, m in enumerate(msgs):
        p.produce(topic, m, partition=i % 4, on_delivery=lambda err, _m: err and failed.append(err))
        p.poll(0)
    assert p.flush(60) == 0 and not failed, f"produce to {topic} failed: {failed[:1]}"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m broker --verbose run --stage ingest`` (with ``--debug`` when
    ``MMA_BROKER_TEST_DEBUG`` is set: librdkafka's debug contexts in ``[kafka] config``)."""
    level = "--debug" if env.get("MMA_BROKER_KAFKA__CONFIG__DEBUG") else "--verbose"
    with log.open("w") as fh:
        return subprocess.Popen([sys.executable, "-m", "broker", level, "run", "--stage", "ingest"],
                                env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def leader(admin: AdminClient, topic: str, partition: int) -> int:
    return admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader


def test_a_broker_killed_during_ingest(cluster, broker_env, pg_url, ztf_bases, tmp_path):
    expected = ztf_messages(ztf_bases, 600, first_copy=900)
    msgs = list(expected.values())
    parts = [msgs[:300], msgs[300:450], msgs[450:]]
    upstreams = [{"name": "ztf", "kind": "kafka", "topics": [ZTF_TOPIC_RE],
                  "config": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}}]
    env = dict(broker_env, MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=cluster.bootstrap,
               MMA_BROKER_KAFKA__REPLICATION_FACTOR="3", MMA_BROKER_UPSTREAMS=json.dumps(upstreams),
               MMA_BROKER_INGEST__BATCH_SIZE="50", MMA_BROKER_METRICS__ENABLED="false")
    if os.environ.get("MMA_BROKER_TEST_DEBUG"):  # e.g. eos,cgrp: librdkafka's debug log in ingest.log
        env["MMA_BROKER_KAFKA__CONFIG__DEBUG"] = os.environ["MMA_BROKER_TEST_DEBUG"]
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    topic = prefix + topic_of(msgs[0])
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, 4, 3)])[topic].result()
    produce(cluster.bootstrap, topic, parts[0])
    count = RowCounter(pg_url, prefix)
    log = tmp_path / "ingest.log"
    proc = start_worker(env, log)
    try:
        wait_until(lambda: count() >= 100 or proc.poll() is not None, 60, "100 archived rows")
        assert proc.poll() is None, log.read_text()[-3000:]
        events = f"{prefix}mma.events"
        group = f"{env['MMA_BROKER_GROUP_ID']}.ingest.ztf"
        # a leader of the stage's output that does not coordinate its consumer group: killing
        # that one stalls the stage for the runner's 40 s send-offsets watchdog (librdkafka
        # issue 5511; tests/unit/test_runner_stuck_offsets.py), too long for this test
        coordinator = admin.describe_consumer_groups([group])[group].result(timeout=10).coordinator.id
        leaders = [leader(admin, events, p) for p in range(4)]
        victim = cluster.node_of(next((n for n in leaders if n != coordinator), leaders[0]))
        # the replicas of every topic of the stage: all three nodes
        meta = admin.list_topics(timeout=10).topics
        assert all(len(p.replicas) == 3 for t in (topic, events) for p in meta[t].partitions.values())
        at_kill = count()
        t_kill = time.monotonic()
        cluster("kill", str(victim))
        assert at_kill < len(parts[0]), "the stage had finished the first part before the kill"
        produce(cluster.bootstrap, topic, parts[1])  # the upstream goes on while the node is down
        wait_until(lambda: count() > at_kill or proc.poll() is not None, 30, "a row archived after the kill")
        first_row_s = time.monotonic() - t_kill
        wait_until(lambda: count() >= 450 or proc.poll() is not None, 40,
                   "the alerts sent during the outage archived with one node down")
        all_down_s = time.monotonic() - t_kill
        assert proc.poll() is None, log.read_text()[-3000:]
        assert cluster("status", ok=(3,)).count(": running") == 2
        t_restart = time.monotonic()
        cluster("restart", str(victim))
        restart_s = time.monotonic() - t_restart
        produce(cluster.bootstrap, topic, parts[2])
        wait_until(lambda: count() >= len(msgs) or proc.poll() is not None, 40, "every alert archived")
        assert proc.poll() is None, f"the stage exited:\n{log.read_text()[-3000:]}"

        offsets: list = []

        def caught_up() -> bool:
            from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
            from confluent_kafka.admin import OffsetSpec

            admin = AdminClient({"bootstrap.servers": cluster.bootstrap})  # no metadata from before the restart
            try:
                (fut,) = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]).values()
                committed = {tp.partition: tp.offset for tp in fut.result().topic_partitions}
                ends = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(4)})
                offsets[:] = [(committed.get(tp.partition), f.result().offset) for tp, f in sorted(
                    ends.items(), key=lambda kv: kv[0].partition)]
            except KafkaException as exc:  # leaders move back to the restarted node: stale metadata
                offsets[:] = [exc.args[0].str()]
                return False
            return all(c == e for c, e in offsets)

        try:
            wait_until(caught_up, 30, "the group's offsets at the end of the input", poll_s=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: (committed, end) per partition {offsets}") from None
        assert proc.poll() is None, f"the stage exited:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        count.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"node {victim} killed at {at_kill} rows; first row after the kill {first_row_s:.1f} s, "
          f"the outage's alerts archived {all_down_s:.1f} s after it; restart took {restart_s:.1f} s")
    assert_exactly_once(pg_url, env, expected, cluster.bootstrap)
