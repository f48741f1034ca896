"""The follow-up trigger loop never stops on one message (in-memory consumer/producer).

Real alerts (a Fermi GBM notice, an IGWN preliminary) are decoded by the production
code, written as records of ``mma.events.enriched`` (the enrich stage's JSON form, with a
group and, for the IGWN alert, a stored sky map id), and fed to
:class:`followup.worker.TriggerStage` with a corrupt message and a rule set that
raises between them.
"""

from __future__ import annotations

import json

from confluent_kafka import KafkaError

from broker.kafka import Backoff
from broker.enrich.enriched import ENRICHED_SCHEMA
from broker.enrich.groups import group_key
from broker.serde import Provenance
from broker.sources import decode
from followup.config import FollowupSettings
from followup.messages import FollowupRequest
from followup.worker import FollowupStats, TriggerStage
from tests.unit.test_ingest_stage import GBM_VOEVENT, IGWN_JSON, FakeConsumer, FakeMessage, FakeProducer

PROV = Provenance(component="ingest", version="test", config_hash="cafe00cafe00")


def _trigger(fail_with=None, store_raw=None, max_dlq_bytes=1 << 20, rules=None):
    log: list = []
    consumer, producer = FakeConsumer(log), FakeProducer(log, fail_with)
    stage = TriggerStage(consumer, producer, requests_topic="t.req", dlq_topic="t.dlq",
                         rules=rules if rules is not None else FollowupSettings().rules,
                         enabled_analyses=["spiacs"], params={"window_s": 300.0}, provenance=PROV,
                         stats=FollowupStats(), backoff=Backoff("t", sleep=lambda s: log.append(("sleep", s))),
                         store_raw=store_raw, max_dlq_bytes=max_dlq_bytes)
    return stage, consumer, producer


SKYMAP_REF = "sha256:" + "ab" * 32


def enriched(event, ref=None):
    """An ``mma.events.enriched`` value as the enrich stage writes it (the fields a reader needs)."""
    loc = None if ref is None else {"id": ref, "kind": "skymap", "area_50_deg2": 1.0, "area_90_deg2": 2.0,
                                    "n_tiles": 10, "from_event": event.id}
    return json.dumps({"schema": ENRICHED_SCHEMA, **event.to_json_dict(), "enrichment": {
        "localization": loc, "group": {"key": group_key(event), "revision": 1, "n_revisions": 1,
                                       "latest": event.id, "retracted": False, "t0": event.time},
        "crossmatch": {}, "coincidences": [], "error": None, "provenance": {}}}).encode()


def _events_msgs():
    gbm = decode(GBM_VOEVENT.read_bytes())[0]
    return gbm, [
        FakeMessage("t.mma.events.enriched", 0, 0, enriched(gbm)),
        FakeMessage("t.mma.events.enriched", 0, 1, b"\xc3\x01garbage", key=b"x"),
        FakeMessage("t.mma.events.enriched", 0, 2, enriched(decode(IGWN_JSON.read_bytes())[0], SKYMAP_REF)),
        FakeMessage("t.mma.events.enriched", 0, 3, enriched(gbm)),
    ]


def test_corrupt_event_and_a_raising_handler_are_dead_lettered_the_rest_goes_on(monkeypatch):
    gbm, msgs = _events_msgs()
    stage, consumer, producer = _trigger()
    import followup.worker as worker

    real = worker.decide
    calls = []

    def flaky(event, rules, enabled):
        calls.append(event.id)
        if len(calls) == 2:  # the IGWN alert: a bug in a rule
            raise ZeroDivisionError("rule bug")
        return real(event, rules, enabled)

    monkeypatch.setattr(worker, "decide", flaky)
    stage.process(msgs)
    dlq = [p for p in producer.produced if p["topic"] == "t.dlq"]
    reqs = [p for p in producer.produced if p["topic"] == "t.req"]
    reasons = sorted(dict(p["headers"])["mma.dlq.reason"].decode() for p in dlq)
    assert len(dlq) == 2
    assert reasons[0].startswith("follow-up trigger: ") and "ZeroDivisionError: rule bug" in reasons[1]
    assert [dict(p["headers"])["mma.dlq.offset"] for p in dlq] == [b"1", b"2"]
    assert len(reqs) == 2 and all(FollowupRequest.decode(p["value"]).event == gbm for p in reqs)
    assert {FollowupRequest.decode(p["value"]).group for p in reqs} == {group_key(gbm)}
    assert consumer.commits == [{("t.mma.events.enriched", 0): 4}]


