"""Our topics read with hop-client's own consumer, as a SCiMMA/HERMES user would.

Real GRB notices (an INTEGRAL wakeup VOEvent and the Swift BAT-GUANO JSON notices)
are replayed, ingested and followed up (``mma-broker run --until-caught-up``); then:

* ``hop subscribe`` (the CLI) prints every result of ``mma.followup.results`` as JSON
  (``_format: json``), each request id once;
* ``hop.io.Stream`` (the Python API) reads ``mma.events``: every record is a hop Blob
  whose bytes decode to an Event, with a distinct ``_id`` UUID and ``_sender``;
* nothing a subscriber receives names a path of the machine that ran the broker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.test_followup_e2e import GUANO, INTEGRAL_WAKEUP, followup_env  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


@pytest.fixture()
def ran(followup_env, kafka_bootstrap, fresh_db):  # noqa: F811 - the imported fixture
    # a database of its own: an archive that already holds these alerts (from another
    # test's topics) would rightly not publish them again
    followup_env = dict(followup_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    # the GUANO folder also holds its schema file, which replay refuses (exit 1) after
    # sending the four notices
    replayed = run_cli(followup_env, "replay", str(INTEGRAL_WAKEUP), str(GUANO), check=False)
    assert "replayed 5 file(s)" in replayed.stderr, replayed.stderr
    run_cli(followup_env, "run", "--until-caught-up", "--idle", "1", timeout=300)
    return followup_env


def _hop() -> str:
    exe = Path(sys.executable).with_name("hop")
    return str(exe) if exe.exists() else shutil.which("hop")


def test_hop_subscribe_reads_the_results_as_json(ran, kafka_bootstrap):
    topic = ran["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + "mma.followup.results"
    proc = subprocess.run([_hop(), "subscribe", "--no-auth", "--start-at", "EARLIEST", "--until-eos",
                           "--group-id", f"hop-{uuid.uuid4().hex[:8]}", f"kafka://{kafka_bootstrap}/{topic}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert docs, f"hop printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert all(d["schema"].startswith("mma.followup.result") for d in docs)
    ids = [d["request_id"] for d in docs]
    assert len(ids) == len(set(ids)), "a request id twice on mma.followup.results"
    text = proc.stdout
    for machine_path in (str(ROOT), str(Path(ran["MMA_BROKER_HOME"])), "/tmp/"):
        assert machine_path not in text, f"a published result names {machine_path}"


def test_hop_stream_reads_events_as_blobs_with_hop_headers(ran, kafka_bootstrap):
    from hop import io as hop_io
    from hop.models import Blob

    from broker.serde import EventCodec

    topic = ran["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + "mma.events"
    codec = EventCodec()
    seen_ids, events = set(), []
    stream = hop_io.Stream(auth=False, start_at=hop_io.StartPosition.EARLIEST, until_eos=True)
    with stream.open(f"kafka://{kafka_bootstrap}/{topic}", "r", group_id=f"hop-{uuid.uuid4().hex[:8]}") as s:
        for message, meta in s.read(metadata=True):
            assert isinstance(message, Blob)
            headers = dict(meta.headers)
            assert headers["_sender"] == b"mma-broker" and headers["_format"] == b"blob"
            assert headers["mma.schema"].startswith(b"org.mma_broker.v1.Event; crc64-avro=")
            seen_ids.add(uuid.UUID(bytes=headers["_id"]))
            events.append(codec.decode(message.content)[0])
    assert events, "hop read nothing from mma.events"
    assert len(seen_ids) == len(events), "two records share an _id"
    assert len({e.id for e in events}) == len(events), "an Event id twice on mma.events"
    assert {e.mission for e in events} >= {"INTEGRAL", "Swift"}
