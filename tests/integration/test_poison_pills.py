"""Poison pills against the real Kafka and PostgreSQL: hostile messages made from real
alerts, each between good real alerts on the same topics. The broker must stay up,
put each bad message on ``mma.dlq`` with its reason, archive and publish every good
one exactly once, and keep the whole of an oversized bad message in the raw store.

Each case below was, before the hardening, a message that crashed the ingest worker
before it committed (so every restart crashed again on the same batch), or that made
it publish an output Kafka refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from lxml import etree

from tests.conftest import ROOT, run_cli
from tests.integration.test_ingest_e2e import read_topic

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "data"
GCN = DATA / "gcn" / "gwcelery-kafka"
ZTF = DATA / "ztf" / "kowalski" / "20231012"
IGWN = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json"
GBM_VOEVENT = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
TOPIC_GCN = "gcn.notices.fermi.gbm.alert"
TOPIC_VO = "gcn.classic.voevent.FERMI_GBM_FLT_POS"
TOPIC_ZTF = "ztf_20231012_programid1"
TOPIC_IGWN = "igwn.gwalert"


def _gcn(name: str = "kafka_alert_fermi_alert.json", **changes) -> bytes:
    obj = json.loads((GCN / name).read_text())
    obj.update(changes)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _igwn(mutate) -> bytes:
    obj = json.loads(IGWN.read_text())
    mutate(obj)
    return json.dumps(obj).encode()


def _ztf(mutate, codec: str = "null") -> bytes:
    with (ZTF / "2475433850015010009.avro").open("rb") as fh:
        reader = fastavro.reader(fh)
        schema = reader.writer_schema
        recs = list(reader)
    for rec in recs:
        mutate(rec)
    buf = io.BytesIO()
    fastavro.writer(buf, schema, recs, codec=codec)
    return buf.getvalue()


def _voevent_dec(dec: str) -> bytes:
    root = etree.fromstring(GBM_VOEVENT.read_bytes())
    (c2,) = root.xpath("//*[local-name()='C2']")
    c2.text = dec
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _voevent_nested_wherewhen(n: int = 250) -> bytes:
    """The real GBM VOEvent with its <WhereWhen> wrapped in ``n`` more (811 kB at n=250
    with the padding the reviewer used; the shape, not the size, made it quadratic)."""
    text = GBM_VOEVENT.read_text()
    start, end = text.index("<WhereWhen"), text.index("</WhereWhen>") + len("</WhereWhen>")
    block = text[start:end]
    return (text[:start] + "<WhereWhen>" * n + block + "</WhereWhen>" * n + text[end:]).encode()


def _set_dec(rec):
    rec["candidate"]["dec"] = 200.0


def _bomb(rec):
    rec["cutoutScience"]["stampData"] = bytes(100 * 1024 * 1024)  # 100 MiB of zeros → ~100 kB deflated


def _surrogate_id(a):
    a["superevent_id"] = "MS181101\ud800"


def _nan_far(a):
    a["event"]["far"] = float("nan")
    a["time_created"] = "2018-11-01T22:34:50Z"  # a revision of its own, not a copy of the good one


def _deep_json() -> bytes:
    return b'{"$schema": "https://gcn.nasa.gov/schema/main/gcn/notices/fermi/gbm/Alert.schema.json", "x": ' + \
        b"[" * 10_000 + b"]" * 10_000 + b"}"


def _huge_int() -> bytes:
    return (GCN / "kafka_alert_fermi_alert.json").read_bytes().replace(
        b'"record_number": 1', b'"record_number": 1' + b"7" * 5000, 1)


# name → (topic, value, expected): "dlq" with a word the reason must contain, or
# ("nulled", property) when the value is archived as null with a note
HOSTILE = {
    "gcn_nan_snr": (TOPIC_GCN, _gcn("kafka_alert_fermi_flight.json", rate_snr=float("nan")), ("nulled", "rate_snr")),
    "gcn_dec_200": (TOPIC_GCN, _gcn("kafka_alert_icecube_gold.json", dec=200.0), ("dlq", "200")),
    "gcn_year_9999": (TOPIC_GCN, _gcn(trigger_time="9999-12-31T23:59:59.9999999+00:00"), ("dlq", "")),
    "gcn_18mb_event": (TOPIC_GCN, _gcn(data_archive_page="é" * 3_000_000), ("dlq", "max_event_bytes")),
    "gcn_deep_json": (TOPIC_GCN, _deep_json(), ("dlq", "depth")),
    "gcn_huge_int": (TOPIC_GCN, _huge_int(), ("dlq", "")),
    "igwn_surrogate_id": (TOPIC_IGWN, _igwn(_surrogate_id), ("dlq", "Unicode")),
    "igwn_nan_far": (TOPIC_IGWN, _igwn(_nan_far), ("nulled", "far_hz")),
    "voevent_dec_200": (TOPIC_VO, _voevent_dec("200.0"), ("dlq", "200")),
    "voevent_nested": (TOPIC_VO, _voevent_nested_wherewhen(), ("any", "")),
    "ztf_dec_200": (TOPIC_ZTF, _ztf(_set_dec), ("dlq", "200")),
    "ztf_deflate_bomb": (TOPIC_ZTF, _ztf(_bomb, codec="deflate"), ("dlq", "max_decompressed_bytes")),
    "undecodable_16mb": (TOPIC_GCN, b"{" + bytes(16 * 1024 * 1024 - 64 * 1024), ("dlq", "JSON")),
}

GOOD = [
    (TOPIC_GCN, GCN / "kafka_alert_fermi_alert.json"),
    (TOPIC_GCN, GCN / "kafka_alert_icecube_gold.json"),
    (TOPIC_GCN, GCN / "kafka_alert_einteinprobe.json"),
    (TOPIC_VO, GBM_VOEVENT),
    (TOPIC_IGWN, IGWN),
    (TOPIC_ZTF, ZTF / "2475433850015010009.avro"),
    (TOPIC_ZTF, ZTF / "2475433850015015000.avro"),
    (TOPIC_ZTF, ZTF / "2475433850015015001.avro"),
]


def _produce(bootstrap: str, prefix: str, items: list[tuple[str, bytes]]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = sorted({prefix + t for t, _ in items})
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        fut.result()
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 17 * 1024 * 1024, "linger.ms": 0})
    for topic, value in items:  # one partition per topic: the bad ones sit between good ones
        p.produce(prefix + topic, value=value, key=b"k")
    assert p.flush(60) == 0


def test_hostile_messages_never_stop_the_broker(broker_env, kafka_bootstrap, fresh_db):
    from broker.archive import Archive
    from broker.archive.raw import RawRef, SegmentFileStore
    from broker.serde import EventCodec
    from broker.sources import decode

    pg_url = fresh_db
    broker_env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    good = [(t, p.read_bytes()) for t, p in GOOD]
    items: list[tuple[str, bytes]] = []
    for i, (name, (topic, value, _)) in enumerate(HOSTILE.items()):
        items.append(good[i % len(good)])
        items.append((topic, value))
    items += good
    _produce(kafka_bootstrap, prefix, items)

    proc = run_cli(broker_env, "run", "--until-caught-up", "--idle", "1", timeout=600)
    assert proc.returncode == 0

    expected_good = {ev.id for _, v in good for ev in decode(v)}
    dlq_expected = {hashlib.sha256(v).hexdigest(): name for name, (_, v, exp) in HOSTILE.items()
                    if exp[0] == "dlq"}
    nulled = {name: exp[1] for name, (_, v, exp) in HOSTILE.items() if exp[0] == "nulled"}

    # ---- mma.dlq: each bad message once, with its reason; big ones cut, whole in the raw store
    dlq = read_topic(kafka_bootstrap, f"{prefix}mma.dlq", expect=len(dlq_expected), timeout_s=90)
    by_sha = {}
    for m in dlq:
        h = {k: (v or b"").decode() for k, v in m.headers() or [] if k != "_id"}  # _id: 16 binary bytes (hop)
        by_sha.setdefault(h["mma.dlq.sha256"], []).append((m, h))
    assert set(dlq_expected) <= set(by_sha), {dlq_expected[s] for s in set(dlq_expected) - set(by_sha)}
    home = Path(broker_env["MMA_BROKER_HOME"])
    archive = Archive(pg_url, raw_store=SegmentFileStore(home / "raw"))
    originals = {hashlib.sha256(v).hexdigest(): v for _, (_, v, _) in HOSTILE.items()}
    for sha, name in dlq_expected.items():
        (m, h), = by_sha[sha]
        word = HOSTILE[name][2][1]
        assert word in h["mma.dlq.reason"], (name, h["mma.dlq.reason"])
        assert h["mma.dlq.stage"] == "ingest.notices" or h["mma.dlq.stage"] == "ingest.ztf"
        assert len(m.value()) <= 1024 * 1024
        assert m.value() == originals[sha][: len(m.value())]
        assert (h.get("mma.dlq.truncated") == "true") == (len(originals[sha]) > 1024 * 1024)
        ref = RawRef(sha256=sha, length=int(h["mma.dlq.size"]), segment=h["mma.dlq.raw.segment"],
                     offset=int(h["mma.dlq.raw.offset"]))
        assert archive.raw_by_ref(ref) == originals[sha], name
        if name == "undecodable_16mb":  # as a user gets it back
            out = home / "whole.bin"
            run_cli(broker_env, "dlq", "raw", str(m.offset()), "--partition", str(m.partition()), "-o", str(out))
            assert out.read_bytes() == originals[sha]

    # ---- archive: every good alert exactly once, NaN values stored as null with a note
    rows = archive.list(limit=100_000)
    ids = [r.event.id for r in rows]
    assert len(ids) == len(set(ids))
    assert expected_good <= set(ids)
    assert set(ids) == expected_good | {ev.id for n in nulled for ev in decode(HOSTILE[n][1])} | (
        {ev.id for ev in decode(HOSTILE["voevent_nested"][1])}
        if hashlib.sha256(HOSTILE["voevent_nested"][1]).hexdigest() not in by_sha else set())
    for name, prop in nulled.items():
        (ev,) = decode(HOSTILE[name][1])
        row = archive.get(ev.id)
        assert row is not None, name
        assert row.event.properties[prop] is None
        assert row.event.properties["nonfinite_to_null"][prop] == "nan"

    # ---- mma.events: each decoded Event exactly once (a good alert sent three times is
    # archived and published once); nothing is lost or repeated by the poison pills
    dead = set(dlq_expected)
    sent = Counter()
    for _, value in items:
        if hashlib.sha256(value).hexdigest() not in dead:
            try:
                sent.update(ev.id for ev in decode(value))
            except Exception:  # the "any" case may be refused by a limit: then it is on the DLQ
                assert hashlib.sha256(value).hexdigest() in by_sha
    assert max(sent.values()) > 1  # the stream does resend alerts
    events = read_topic(kafka_bootstrap, f"{prefix}mma.events", expect=len(sent), timeout_s=90)
    codec = EventCodec()
    counts = Counter(codec.decode(m.value())[0].id for m in events)
    assert counts == Counter(set(sent))
    assert set(counts) == set(ids)
    archive.close()
