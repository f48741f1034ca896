"""The hermes channel on the real local Kafka: a HERMES message published with hop-client
(unauthenticated mode) to ``<test prefix>hermes.test`` and read back with hop-client's
own consumer (``hop.io.Stream``, ``hop.io.list_topics``) and with ``hop subscribe``;
recovery finds it by its outbox key, and not a key that was never sent.

The message is the builder's for the quickstart's real GRB 230307A follow-up result
(tests/unit/test_hermes_reports.py makes it with the worker's analysis path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from broker.sinks.hermes import KEY_HEADER, HermesChannel, validate_message
from broker.sinks.outbox import OutboxEntry
from followup.reports.hermes import HermesOptions, followup_message
from tests.unit.test_hermes_reports import grb_doc  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _hop() -> str:
    exe = Path(sys.executable).with_name("hop")
    return str(exe) if exe.exists() else shutil.which("hop")


@pytest.fixture()
def topic(kafka_bootstrap) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"t{uuid.uuid4().hex[:8]}.hermes.test"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    return name


def test_publish_and_read_back_with_hop(grb_doc, kafka_bootstrap, topic):  # noqa: F811 - fixture
    from hop import io as hop_io
    from hop.models import JSONBlob

    msg = followup_message(grb_doc, HermesOptions(topic=topic, submitter="mma-broker test"))
    validate_message(msg)
    key = f"hermes:followup:{grb_doc['request_id']}"
    claimed = datetime.now(timezone.utc)
    entry = OutboxEntry(id=1, key=key, channel="hermes", payload=msg, state="sending", claimed_at=claimed)
    channel = HermesChannel(f"kafka://{kafka_bootstrap}/", auth=False, timeout_s=15)
    try:
        receipt = channel.send(entry)
    finally:
        channel.close()
    assert (receipt["topic"], receipt["partition"], receipt["offset"]) == (topic, 0, 0)
    hop_uuid = uuid.UUID(receipt["hop_uuid"])

    # hop-client's own consumer
    assert topic in hop_io.list_topics(f"kafka://{kafka_bootstrap}/", auth=False, timeout=10)
    stream = hop_io.Stream(auth=False, start_at=hop_io.StartPosition.EARLIEST, until_eos=True)
    with stream.open(f"kafka://{kafka_bootstrap}/{topic}", "r", group_id=f"hop-{uuid.uuid4().hex[:8]}") as s:
        got = list(s.read(metadata=True))
    assert len(got) == 1
    blob, meta = got[0]
    assert isinstance(blob, JSONBlob) and blob.content == msg
    headers = dict(meta.headers)
    assert headers["_format"] == b"json" and headers[KEY_HEADER] == key.encode()
    assert uuid.UUID(bytes=headers["_id"]) == hop_uuid and meta.key == key.encode()

    # the hop CLI, as a HERMES user reads a topic
    proc = subprocess.run([_hop(), "subscribe", "--no-auth", "--start-at", "EARLIEST", "--until-eos",
                           "--group-id", f"hop-{uuid.uuid4().hex[:8]}", f"kafka://{kafka_bootstrap}/{topic}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed == [msg]

    # recovery after a crash in send: found by its key; another key was never sent
    channel = HermesChannel(f"kafka://{kafka_bootstrap}/", auth=False, timeout_s=15)
    found = channel.recover(entry)
    assert (found["topic"], found["partition"], found["offset"], found["recovered"]) == (topic, 0, 0, True)
    other = OutboxEntry(id=2, key=key + ":never-sent", channel="hermes", payload=msg, state="sending",
                        claimed_at=claimed)
    assert channel.recover(other) is None