def test_request_carries_the_group_and_the_stored_sky_map_id():
    """The IGWN alert's request names its group and the stored map; nothing re-decodes raw bytes."""
    from followup.config import FollowupRuleSettings

    igwn = decode(IGWN_JSON.read_bytes())[0]  # a mock superevent: a rule that takes test alerts
    stage, consumer, producer = _trigger(rules=[FollowupRuleSettings(name="gw", source="igwn",
                                                                     exclude_tests=False)])
    stage.process([FakeMessage("t.mma.events.enriched", 0, 0, enriched(igwn, SKYMAP_REF))])
    (req,) = [FollowupRequest.decode(p["value"]) for p in producer.produced if p["topic"] == "t.req"]
    assert req.group == f"igwn:{igwn.upstream_id}" and req.localization_ref == SKYMAP_REF
    assert req.request_id == FollowupRequest(kind=req.kind, event=igwn, analyses=req.analyses,
                                             params=req.params, requested_by=req.requested_by).request_id


def test_an_mma_events_avro_record_is_refused_with_its_reason():
    """The trigger reads the enrich stage's topic; a record of mma.events is a clear dead letter."""
    from broker.serde import EventCodec

    gbm = decode(GBM_VOEVENT.read_bytes())[0]
    stage, consumer, producer = _trigger()
    stage.process([FakeMessage("t.mma.events.enriched", 0, 0, EventCodec().encode(gbm, PROV))])
    (dead,) = producer.produced
    reason = dict(dead["headers"])["mma.dlq.reason"].decode()
    assert dead["topic"] == "t.dlq" and reason.startswith("follow-up trigger: enriched event: not JSON")


def test_request_refused_as_too_large_dead_letters_its_event():
    def refuse_requests(rec):
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if rec["topic"] == "t.req" else None

    gbm, msgs = _events_msgs()
    stage, consumer, producer = _trigger(refuse_requests)
    stage.process(msgs[:1])
    (dead,) = producer.produced
    assert dead["topic"] == "t.dlq" and dead["value"] == msgs[0].value()
    assert dict(dead["headers"])["mma.dlq.reason"].startswith(b"Kafka refused the record for t.req")
    assert consumer.commits == [{("t.mma.events.enriched", 0): 1}]


def test_dead_letter_of_the_trigger_keeps_its_whole_value_in_the_raw_store():
    from broker.archive.raw import RawRef

    kept: list[bytes] = []

    def store_raw(blobs):
        kept.extend(blobs)
        return [RawRef(sha256="ab" * 32, length=len(b), segment="20261130/f.seg", offset=3) for b in blobs]

    bad = b"\xc3\x01" + bytes(5000)
    stage, consumer, producer = _trigger(store_raw=store_raw, max_dlq_bytes=100)
    stage.process([FakeMessage("t.mma.events.enriched", 1, 9, bad)])
    (dead,) = producer.produced
    h = dict(dead["headers"])
    assert kept == [bad] and dead["value"] == bad[:100] and h["mma.dlq.truncated"] == b"true"
    assert h["mma.dlq.size"] == b"5002" and h["mma.dlq.raw.segment"] == b"20261130/f.seg"
    assert h["mma.dlq.kind"] == b"unreadable mma.events record"
