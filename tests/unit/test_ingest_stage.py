"""IngestStage.process/run with in-memory collaborators and real upstream alert bytes.

The consumer, producer and archive are fakes passed through the constructor; they
record every call in one shared log so the order archive → publish → flush → commit
can be checked. Expected values come from the files themselves (fastavro, json, lxml).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import KafkaError, KafkaException
from lxml import etree

from tests.conftest import ROOT as REPO_ROOT
from broker.errors import BrokerError, DecodeError
from broker.kafka import Backoff
from broker.limits import DEFAULT_LIMITS
from broker.pipeline.ingest import IngestStage
from broker.serde import EVENT_CONTENT_TYPE, EventCodec, Provenance

DATA = REPO_ROOT / "tests" / "data"
ZTF_MULTI = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
GBM_VOEVENT = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
IGWN_JSON = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json"
PROV = Provenance(component="ingest", version="test", config_hash="cafe00cafe00")


# ---------------------------------------------------------------- fakes
class FakeMessage:
    def __init__(self, topic, partition, offset, value, key=None, headers=None, error=None, timestamp=(1, 1700000000123)):
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key
        self._h, self._e, self._ts = headers, error, timestamp

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return self._k

    def headers(self):
        return self._h

    def error(self):
        return self._e

    def timestamp(self):
        return self._ts


class FakeProducer:
    """Records produce(); flush() reports every pending delivery (ok, or ``fail_with``)."""

    def __init__(self, log, fail_with=None, remaining=0):
        """``fail_with``: a KafkaError for every delivery, or a function record → error or None;
        ``remaining``: what flush() returns (an int, or a list consumed one per call)."""
        self.log, self.fail_with, self.remaining = log, fail_with, remaining
        self.produced: list[dict] = []
        self._pending = []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self.log.append(("produce", topic))
        rec = {"topic": topic, "key": key, "value": value, "headers": list(headers or [])}
        self.produced.append(rec)
        self._pending.append((rec, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        self.log.append(("flush",))
        if isinstance(self.remaining, list):
            left = self.remaining.pop(0) if self.remaining else 0
            if left:
                return left
        elif self.remaining:
            return self.remaining
        for rec, cb in self._pending:
            err = self.fail_with(rec) if callable(self.fail_with) else self.fail_with
            if err is not None:
                self.produced.remove(rec)
            cb(err, FakeMessage(rec["topic"], 0, 0, rec["value"], rec["key"]))
        self._pending = []
        return 0


class FakeConsumer:
    def __init__(self, log, commit_error: Exception | None = None, batches=None):
        self.log, self.commit_error = log, commit_error
        self.commits: list[dict] = []
        self.batches = list(batches or [])
        self.closed = False
        self.stop: threading.Event | None = None

    def commit(self, offsets=None, asynchronous=True):
        assert asynchronous is False
        self.log.append(("commit",))
        if isinstance(self.commit_error, list):
            if self.commit_error:
                raise self.commit_error.pop(0)
        elif self.commit_error is not None:
            raise self.commit_error
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def consume(self, num_messages=1, timeout=-1):
        if self.batches:
            return self.batches.pop(0)[:num_messages]
        self.stop.set()
        return []

    def close(self):
        self.closed = True


class FakeArchive:
    def __init__(self, log):
        self.log = log
        self.batches: list[list] = []

    def write_batch(self, items):
        self.log.append(("archive", len(items)))
        self.batches.append(list(items))


def _stage(decode=None, *, fail_with=None, remaining=0, commit_error=None, batches=None, limits=None):
    log: list = []
    consumer = FakeConsumer(log, commit_error, batches)
    producer = FakeProducer(log, fail_with, remaining)
    archive = FakeArchive(log)
    stage = IngestStage(consumer, producer, archive, events_topic="t.mma.events", dlq_topic="t.mma.dlq",
                        provenance=PROV, decode=decode, name="ingest.test", limits=limits or DEFAULT_LIMITS,
                        backoff=Backoff("ingest.test", sleep=lambda s: log.append(("sleep", s))))
    return stage, consumer, producer, archive, log


# ---------------------------------------------------------------- independent expectations
def _ztf_records(path: Path) -> list[dict]:
    with path.open("rb") as fh:
        return list(fastavro.reader(fh))


def _ivorn(path: Path) -> str:
    return etree.parse(str(path)).getroot().get("ivorn")


def _good_batch():
    return [
        FakeMessage("ztf_20191106_programid1", 0, 41, ZTF_MULTI.read_bytes(), key=b"k-ztf", headers=[("h", b"1")]),
        FakeMessage("gcn.classic.voevent.FERMI_GBM_FLT_POS", 2, 7, GBM_VOEVENT.read_bytes()),
        FakeMessage("igwn.gwalert", 0, 99, IGWN_JSON.read_bytes(), key=b"MS181101ab"),
        FakeMessage("ztf_20191106_programid1", 0, 42, ZTF_MULTI.read_bytes()),
    ]


def _mixed_batch():
    ztf_bytes = ZTF_MULTI.read_bytes()
    return [
        FakeMessage("igwn.gwalert", 0, 10, IGWN_JSON.read_bytes()),
        FakeMessage("ztf_20191106_programid1", 1, 5, ztf_bytes[:3000], key=b"trunc-key",
                    headers=[("origin", b"test"), ("empty", None)]),
        FakeMessage("igwn.gwalert", 0, 11, IGWN_JSON.read_bytes()[:200], key=b"bad-json"),
        FakeMessage("gcn.classic.voevent.FERMI_GBM_FLT_POS", 3, 0, GBM_VOEVENT.read_bytes()),
        FakeMessage("igwn.gwalert", 0, 12, None, key=b"tomb"),
    ]


# ---------------------------------------------------------------- tests
def test_good_batch_archived_published_committed_in_order():
    stage, consumer, producer, archive, log = _stage()
    stage.process(_good_batch())
    names = [entry[0] for entry in log]
    assert names[0] == "archive" and names.count("archive") == 1
    assert names[-2:] == ["flush", "commit"]
    assert set(names[1:-2]) == {"produce"}

    ztf = _ztf_records(ZTF_MULTI)
    igwn = json.loads(IGWN_JSON.read_text())
    items = archive.batches[0]
    assert len(items) == 2 * len(ztf) + 2
    assert [it.event.id for it in items[: len(ztf)]] == [f"ztf:{r['candid']}" for r in ztf]
    assert items[0].raw == ZTF_MULTI.read_bytes() and items[0].kafka.offset == 41
    assert items[len(ztf)].event.id.endswith(_ivorn(GBM_VOEVENT)) and items[len(ztf)].kafka.partition == 2
    assert items[len(ztf) + 1].event.upstream_id == igwn["superevent_id"]

    codec = EventCodec()
    assert all(p["topic"] == "t.mma.events" for p in producer.produced)
    for item, msg in zip(items, producer.produced):
        ev, prov = codec.decode(msg["value"])
        assert ev == item.event and prov == PROV
        assert msg["key"] == item.event.upstream_id.encode()
        h = dict(msg["headers"])
        assert len(h.pop("_id")) == 16  # hop-client's headers: hop subscribe reads the topic
        assert h == {"content-type": EVENT_CONTENT_TYPE.encode(), "mma.event.id": ev.id.encode(),
                     "_sender": b"mma-broker", "_format": b"blob",
                     "mma.schema": b"org.mma_broker.v1.Event; crc64-avro=" + codec.header[2:].hex().encode()}
    assert [p["key"].decode() for p in producer.produced[: len(ztf)]] == [r["objectId"] for r in ztf]

    assert consumer.commits == [{("ztf_20191106_programid1", 0): 43, ("gcn.classic.voevent.FERMI_GBM_FLT_POS", 2): 8,
                                 ("igwn.gwalert", 0): 100}]
    s = stage.stats
    assert (s.messages, s.events, s.dead_letters, s.batches) == (4, len(items), 0, 1)
    assert s.by_kind[("ztf", "ZTF", "alert")] == 2 * len(ztf)
    assert s.by_kind[("gcn", "Fermi", "flt_pos")] == 1
    assert s.by_kind[("igwn", "LVK", igwn["alert_type"].lower())] == 1
    assert sum(s.by_kind.values()) == s.events


def test_bad_messages_go_to_the_dlq_with_original_bytes_and_reason():
    stage, consumer, producer, archive, log = _stage()
    batch = _mixed_batch()
    stage.process(batch)
    assert [e[0] for e in log][0] == "archive" and [e[0] for e in log][-1] == "commit"
    assert [it.event.format for it in archive.batches[0]] == ["json", "voevent"]
    events = [p for p in producer.produced if p["topic"] == "t.mma.events"]
    dlq = [p for p in producer.produced if p["topic"] == "t.mma.dlq"]
    assert len(events) == 2 and len(dlq) == 3
    assert producer.produced.index(dlq[0]) > producer.produced.index(events[-1])  # events first
    for src, out in zip([batch[1], batch[2], batch[4]], dlq):
        assert out["value"] == src.value()
        assert out["key"] == src.key()
        headers = out["headers"]
        assert headers[: len(src.headers() or [])] == list(src.headers() or [])
        h = dict(headers)
        assert h["mma.dlq.topic"] == src.topic().encode()
        assert h["mma.dlq.partition"] == str(src.partition()).encode()
        assert h["mma.dlq.offset"] == str(src.offset()).encode()
        assert h["mma.dlq.timestamp_ms"] == b"1700000000123"
        assert h["mma.dlq.stage"] == b"ingest.test"
        assert h["mma.dlq.reason"] and b"\n" not in h["mma.dlq.reason"]
    reasons = [dict(p["headers"])["mma.dlq.reason"].decode() for p in dlq]
    assert "invalid json" in reasons[1].lower()
    assert reasons[2] == "message has no value (tombstone)"
    assert consumer.commits == [{("igwn.gwalert", 0): 13, ("ztf_20191106_programid1", 1): 6,
                                 ("gcn.classic.voevent.FERMI_GBM_FLT_POS", 3): 1}]
    s = stage.stats
    assert (s.messages, s.events, s.dead_letters) == (5, 2, 3)
    assert sum(s.dlq_reasons.values()) == 3 and s.dlq_reasons["no value (tombstone)"] == 1


def test_truncated_avro_is_a_decode_error_not_a_decoder_failure():
    """A cut ZTF container is bad input (DecodeError), not a decoder bug."""
    stage, _, producer, _, _ = _stage()
    data = ZTF_MULTI.read_bytes()
    for cut in (100, 3000, len(data) // 2, len(data) - 10):
        stage.process([FakeMessage("ztf_20191106_programid1", 0, cut, data[:cut])])
    reasons = [dict(p["headers"])["mma.dlq.reason"].decode() for p in producer.produced]
    assert len(reasons) == 4
    assert not [r for r in reasons if r.startswith("decoder failed")], reasons


def test_decoder_exception_becomes_a_dead_letter():
    def broken(data: bytes):
        raise ZeroDivisionError("division by zero in a decoder")

    stage, consumer, producer, archive, log = _stage(decode=broken)
    stage.process([FakeMessage("igwn.gwalert", 0, 3, IGWN_JSON.read_bytes(), key=b"k")])
    assert archive.batches == []
    (dead,) = producer.produced
    assert dead["topic"] == "t.mma.dlq" and dead["value"] == IGWN_JSON.read_bytes()
    assert dict(dead["headers"])["mma.dlq.reason"] == b"decoder failed: ZeroDivisionError: division by zero in a decoder"
    assert consumer.commits == [{("igwn.gwalert", 0): 4}]
    assert stage.stats.dlq_reasons == {"decoder bug": 1}


def test_decode_error_from_decoder_is_kept_as_is():
    def refuse(data: bytes):
        raise DecodeError("not for us: xyz")

    stage, _, producer, _, _ = _stage(decode=refuse)
    stage.process([FakeMessage("a", 0, 0, b"{}")])
    assert dict(producer.produced[0]["headers"])["mma.dlq.reason"] == b"not for us: xyz"


def test_consumer_errors_are_skipped_and_nothing_is_committed_without_messages():
    stage, consumer, producer, archive, log = _stage()
    stage.process([FakeMessage("igwn.gwalert", 0, 5, None, error=KafkaError(KafkaError._PARTITION_EOF)),
                   FakeMessage("igwn.gwalert", 1, 6, None, error=KafkaError(KafkaError._TRANSPORT))])
    assert log == [] and stage.stats.messages == 0 and stage.stats.batches == 0


def test_error_message_in_a_batch_does_not_move_offsets():
    stage, consumer, *_ = _stage()
    stage.process([FakeMessage("igwn.gwalert", 0, 5, IGWN_JSON.read_bytes()),
                   FakeMessage("igwn.gwalert", 0, 6, None, error=KafkaError(KafkaError._PARTITION_EOF))])
    assert consumer.commits == [{("igwn.gwalert", 0): 6}]


def test_commit_during_rebalance_does_not_raise():
    err = KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
    stage, consumer, producer, archive, log = _stage(commit_error=err)
    stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes())])
    assert log[-1] == ("commit",) and consumer.commits == []
    assert stage.stats.events == 1 and stage.stats.batches == 1


def test_other_commit_errors_are_retried_until_kafka_answers():
    """Kafka away at commit time: the stage waits (backoff), it does not exit."""
    errs = [KafkaException(KafkaError(KafkaError._TRANSPORT)), KafkaException(KafkaError(KafkaError._TIMED_OUT))]
    stage, consumer, producer, archive, log = _stage(commit_error=errs)
    stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes())])
    assert [e[0] for e in log].count("commit") == 3 and [e[0] for e in log].count("sleep") == 2
    assert consumer.commits == [{("igwn.gwalert", 0): 1}] and stage.stats.batches == 1


def test_event_refused_by_kafka_as_too_large_goes_to_the_dlq_and_the_batch_commits():
    def too_large_events(rec):
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if rec["topic"] == "t.mma.events" else None

    stage, consumer, producer, archive, log = _stage(fail_with=too_large_events)
    batch = _mixed_batch()
    stage.process(batch)
    dlq = [p for p in producer.produced if p["topic"] == "t.mma.dlq"]
    assert len(dlq) == 5  # the 3 bad messages, then the 2 whose Event Kafka refused
    reasons = [dict(p["headers"])["mma.dlq.reason"].decode() for p in dlq]
    assert all(r.startswith("archived, but Kafka refused the record for t.mma.events") for r in reasons[3:])
    assert {p["value"] for p in dlq[3:]} == {batch[0].value(), batch[3].value()}
    assert consumer.commits and stage.stats.dead_letters == 5


def test_dead_letter_refused_as_too_large_is_sent_without_its_value():
    def refuse_big_dlq(rec):
        if rec["topic"] == "t.mma.dlq" and rec["value"] is not None:
            return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        return None

    stage, consumer, producer, *_ = _stage(fail_with=refuse_big_dlq)
    stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes()[:500], key=b"k")])
    (dlq,) = producer.produced
    h = dict(dlq["headers"])
    assert dlq["value"] is None and h["mma.dlq.truncated"] == b"true"
    assert h["mma.dlq.size"] == b"500" and len(h["mma.dlq.sha256"]) == 64
    assert consumer.commits == [{("igwn.gwalert", 0): 1}]


def test_transient_delivery_failure_is_produced_again_not_dead_lettered():
    failures = [KafkaError(KafkaError._MSG_TIMED_OUT)]

    def once(rec):
        return failures.pop() if failures else None

    stage, consumer, producer, archive, log = _stage(fail_with=once)
    stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes())])
    assert [p["topic"] for p in producer.produced] == ["t.mma.events"]
    assert ("sleep", 0.5) in log and consumer.commits == [{("igwn.gwalert", 0): 1}]


def test_messages_still_queued_are_waited_for_then_committed():
    stage, consumer, producer, archive, log = _stage(remaining=[2, 2, 0])
    stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes())])
    assert [e[0] for e in log].count("flush") == 3
    assert consumer.commits == [{("igwn.gwalert", 0): 1}]


def test_stop_while_waiting_for_kafka_commits_nothing():
    from broker.kafka import StageStopped

    stage, consumer, producer, archive, log = _stage(remaining=5)
    stage.stop = threading.Event()
    stage.stop.set()
    with pytest.raises(StageStopped):
        stage.process([FakeMessage("igwn.gwalert", 0, 0, IGWN_JSON.read_bytes())])
    assert consumer.commits == []


def test_run_processes_batches_until_stopped_and_closes():
    batches = [_good_batch()[:2], _mixed_batch()]
    stage, consumer, producer, archive, log = _stage(batches=batches)
    stop = threading.Event()
    consumer.stop = stop
    seen = []
    stats = stage.run(stop, on_batch=lambda s: seen.append(s.batches))
    assert consumer.closed
    assert seen == [1, 2]
    assert stats.batches == 2 and stats.messages == 7 and stats.dead_letters == 3
    assert len(consumer.commits) == 2


# ---------------------------------------------------------------- poison pills (issue: hostile input)
class PickyArchive(FakeArchive):
    """Refuses (like PostgreSQL would) any batch holding an Event whose id is in ``bad``;
    the refusal is the real ArchiveDataError class the archive raises."""

    def __init__(self, log, bad, infra_failures=0):
        super().__init__(log)
        self.bad, self.infra_failures = set(bad), infra_failures
        self.raw: list[bytes] = []

    def write_batch(self, items):
        from broker.archive.rows import ArchiveDataError

        self.log.append(("archive", len(items)))
        if self.infra_failures:
            self.infra_failures -= 1
            raise OSError(28, "No space left on device")
        hit = [it.event.id for it in items if it.event.id in self.bad]
        if hit:
            raise ArchiveDataError(f"event {hit[0]}: refused")
        self.batches.append(list(items))

    def store_raw(self, blobs):
        from broker.archive.raw import RawRef

        self.raw.extend(blobs)
        return [RawRef(sha256="0" * 64, length=len(b), segment="20261130/x.seg", offset=7) for b in blobs]


def test_archive_failure_is_bisected_to_the_message_responsible():
    batch = _good_batch()
    stage, consumer, producer, _, log = _stage()
    from broker.sources import decode

    bad_id = decode(GBM_VOEVENT.read_bytes())[0].id
    archive = PickyArchive(log, {bad_id})
    stage.archive = archive
    stage.process(batch)
    archived = [it.event.id for b in archive.batches for it in b]
    assert bad_id not in archived
    # the same ZTF container twice (offsets 41, 42) plus the IGWN alert; the archive dedupes by id
    assert len(archived) == 2 * len(_ztf_records(ZTF_MULTI)) + 1
    assert set(archived) == {f"ztf:{r['candid']}" for r in _ztf_records(ZTF_MULTI)} | {
        decode(IGWN_JSON.read_bytes())[0].id}
    dlq = [p for p in producer.produced if p["topic"] == "t.mma.dlq"]
    (letter,) = dlq
    h = dict(letter["headers"])
    assert letter["value"] == batch[1].value()
    assert h["mma.dlq.reason"].startswith(b"archive refused the message: ArchiveDataError")
    assert h["mma.dlq.raw.segment"] == b"20261130/x.seg" and archive.raw == [batch[1].value()]
    events = [p for p in producer.produced if p["topic"] == "t.mma.events"]
    assert sorted(EventCodec().decode(p["value"])[0].id for p in events) == sorted(archived)
    assert consumer.commits and stage.stats.dead_letters == 1 and stage.stats.events == len(archived)


def test_storage_outage_is_waited_out_not_dead_lettered():
    batches = [_good_batch()[1:3]]
    stage, consumer, producer, _, log = _stage(batches=batches)
    archive = PickyArchive(log, set(), infra_failures=2)
    stage.archive = archive
    stop = threading.Event()
    consumer.stop = stop
    stage.run(stop)
    assert [e[0] for e in log].count("sleep") == 2
    assert not [p for p in producer.produced if p["topic"] == "t.mma.dlq"]
    assert len(archive.batches) == 1 and len(consumer.commits) == 1


def test_oversized_event_and_dead_letter_are_bounded():
    from broker.limits import DecodeLimits

    limits = DecodeLimits(max_event_bytes=300, max_dlq_bytes=100)
    stage, consumer, producer, archive, log = _stage(limits=limits)
    data = IGWN_JSON.read_bytes()
    stage.process([FakeMessage("igwn.gwalert", 0, 0, data)])
    assert archive.batches == []
    (letter,) = producer.produced
    h = dict(letter["headers"])
    assert b"over the limit max_event_bytes = 300" in h["mma.dlq.reason"]
    import hashlib

    assert letter["value"] == data[:100] and h["mma.dlq.truncated"] == b"true"
    assert h["mma.dlq.size"] == str(len(data)).encode() and h["mma.dlq.sha256"] == hashlib.sha256(data).hexdigest().encode()


@pytest.mark.parametrize("mutate, reason", [
    (lambda a: a.__setitem__("superevent_id", "MS\ud800x"), b"not valid Unicode"),
    (lambda a: a["event"].__setitem__("far", float("nan")), None),
])
def test_poison_values_in_a_real_alert_never_stop_the_batch(mutate, reason):
    """A lone surrogate in an id is a dead letter with a reason that encodes; a NaN FAR
    is stored as null with a note. The good messages around it are archived."""
    alert = json.loads(IGWN_JSON.read_text())
    mutate(alert)
    bad = json.dumps(alert).encode()  # json escapes the surrogate as \ud800, as an attacker would send it
    stage, consumer, producer, archive, log = _stage()
    stage.process([FakeMessage("igwn.gwalert", 0, 0, GBM_VOEVENT.read_bytes()),
                   FakeMessage("igwn.gwalert", 0, 1, bad, key="MS\ud800x".encode("utf-8", "surrogatepass")),
                   FakeMessage("igwn.gwalert", 0, 2, IGWN_JSON.read_bytes())])
    dlq = [p for p in producer.produced if p["topic"] == "t.mma.dlq"]
    if reason is None:
        assert not dlq
        ev = [it.event for b in archive.batches for it in b if it.raw == bad][0]
        assert ev.properties["far_hz"] is None and ev.properties["nonfinite_to_null"] == {"far_hz": "nan"}
    else:
        (letter,) = dlq
        assert reason in dict(letter["headers"])["mma.dlq.reason"]
        dict(letter["headers"])["mma.dlq.reason"].decode("utf-8")
    assert len([p for p in producer.produced if p["topic"] == "t.mma.events"]) == (3 if reason is None else 2)
    assert consumer.commits == [{("igwn.gwalert", 0): 3}]


def test_the_notices_upstream_hands_a_notice_over_as_it_arrives():
    """The default notices upstream has fill_s 0 (StageRunner: poll() for the first message,
    then what came with it), the ZTF one keeps filling batches; ingest passes it on."""
    from broker.config import Settings

    ups = {u.name: u for u in Settings().upstreams}
    assert ups["notices"].fill_s == 0.0 and ups["ztf"].fill_s is None
    log: list = []
    stage = IngestStage(FakeConsumer(log, None, None), FakeProducer(log, None, 0), FakeArchive(log),
                        events_topic="t.mma.events", dlq_topic="t.mma.dlq", provenance=PROV,
                        poll_timeout_s=0.05, fill_s=ups["notices"].fill_s)
    assert stage.runner.fill_s == 0.0
    stage = IngestStage(FakeConsumer(log, None, None), FakeProducer(log, None, 0), FakeArchive(log),
                        events_topic="t.mma.events", dlq_topic="t.mma.dlq", provenance=PROV, poll_timeout_s=0.5)
    assert stage.runner.fill_s == 0.5
