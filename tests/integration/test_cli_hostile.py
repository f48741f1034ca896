"""What a user's CLI shows for hostile records, against the real Kafka and PostgreSQL:
``subscribe`` reads past records that are not Events, and ``events list`` prints ids
holding rich markup, emoji codes and control characters as text."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

GUANO = ROOT / "tests/data/gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json"


def test_subscribe_reads_past_records_that_are_not_events(broker_env, kafka_bootstrap):
    from confluent_kafka import Producer

    from broker.serde import EventCodec, Provenance
    from broker.sources import decode

    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    codec = EventCodec()
    good = codec.encode(decode(GUANO.read_bytes())[0], Provenance("test", "0", "x"))
    records = [good, codec.header + b"\x02", b"not avro at all", None, good]
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in records:
        p.produce(f"{prefix}mma.events", value=value, key=b"k")
    assert p.flush(30) == 0
    proc = run_cli(broker_env, "subscribe", "mma.events", "--json", "--timeout", "4")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(records)
    assert [d["type"] for d in lines] == ["event", "unreadable", "unreadable", "unreadable", "event"]
    assert [("error" in d) for d in lines] == [False, True, True, True, False]
    assert lines[0]["event"]["id"] == lines[4]["event"]["id"]
    text = run_cli(broker_env, "subscribe", "mma.events", "--timeout", "4").stdout.splitlines()
    assert len(text) == len(records)
    assert "not a readable Event" in text[1] and "not readable: starts with b'not avro at '" in text[2]
    assert "no value" in text[3] and text[0] == text[4]


def test_events_list_prints_hostile_ids_as_text(broker_env, fresh_db):
    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from broker.archive.rows import ArchiveItem
    from broker.sources import decode

    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    items = []
    for trick in ("[/x]", "[link=https://evil.example/]click-me[/link]", ":x:", "[bold]b[/bold]"):
        obj = json.loads(GUANO.read_text())
        obj["id"] = [f"{trick}-{uuid.uuid4().hex[:4]}"]
        raw = json.dumps(obj).encode()
        items += [ArchiveItem(ev, raw, None) for ev in decode(raw)]
    with Archive(fresh_db, PostgresRawStore()) as archive:
        archive.migrate()
        archive.write_batch(items)
    proc = run_cli(dict(env, COLUMNS="400"), "events", "list", "--limit", "10")  # wide: no folded ids
    assert "\x1b" not in proc.stdout and "❌" not in proc.stdout
    for it in items:
        assert it.event.id in proc.stdout


def test_subscribe_to_a_topic_that_does_not_exist_fails_clearly(broker_env):
    proc = run_cli(broker_env, "subscribe", "mma.evnets", "--timeout", "2", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    assert proc.stderr.startswith(f"mma-broker: error: no topic '{prefix}mma.evnets'")


@pytest.mark.parametrize("args, message", [
    (["--limit", "-5"], "--limit"),
    (["--limit", "0"], "--limit"),
    (["--source", "foo"], "'foo' is not one of 'igwn', 'gcn', 'ztf', 'lsst'"),
])
def test_events_list_refuses_bad_arguments_before_any_database_call(broker_env, args, message):
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL="postgresql+psycopg://u:p@127.0.0.1:1/none")
    proc = run_cli(env, "events", "list", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "127.0.0.1" not in proc.stderr
