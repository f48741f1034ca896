"""Tests of deploy/kafka: the pinned pom and the kafka.sh life cycle.

The unit tests exercise the script's guards (ports, pid files, arguments) without
starting Java. The integration test starts a real broker from the pinned jars on free
ports in a temporary state dir and round-trips a real IGWN alert with a sky map.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
POM = REPO / "deploy" / "kafka" / "pom.xml"
MVN = "{http://maven.apache.org/POM/4.0.0}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], home: Path, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MMA_BROKER_HOME": str(home), **env}
    return subprocess.run(
        ["bash", str(KAFKA_SH), *args],
        env=full_env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_pom_pins_one_kafka_release_for_every_kafka_artifact():
    root = ET.parse(POM).getroot()
    version = root.find(f"{MVN}properties/{MVN}kafka.version").text
    assert version.split(".")[0] >= "4"  # KRaft-only line; the broker needs Java 17
    deps = root.findall(f"{MVN}dependencies/{MVN}dependency")
    kafka = [d for d in deps if d.find(f"{MVN}groupId").text == "org.apache.kafka"]
    artifacts = {d.find(f"{MVN}artifactId").text for d in kafka}
    assert {"kafka_${scala.binary.version}", "kafka-server", "kafka-raft", "kafka-metadata", "kafka-storage"} <= artifacts
    assert {d.find(f"{MVN}version").text for d in kafka} == {"${kafka.version}"}
    logging_artifacts = {d.find(f"{MVN}artifactId").text for d in deps} - artifacts
    assert logging_artifacts == {"log4j-slf4j-impl", "log4j-core"}


def test_script_parses_and_rejects_unknown_commands(tmp_path):
    assert subprocess.run(["bash", "-n", str(KAFKA_SH)], check=False).returncode == 0
    result = _run(["frobnicate"], tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    result = _run(["stop", "--everything"], tmp_path)
    assert result.returncode == 1
    assert "unknown option for stop: --everything" in result.stderr


def test_status_and_stop_on_a_fresh_state_dir(tmp_path):
    result = _run(["status"], tmp_path)
    assert result.returncode == 3
    assert result.stdout.startswith("stopped")
    for _ in range(2):
        assert _run(["stop"], tmp_path).returncode == 0


def test_stale_pid_file_of_a_foreign_live_process_is_removed_not_killed(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "kafka" / "kafka.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{sleeper.pid}\n")
        assert _run(["status"], tmp_path).returncode == 3
        result = _run(["stop"], tmp_path)
        assert result.returncode == 0
        assert "stale pid file" in result.stderr
        assert not pid_file.exists()
        assert sleeper.poll() is None, "kafka.sh stop killed a process that is not its broker"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_start_refuses_a_port_held_by_another_process_before_fetching(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run(["start"], tmp_path, MMA_BROKER_KAFKA_PORT=str(port),
                      MMA_BROKER_KAFKA_CONTROLLER_PORT=str(_free_port()))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert not (tmp_path / "kafka" / "lib").exists()


@pytest.mark.parametrize("variable", ["MMA_BROKER_KAFKA_PORT", "MMA_BROKER_KAFKA_CONTROLLER_PORT"])
@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_start_rejects_a_bad_port(tmp_path, variable, value):
    result = _run(["start"], tmp_path, **{variable: value})
    assert result.returncode == 1
    assert f"{variable}={value} is not a TCP port number" in result.stderr


def test_wait_times_out_on_a_listener_that_does_not_speak_kafka(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept_and_hold() -> None:
            silent.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept_and_hold, daemon=True)
        thread.start()
        started = time.monotonic()
        result = _run(["wait"], tmp_path, timeout_s=30, MMA_BROKER_KAFKA_PORT=str(port),
                      MMA_BROKER_KAFKA_TIMEOUT="2")
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
    assert result.returncode == 1
    assert f"no answering broker on 127.0.0.1:{port} after 2 s" in result.stderr
    assert time.monotonic() - started < 20


@pytest.mark.integration
def test_broker_life_cycle_with_a_real_sky_map_alert(tmp_path):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    # A real igwn.gwalert JSON alert with its base64 multi-order sky map (2.07 MB).
    alert = REPO / "tests" / "data" / "igwn" / "userguide" / "MS181101ab-ext-update.json"
    payload = alert.read_bytes()
    assert len(payload) > 1_048_576  # above Kafka's default 1 MiB limit

    port, controller_port = _free_port(), _free_port()
    env = {
        "MMA_BROKER_KAFKA_PORT": str(port),
        "MMA_BROKER_KAFKA_CONTROLLER_PORT": str(controller_port),
        "MMA_BROKER_PYTHON": os.environ.get("MMA_BROKER_PYTHON", sys.executable),
    }
    bootstrap = f"127.0.0.1:{port}"
    topic = f"deploy-test-{uuid.uuid4().hex[:8]}"
    try:
        started = _run(["start"], tmp_path, timeout_s=600, **env)
        assert started.returncode == 0, started.stderr
        assert _run(["status"], tmp_path, **env).returncode == 0

        producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 16 * 1024 * 1024})
        producer.produce(topic, payload)  # auto-created with num.partitions=4
        assert producer.flush(60) == 0
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
        assert len(metadata.topics[topic].partitions) == 4

        again = _run(["start"], tmp_path, timeout_s=120, **env)
        assert again.returncode == 0 and "already running" in again.stderr
        assert _run(["stop"], tmp_path, timeout_s=120, **env).returncode == 0
        assert _run(["status"], tmp_path, **env).returncode == 3
        assert _run(["start"], tmp_path, timeout_s=600, **env).returncode == 0

        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 32 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        })
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 60
            message = None
            while time.monotonic() < deadline:
                message = consumer.poll(1)
                if message is not None and message.error() is None:
                    break
            assert message is not None and message.error() is None
            assert message.value() == payload  # kept across the restart
        finally:
            consumer.close()
    finally:
        purged = _run(["stop", "--purge"], tmp_path, timeout_s=120, **env)
    assert purged.returncode == 0
    assert not (tmp_path / "kafka" / "data").exists()
    assert (tmp_path / "kafka" / "lib").is_dir()
