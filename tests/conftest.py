"""Shared fixtures: the real Kafka and the real PostgreSQL the integration tests use.

``deploy/test.sh`` starts Kafka (KRaft, from Maven Central jars) before pytest and
exports ``MMA_BROKER_TEST_KAFKA``; run alone, this conftest starts it with the same
script. PostgreSQL is an embedded server (pgserver) in a temporary folder, started
once per session. Nothing here skips: if a server cannot start, the tests fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the real local Kafka (started if it is not running)."""
    bootstrap = os.environ.get("MMA_BROKER_TEST_KAFKA")
    if not bootstrap:
        env = dict(os.environ, MMA_BROKER_PYTHON=sys.executable)
        subprocess.run([str(ROOT / "deploy" / "kafka" / "kafka.sh"), "start"], check=True, env=env)
        bootstrap = "127.0.0.1:" + os.environ.get("MMA_BROKER_KAFKA_PORT", "9092")
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=60)
    return bootstrap


@pytest.fixture(scope="session")
def pg_url():
    """URL of a real embedded PostgreSQL (pgserver) for this test session."""
    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    # unix socket paths are limited to ~107 bytes: keep the folder short
    d = Path(tempfile.mkdtemp(prefix="mmapg-", dir="/tmp"))
    try:
        yield ensure_embedded_postgres(d)
    finally:
        stop_embedded_postgres(d)
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_capture():
    """A real SMTP server (aiosmtpd) on a free local port, stopped on exit.

    Yields a namespace with ``port`` and ``received`` (the envelopes, in arrival order).
    """
    from types import SimpleNamespace

    from aiosmtpd.controller import Controller

    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SimpleNamespace(port=port, received=received)
    finally:
        controller.stop()


@contextlib.contextmanager
def _new_database(pg_url):
    """A new, empty database on the session's PostgreSQL, dropped on exit; yields its URL."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture()
def fresh_db(pg_url):
    """URL of a new, empty database on the session's PostgreSQL, dropped afterwards:
    for tests that count archive rows exactly (the session database holds the same real
    alerts, archived by other tests, and archive ids are deterministic)."""
    with _new_database(pg_url) as url:
        yield url


@pytest.fixture()
def second_db(pg_url):
    """Another new, empty database beside :func:`fresh_db` (e.g. an import target)."""
    with _new_database(pg_url) as url:
        yield url


@pytest.fixture()
def broker_env(tmp_path, kafka_bootstrap, pg_url):
    """Environment for running ``mma-broker`` as a subprocess in isolation: its own
    topic prefix, consumer group and state folder, the session's PostgreSQL."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("MMA_BROKER_") and k not in ("MMA_BROKER_TEST_KAFKA",):
            env.pop(k)
    env.update(
        MMA_BROKER_HOME=str(tmp_path / "home"),
        MMA_BROKER_GROUP_ID=f"test-{tag}",
        MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
        MMA_BROKER_KAFKA__TOPIC_PREFIX=f"t{tag}.",
        # HERMES's topic is not prefixed (it is HERMES's name): each test gets its own
        MMA_BROKER_PUBLISH__HERMES__TOPIC=f"t{tag}.hermes.test",
        MMA_BROKER_PUBLISH__HERMES__TEST_TOPICS=f'["t{tag}.hermes.test"]',
        MMA_BROKER_ARCHIVE__DATABASE_URL=pg_url,
        PYTHONUNBUFFERED="1",
    )
    yield env
    delete_topics(kafka_bootstrap, f"t{tag}.")


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics a test made under its prefix: a broker holding every test's
    topics (about 20 topics of 4 partitions per broker run, the filter topics included)
    grows slower at creating and listing them as the suite goes on."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=10).values():
                fut.result(timeout=15)
    except Exception as exc:  # noqa: BLE001 - clean-up only; the test's result stands
        print(f"conftest: topics under {prefix} not deleted: {exc}")


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 60.0, *, min_count: int = 0,
                settle_s: float = 0.0, isolation: str = "read_committed") -> list:
    """Every committed record of ``topic`` (``isolation.level=read_committed``, every
    Kafka client's default, unless ``isolation`` says ``read_uncommitted``), read from
    the beginning up to the end of each partition.

    The partitions are assigned directly (no consumer group to join) and the reader
    stops as soon as its position reaches each partition's end offset, taken when it
    starts (re-taken while fewer than ``min_count`` records arrived, for a topic that
    is still being written). For a ``read_committed`` reader Kafka answers the end
    offset query with the last stable offset, so records of an open transaction are
    neither read nor waited for, and aborted records or commit markers at the end of
    a partition do not hold it up (checked on the dev broker). This replaces "read
    until nothing new for 4 s": the stages writing the topic have finished (or are
    idle) when a test reads it, so the end offsets are final; a record written later
    would have been a race for the settle time as well.

    Parameters
    ----------
    bootstrap : str
    topic : str
    timeout_s : float
        Longest read, s.
    min_count : int
        Wait (up to ``timeout_s``) until at least this many records were read.
    settle_s : float
        Once at the end, go on reading this long for records written meanwhile, s.
    isolation : {"read_committed", "read_uncommitted"}
        ``isolation.level`` of the reader.

    Returns
    -------
    list of confluent_kafka.Message
        In partition order, then offset order.
    """
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": isolation})
    try:
        deadline = time.monotonic() + timeout_s
        meta = None
        while meta is None:  # a topic a stage has not made yet: wait for it like a subscriber would
            found = c.list_topics(topic, timeout=10).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                meta = found
            elif time.monotonic() > deadline:
                return []
            else:
                time.sleep(0.2)
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]

        def end_offsets() -> dict[int, int]:
            return {p.partition: c.get_watermark_offsets(p, timeout=10, cached=False)[1] for p in parts}

        ends = end_offsets()
        c.assign(parts)
        msgs: list = []
        while time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is not None and not m.error():
                msgs.append(m)
                continue
            pos = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(ends[p] <= 0 or pos.get(p, -1) >= ends[p] for p in ends):
                if len(msgs) >= min_count:
                    break
                ends = end_offsets()
        settled = min(time.monotonic() + settle_s, deadline)
        while time.monotonic() < settled:
            m = c.poll(0.1)
            if m is not None and not m.error():
                msgs.append(m)
        return msgs
    finally:
        c.close()


def run_cli(env: dict[str, str], *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m broker ARGS`` as a user would; return the completed process."""
    proc = subprocess.run([sys.executable, "-m", "broker", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"mma-broker {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc
