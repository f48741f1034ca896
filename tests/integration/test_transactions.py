"""A crash between producing a batch's output and committing its offsets, made exactly.

Random ``kill -9`` (tests/integration/test_reliability.py) rarely lands in the few
milliseconds between the last acknowledged record and the commit. Here the crash is
put there on purpose, on the real Kafka and PostgreSQL: the ingest stage handles a
batch of real GCN notices, its records are on ``mma.events`` (acknowledged), and the
commit raises. A second worker (same consumer group, same transactional id, as a
restarted process would be) then consumes the batch again.

* With transactions (the default), a ``read_committed`` reader sees each Event id
  once; a ``read_uncommitted`` reader sees the crashed batch's records too (so the
  crash did leave output in the log: the test exercised the window).
* At least once (``transactional=False``), the same crash leaves every Event of the
  batch twice on the topic: what the transactions are for.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import DATA, read_to_end

pytestmark = pytest.mark.integration

NOTICES = sorted((DATA / "gcn" / "gwcelery-kafka").glob("*.json"))


class Crash(Exception):
    """The process dies here."""


class CrashOn:
    """Forwards to a real confluent-kafka client, but dies when ``method`` is called."""

    def __init__(self, real, method: str) -> None:
        self._real, self._method = real, method

    def __getattr__(self, name):
        if name == self._method:
            def die(*_a, **_k):
                raise Crash(f"crash in {name}")
            return die
        return getattr(self._real, name)


def _read(bootstrap: str, topic: str, isolation: str) -> Counter:
    """Event id → how many times a reader with ``isolation`` sees it on ``topic``."""
    return Counter(dict(m.headers())["mma.event.id"].decode()
                   for m in read_to_end(bootstrap, topic, isolation=isolation))


def _worker(bootstrap: str, archive, topics: dict, group: str, txn_id: str, transactional: bool, crash: str | None):
    from broker.pipeline.ingest import IngestStage
    from broker.serde import Provenance

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([topics["in"]])
    cfg = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
    if transactional:
        # a short transaction timeout: what the crashed worker left open ends sooner
        cfg.update({"transactional.id": txn_id, "transaction.timeout.ms": 10_000})
    producer = Producer(cfg)
    if crash == "commit_transaction":
        producer = CrashOn(producer, crash)
    elif crash == "commit":
        consumer = CrashOn(consumer, crash)
    return IngestStage(consumer, producer, archive, events_topic=topics["events"], dlq_topic=topics["dlq"],
                       provenance=Provenance("ingest", "test", "test"), batch_size=len(NOTICES),
                       poll_timeout_s=2.0, transactional=transactional, admin=AdminClient({"bootstrap.servers": bootstrap}),
                       subscription=[topics["in"]]), producer


@pytest.mark.parametrize("transactional", [True, False], ids=["exactly-once", "at-least-once"])
def test_crash_after_output_before_commit(kafka_bootstrap, fresh_db, tmp_path, transactional):
    from broker.archive import Archive
    from broker.archive.raw import SegmentFileStore

    tag = uuid.uuid4().hex[:8]
    topics = {"in": f"x{tag}.gcn.notices", "events": f"x{tag}.mma.events", "dlq": f"x{tag}.mma.dlq"}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()]).values():
        fut.result()
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for path in NOTICES:
        p.produce(topics["in"], Path(path).read_bytes())
    assert p.flush(30) == 0
    archive = Archive(fresh_db, raw_store=SegmentFileStore(tmp_path / "raw"))
    archive.migrate()
    group, txn_id = f"g{tag}", f"t{tag}"
    try:
        first, _ = _worker(kafka_bootstrap, archive, topics, group, txn_id, transactional,
                           "commit_transaction" if transactional else "commit")
        with pytest.raises(Crash):
            first.run(threading.Event())
        # the restarted process: same group, same transactional id (it fences the first)
        second, _ = _worker(kafka_bootstrap, archive, topics, group, txn_id, transactional, None)
        second.run(threading.Event(), until_caught_up=True, idle_s=1.0)
    finally:
        archive.close()
    expected = {ev.id for path in NOTICES for ev in __import__("broker.sources", fromlist=["decode"]).decode(
        Path(path).read_bytes())}
    committed = _read(kafka_bootstrap, topics["events"], "read_committed")
    everything = _read(kafka_bootstrap, topics["events"], "read_uncommitted")
    assert set(committed) == expected
    if transactional:
        assert all(n == 1 for n in committed.values()), f"an Event twice: {committed.most_common(3)}"
        # the crashed batch is in the log (aborted): the crash happened after the output
        assert sum(everything.values()) == 2 * len(expected), everything.most_common(3)
    else:
        assert all(n == 2 for n in committed.values()), f"at least once should repeat the batch: {committed}"
