"""``broker.client.subscribe`` and ``mma-broker subscribe`` against the real Kafka:
replay real bundled alerts (and one malformed one), run the ingest stage on a topic
prefix of this test, then read ``mma.events`` and ``mma.dlq`` as a user would and
check the Events against values read from the files with lxml and fastavro."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import datetime, timedelta, timezone

import fastavro
import pytest
from lxml import etree

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

GBM = ROOT / "tests/data/voevent/pygcn/gbm_flt_pos.xml"
ZTF = sorted((ROOT / "tests/data/ztf/kowalski/20231012").glob("*.avro"))[:6]
IGWN = ROOT / "tests/data/igwn/userguide/MS181101ab-preliminary.json"
GUANO = ROOT / "tests/data/gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, kafka_bootstrap, pg_url):
    """A topic prefix whose mma.events and mma.dlq hold what ingest made of the files."""
    import os
    import uuid

    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_") or k == "MMA_BROKER_TEST_KAFKA"}
    env.update(MMA_BROKER_HOME=str(tmp_path_factory.mktemp("home")), MMA_BROKER_GROUP_ID=f"test-{tag}",
               MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap, MMA_BROKER_KAFKA__TOPIC_PREFIX=f"t{tag}.",
               MMA_BROKER_ARCHIVE__DATABASE_URL=pg_url, PYTHONUNBUFFERED="1")
    bad = tmp_path_factory.mktemp("bad") / "truncated.json"
    bad.write_text(GUANO.read_text()[:200])
    run_cli(env, "replay", str(GBM), str(IGWN), *map(str, ZTF))
    run_cli(env, "replay", "--topic", "gcn.notices.swift.bat.guano", str(bad))
    run_cli(env, "run", "--stage", "ingest", "--until-caught-up", "--idle", "1")
    return env, f"t{tag}."


def expected_ids() -> dict[str, dict]:
    """Event id → values read from the files without our decoders."""
    out: dict[str, dict] = {}
    root = etree.parse(str(GBM)).getroot()

    def one(name):
        return float(root.xpath(f".//*[local-name()='WhereWhen']//*[local-name()='{name}']")[0].text)

    out[f"gcn:{root.get('ivorn')}"] = {"ra": one("C1"), "dec": one("C2")}
    for path in ZTF:
        with path.open("rb") as fh:
            for rec in fastavro.reader(fh):
                out[f"ztf:{rec['candid']}"] = {"ra": rec["candidate"]["ra"], "dec": rec["candidate"]["dec"]}
    return out


# Without a group the reader assigns the partitions itself (no group join to wait
# for): every record is already there, so 1-2 s without one means the end. Reads in a
# consumer group keep 3-4 s: the idle clock runs during the join.
def test_client_reads_every_event_with_its_place(ingested, kafka_bootstrap):
    from broker.client import EventRecord, subscribe

    env, prefix = ingested
    recs = list(subscribe(f"{prefix}mma.events", bootstrap_servers=kafka_bootstrap, timeout_s=2))
    assert all(isinstance(r, EventRecord) for r in recs)
    by_id = {r.event.id: r for r in recs}
    expect = expected_ids()
    igwn = [i for i in by_id if i.startswith("igwn:MS181101ab:preliminary")]
    assert len(igwn) == 1 and set(by_id) == set(expect) | set(igwn)
    for event_id, want in expect.items():
        loc = by_id[event_id].event.localization
        assert math.isclose(loc.ra, want["ra"], abs_tol=1e-9) and math.isclose(loc.dec, want["dec"], abs_tol=1e-9)
    for r in recs:
        assert r.topic == f"{prefix}mma.events" and r.partition >= 0 and r.offset >= 0
        assert r.provenance.component.startswith("ingest")
    assert json.loads(IGWN.read_text())["event"]["far"] == pytest.approx(by_id[igwn[0]].event.properties["far_hz"])


def test_client_reads_the_dead_letter(ingested, kafka_bootstrap):
    from broker.client import DeadLetterRecord, subscribe

    env, prefix = ingested
    recs = list(subscribe([f"{prefix}mma.dlq"], bootstrap_servers=kafka_bootstrap, timeout_s=2))
    assert len(recs) == 1 and isinstance(recs[0], DeadLetterRecord)
    d = recs[0]
    assert d.origin_topic == f"{prefix}gcn.notices.swift.bat.guano" and d.size == 200 and d.reason
    assert d.value == GUANO.read_text()[:200].encode()


def test_a_group_continues_where_it_stopped(ingested, kafka_bootstrap):
    import uuid

    from broker.client import subscribe

    env, prefix = ingested
    group = f"test-client-{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}mma.events"
    first = [r.event.id for r in itertools.islice(
        subscribe(topic, bootstrap_servers=kafka_bootstrap, group_id=group, timeout_s=10), 3)]
    rest = [r.event.id for r in subscribe(topic, bootstrap_servers=kafka_bootstrap, group_id=group, timeout_s=4)]
    assert len(first) == 3 and not set(first) & set(rest)
    assert len(first) + len(rest) == len(expected_ids()) + 1
    assert list(subscribe(topic, bootstrap_servers=kafka_bootstrap, group_id=group, timeout_s=3)) == []


def test_since_starts_at_that_time(ingested, kafka_bootstrap):
    from broker.client import subscribe

    env, prefix = ingested
    topic = f"{prefix}mma.events"
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert list(subscribe(topic, bootstrap_servers=kafka_bootstrap, since=later, timeout_s=1)) == []
    assert len(list(subscribe(topic, bootstrap_servers=kafka_bootstrap, since="2020-01-01", timeout_s=2))) \
        == len(expected_ids()) + 1
    assert list(subscribe(topic, bootstrap_servers=kafka_bootstrap, from_beginning=False, timeout_s=1)) == []


def test_a_missing_topic_is_an_error(kafka_bootstrap):
    from broker.client import TopicNotFoundError, subscribe

    with pytest.raises(TopicNotFoundError, match="no topic 'no-such.mma.events'"):
        next(subscribe("no-such.mma.events", bootstrap_servers=kafka_bootstrap))


def test_cli_subscribe_json_lag_and_group(ingested):
    env, prefix = ingested
    n = len(expected_ids()) + 1
    proc = run_cli(env, "subscribe", "mma.events", "--json", "--timeout", "2")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == n and {d["type"] for d in lines} == {"event"}
    assert {d["event"]["id"] for d in lines} >= set(expected_ids())
    assert f"{prefix}mma.events: read {n} record(s); 0 offset(s) behind the end on 4 partition(s)" in proc.stderr

    # part way: the rest, counted in offsets (transaction markers take one each)
    proc = run_cli(env, "subscribe", "mma.events", "--max", "2", "--timeout", "10")
    assert len(proc.stdout.splitlines()) == 2
    assert int(re.search(r"read 2 record\(s\); (\d+) offset\(s\) behind the end", proc.stderr)[1]) >= n - 2

    proc = run_cli(env, "subscribe", "mma.events", "--group", "mine", "--max", "2", "--timeout", "10")
    first = proc.stdout.splitlines()
    assert len(first) == 2
    assert int(re.search(r"group mine: (\d+) offset\(s\) behind the end", proc.stderr)[1]) >= n - 2
    proc = run_cli(env, "subscribe", "mma.events", "--group", "mine", "--timeout", "4")
    rest = proc.stdout.splitlines()
    assert len(rest) == n - 2 and not set(first) & set(rest)
    assert "group mine: 0 offset(s) behind the end" in proc.stderr

    proc = run_cli(env, "subscribe", "mma.dlq", "--timeout", "2")
    assert proc.stdout.startswith(f"{prefix}mma.dlq[") and f"from {prefix}gcn.notices.swift.bat.guano[" in proc.stdout
    assert "200 B" in proc.stdout


@pytest.mark.parametrize("args, says", [
    (["--since", "yesterday"], "--since 'yesterday': expected an ISO 8601"),
    (["--since", "1960-01-01"], "before 1970"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "-1"], "--timeout"),
    (["--max", "-1"], "--max"),
    (["--max", "99999999999999999999999"], "--max"),
    (["--group", "\x1b[2J"], "--group"),
])
def test_cli_subscribe_refuses_bad_options_before_kafka(ingested, args, says):
    env, _ = ingested
    env = dict(env, MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")  # nothing listens: no Kafka call made
    proc = run_cli(env, "subscribe", "mma.events", *args, check=False)
    assert proc.returncode in (1, 2) and says in proc.stderr and "did not answer" not in proc.stderr, proc.stderr
    assert "mma-broker: error: " in proc.stderr and "Traceback" not in proc.stderr
