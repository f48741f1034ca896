"""The filter stage with in-memory Kafka and store (filters.stage).

Real alerts (a Fermi GBM notice, the LVK user guide's MS181101ab preliminary alert and
retraction, three real ZTF alerts of one Avro file) are decoded by the production
decoders and written as ``mma.events.enriched`` records (the enrich stage's JSON form),
then fed through :class:`filters.stage.FilterRunner` with filters defined here:
what each accepts is stated from the files (json / fastavro), not from our decoders.
"""

from __future__ import annotations

import json
import time

import fastavro
import jsonschema
import pytest

from broker.enrich.enriched import ENRICHED_SCHEMA
from broker.enrich.groups import group_key
from broker.serde import EventCodec, Provenance
from broker.sources import decode
from filters.api import Filter, FilterConfig, FilterInput, FilterResult, FollowupSpec
from filters.engine import ConfiguredFilter, FilterSet
from filters.stage import FILTERED_SCHEMA, FilterHandler, FilterRunner, FollowupOutput, RawBatch, json_schema
from followup.messages import FollowupRequest
from tests.conftest import DATA
from tests.unit.test_ingest_stage import GBM_VOEVENT, IGWN_JSON, ZTF_MULTI, FakeConsumer, FakeMessage, FakeProducer

IGWN_RETRACTION = DATA / "igwn" / "userguide" / "MS181101ab-retraction.json"
PROV = Provenance(component="filters", version="test", config_hash="cafe00cafe00")
SKYMAP_REF = "sha256:" + "ab" * 32
IN = "t.mma.events.enriched"


# ---------------------------------------------------------------- filters of the tests
class SourceCfg(FilterConfig):
    source: str = "gcn"


class BySource(Filter[SourceCfg]):
    """Accepts the Events of one source."""

    name = "by-source"
    version = "3"

    def apply(self, alert: FilterInput) -> FilterResult:
        if alert.event.source == self.config.source:
            return FilterResult.accept("source_match", tags=("t",), detail=f"source {alert.event.source}")
        return FilterResult.reject("other_source")


class Raising(Filter[FilterConfig]):
    """Raises on every alert."""

    name = "raising"

    def apply(self, alert: FilterInput) -> FilterResult:
        raise ZeroDivisionError("a bug in the filter")


class Garbage(Filter[FilterConfig]):
    """Returns something that is not a FilterResult."""

    name = "garbage"

    def apply(self, alert: FilterInput) -> FilterResult:
        return True  # type: ignore[return-value]


class Slow(Filter[FilterConfig]):
    """Runs far past its budget (stopped by the watchdog)."""

    name = "slow"

    def apply(self, alert: FilterInput) -> FilterResult:
        end = time.perf_counter() + 2.0
        while time.perf_counter() < end:
            pass
        return FilterResult.accept()


class FollowCfg(FilterConfig):
    analyses: tuple[str, ...] = ("spiacs", "isgri")
    window_s: float | None = None


class Follow(Filter[FollowCfg]):
    """Accepts everything with a follow-up request."""

    name = "follow"

    def apply(self, alert: FilterInput) -> FilterResult:
        return FilterResult.accept("follow", followup=(FollowupSpec(analyses=self.config.analyses,
                                                                     window_s=self.config.window_s),))


class RbCfg(FilterConfig):
    min_rb: float = 0.0
    history: bool = False
    raw: bool = True


class ZtfRb(Filter[RbCfg]):
    """ZTF alerts with rb >= min_rb, reading the raw bytes (and the history) on the way."""

    name = "ztf-rb"
    sources = frozenset({"ztf"})

    def apply(self, alert: FilterInput) -> FilterResult:
        if self.config.raw and not alert.raw():
            return FilterResult.reject("no_raw")
        if self.config.history:
            alert.ztf_history()
        rb = alert.event.properties["rb"]
        return FilterResult.accept("rb_ok") if rb >= self.config.min_rb else FilterResult.reject("rb_low")


def cf(f: Filter, name: str | None = None, budget_ms: float = 1000.0) -> ConfiguredFilter:
    return ConfiguredFilter(name or f.name, f, budget_ms)


# ---------------------------------------------------------------- records and fakes
def enriched(event, ref=None, group=None) -> bytes:
    """An ``mma.events.enriched`` value as the enrich stage writes it."""
    loc = None if ref is None else {"id": ref, "kind": "skymap", "area_50_deg2": 1.0, "area_90_deg2": 2.0,
                                    "n_tiles": 10, "from_event": event.id}
    return json.dumps({"schema": ENRICHED_SCHEMA, **event.to_json_dict(), "enrichment": {
        "localization": loc, "group": group or {"key": group_key(event), "revision": 1, "n_revisions": 1,
                                                "latest": event.id, "retracted": False, "t0": event.time},
        "crossmatch": {}, "coincidences": [], "error": None, "provenance": {}}}).encode()


def msg(offset, event, ref=None, partition=0):
    return FakeMessage(IN, partition, offset, enriched(event, ref), key=event.upstream_id.encode(),
                       headers=[("content-type", b"application/json"), ("mma.event.id", event.id.encode())])


class FakeStore:
    def __init__(self):
        self.rows = []
        self.writes = 0

    def put_encoded(self, items, *, run="live", decided_at=None):
        from filters.store import rows_of_encoded

        self.writes += 1
        for event_id, text in items:
            self.rows += rows_of_encoded(event_id, text, run=run, decided_at=decided_at)


class FakeRawSource:
    """The archive's raw bytes by Event id, recording each batched read."""

    def __init__(self, raw_by_id):
        self.raw_by_id, self.calls = raw_by_id, []

    def __call__(self, ids):
        self.calls.append(list(ids))
        return {i: self.raw_by_id.get(i) for i in ids}


def runner(filters, *, followup=None, raw=None, history_decoder=None, publish=None, quarantine_after=100):
    log: list = []
    consumer, producer = FakeConsumer(log), FakeProducer(log)
    fs = FilterSet(filters, quarantine_after=quarantine_after)
    topics = {c.name: f"t.mma.filter.{c.name}" for c in filters} | (publish or {})
    store = FakeStore()
    handler = FilterHandler(filter_set=fs, topics=topics, store=store, raw=raw, followup=followup,
                            history_decoder=history_decoder)
    return FilterRunner(handler, consumer, producer, dlq_topic="t.mma.dlq"), producer, store, consumer


def on(producer, topic):
    return [p for p in producer.produced if p["topic"] == topic]


@pytest.fixture(scope="module")
def alerts():
    gbm = decode(GBM_VOEVENT.read_bytes())[0]
    igwn = decode(IGWN_JSON.read_bytes())[0]
    retraction = decode(IGWN_RETRACTION.read_bytes())[0]
    ztf = decode(ZTF_MULTI.read_bytes())
    return {"gbm": gbm, "igwn": igwn, "retraction": retraction, "ztf": ztf}


# ---------------------------------------------------------------- tests
def test_accepted_events_go_to_the_filter_topic_with_the_decision_rejected_ones_nowhere(alerts):
    gbm, igwn = alerts["gbm"], alerts["igwn"]
    r, producer, store, consumer = runner([cf(BySource()), cf(BySource(SourceCfg(source="igwn")), "gw-only")])
    msgs = [msg(0, gbm), msg(1, igwn, SKYMAP_REF)]
    r.process(msgs)
    (rec,) = on(producer, "t.mma.filter.by-source")
    gw = on(producer, "t.mma.filter.gw-only")
    assert len(gw) == 1 and gw[0]["key"] == igwn.upstream_id.encode()
    assert rec["key"] == gbm.upstream_id.encode()
    doc = json.loads(rec["value"])
    jsonschema.validate(doc, json_schema())
    original = json.loads(msgs[0].value())
    assert doc["schema"] == FILTERED_SCHEMA
    assert {k: v for k, v in doc.items() if k not in ("schema", "filter")} == {
        k: v for k, v in original.items() if k != "schema"}
    f = doc["filter"]
    assert (f["filter"], f["plugin"], f["version"], f["accepted"], f["reason"], f["tags"], f["error"]) == (
        "by-source", "by-source", "3", True, "source_match", ["t"], None)
    assert f["config_hash"] == BySource().config_hash and f["detail"] == "source gcn"
    headers = dict(rec["headers"])
    assert headers["mma.filter.name"] == b"by-source" and headers["mma.event.id"] == gbm.id.encode()
    assert headers["_format"] == b"json" and headers["_sender"] == b"mma-broker" and len(headers["_id"]) == 16
    # every decision archived: 2 events x 2 filters, the rejections too, in one write
    assert store.writes == 1
    assert sorted((row.event_id, row.filter, row.accepted, row.reason) for row in store.rows) == sorted([
        (gbm.id, "by-source", True, "source_match"), (gbm.id, "gw-only", False, "other_source"),
        (igwn.id, "by-source", False, "other_source"), (igwn.id, "gw-only", True, "source_match")])
    assert all(row.run == "live" and row.version == "3" for row in store.rows)
    assert consumer.commits == [{(IN, 0): 2}]
    assert r.stage.stats.published == {"by-source": 1, "gw-only": 1}


def test_a_filter_with_publish_off_archives_but_publishes_nothing(alerts):
    r, producer, store, _ = runner([cf(BySource())], publish={"by-source": None})
    r.process([msg(0, alerts["gbm"])])
    assert producer.produced == [] and [row.accepted for row in store.rows] == [True]


@pytest.mark.parametrize("bad", [Raising(), Garbage(), Slow()], ids=["raises", "garbage", "slow"])
def test_a_broken_filter_is_an_error_decision_and_the_others_go_on(alerts, bad):
    gbm = alerts["gbm"]
    budget = 1.0 if isinstance(bad, Slow) else 1000.0  # slow: stopped at 50 x 1 ms
    r, producer, store, consumer = runner([cf(bad, budget_ms=budget), cf(BySource())])
    t0 = time.perf_counter()
    r.process([msg(0, gbm), msg(1, gbm)])
    assert time.perf_counter() - t0 < 1.5  # the slow one did not run its 2 s
    assert len(on(producer, "t.mma.filter.by-source")) == 2
    assert on(producer, f"t.mma.filter.{bad.name}") == []
    errors = [row for row in store.rows if row.filter == bad.name]
    assert len(errors) == 2 and all(not row.accepted and row.reason == "error" for row in errors)
    prefix = {"raising": "raised: ZeroDivisionError: a bug", "garbage": "garbage: returned bool",
              "slow": "timeout: stopped after"}[bad.name]
    assert all(row.error.startswith(prefix) for row in errors), errors[0].error
    assert consumer.commits == [{(IN, 0): 2}] and on(producer, "t.mma.dlq") == []


def test_a_filter_failing_again_and_again_is_quarantined_and_the_stream_goes_on(alerts):
    gbm = alerts["gbm"]
    r, producer, store, _ = runner([cf(Raising()), cf(BySource())], quarantine_after=3)
    r.process([msg(i, gbm) for i in range(5)])
    errors = [row.error for row in store.rows if row.filter == "raising"]
    assert [e.split(":")[0] for e in errors] == ["raised"] * 3 + ["quarantined"] * 2
    assert len(on(producer, "t.mma.filter.by-source")) == 5


def test_followup_requests_from_accepted_decisions_intersected_with_the_enabled_analyses(alerts):
    igwn = alerts["igwn"]
    out = FollowupOutput(topic="t.req", analyses=("spiacs",), params={"window_s": 300.0, "max_sky_samples": 64},
                         provenance=PROV)
    # two filters asking for the same follow-up give one request; a third asks with its own window
    r, producer, store, _ = runner([cf(Follow(), "follow-a"), cf(Follow(), "follow-b"),
                                    cf(Follow(FollowCfg(window_s=120.0)), "follow-c"),
                                    cf(Follow(FollowCfg(analyses=("isgri",))), "follow-isgri")], followup=out)
    r.process([msg(0, igwn, SKYMAP_REF)])
    reqs = [FollowupRequest.decode(p["value"]) for p in on(producer, "t.req")]
    assert [(q.kind, q.analyses, dict(q.params), q.requested_by) for q in reqs] == [
        ("analyze", ("spiacs",), {"window_s": 300.0, "max_sky_samples": 64}, "filter:follow-a"),
        ("analyze", ("spiacs",), {"window_s": 120.0, "max_sky_samples": 64}, "filter:follow-c")]
    assert all(q.group == f"igwn:{igwn.upstream_id}" and q.localization_ref == SKYMAP_REF and q.event == igwn
               for q in reqs)
    keys = {p["key"] for p in on(producer, "t.req")}
    assert keys == {igwn.upstream_id.encode()}
    assert {dict(p["headers"])["mma.followup.request_id"] for p in on(producer, "t.req")} == {
        q.request_id.encode() for q in reqs}
    assert [row.followup for row in store.rows if row.filter == "follow-c"] == [
        [{"kind": "analyze", "analyses": ["spiacs", "isgri"], "window_s": 120.0}]]


def test_no_requests_when_followup_is_off(alerts):
    r, producer, _, _ = runner([cf(Follow())], followup=None)
    r.process([msg(0, alerts["igwn"])])
    assert [p["topic"] for p in producer.produced] == ["t.mma.filter.follow"]


def test_a_retraction_accepted_with_a_followup_gives_a_withdraw_request(alerts):
    ret = alerts["retraction"]
    assert json.loads(IGWN_RETRACTION.read_text())["alert_type"] == "RETRACTION"
    out = FollowupOutput(topic="t.req", analyses=("spiacs", "isgri"), params={"window_s": 300.0})
    r, producer, _, _ = runner([cf(Follow())], followup=out)
    r.process([msg(0, ret)])
    (req,) = [FollowupRequest.decode(p["value"]) for p in on(producer, "t.req")]
    assert (req.kind, req.analyses, dict(req.params), req.event.id) == ("withdraw", (), {}, ret.id)
    assert req.group == group_key(ret)


def test_undecodable_records_are_dead_letters_and_the_batch_goes_on(alerts):
    gbm = alerts["gbm"]
    avro = EventCodec().encode(gbm, PROV)  # an mma.events record, not an enriched one
    nan = json.loads(msg(0, gbm).value())
    nan["properties"]["fluence"] = float("nan")  # Python's json writes NaN; RFC 8259 has none
    bad = [FakeMessage(IN, 0, 1, b"\xc3\x01garbage", key=b"x"), FakeMessage(IN, 0, 2, avro),
           FakeMessage(IN, 0, 3, json.dumps({"schema": ENRICHED_SCHEMA, "id": "x"}).encode()),
           FakeMessage(IN, 0, 4, json.dumps(nan).encode())]
    r, producer, store, consumer = runner([cf(BySource())])
    r.process([msg(0, gbm), *bad, msg(5, gbm)])
    dlq = on(producer, "t.mma.dlq")
    assert "NaN is not a JSON value" in dict(dlq[3]["headers"])["mma.dlq.reason"].decode()
    assert len(dlq) == 4 and [d["value"] for d in dlq] == [m.value() for m in bad]
    reasons = [dict(d["headers"]).get("mma.dlq.reason", b"").decode() for d in dlq]
    assert all(x.startswith("filters: enriched event:") for x in reasons), reasons
    assert len(on(producer, "t.mma.filter.by-source")) == 2 and len(store.rows) == 2
    assert consumer.commits == [{(IN, 0): 6}]


def test_ztf_raw_bytes_are_read_once_per_batch_and_only_when_a_filter_asks(alerts):
    ztf = alerts["ztf"]
    with ZTF_MULTI.open("rb") as fh:
        rbs = [rec["candidate"]["rb"] for rec in fastavro.reader(fh)]
    assert len(ztf) == len(rbs) == 3
    threshold = sorted(rbs)[1]  # accepts exactly those at or above the median
    raw = {e.id: f"raw of {e.id}".encode() for e in ztf}
    gbm = alerts["gbm"]
    batch = [msg(0, ztf[0]), msg(1, gbm), msg(2, ztf[1]), msg(3, ztf[2])]

    src = FakeRawSource(raw)
    r, producer, _, _ = runner([cf(ZtfRb(RbCfg(min_rb=threshold)))], raw=RawBatch(src))
    r.process(batch)
    assert src.calls == [[e.id for e in ztf]]  # one read for the whole batch, none for the GCN notice
    accepted = [json.loads(p["value"])["id"] for p in on(producer, "t.mma.filter.ztf-rb")]
    assert accepted == [f"ztf:{e.properties['candid']}" for e, rb in zip(ztf, rbs) if rb >= threshold]
    assert len(accepted) == 2

    src = FakeRawSource(raw)  # no filter reads raw bytes: nothing is read
    r, _, _, _ = runner([cf(ZtfRb(RbCfg(raw=False)))], raw=RawBatch(src))
    r.process(batch)
    assert src.calls == []


def test_ztf_history_is_decoded_once_per_alert_however_many_filters_ask(alerts):
    ztf = alerts["ztf"]
    raw = {e.id: f"raw of {e.id}".encode() for e in ztf}
    decoded = []

    def history(data, event):
        decoded.append((data, event.id))
        return object()

    src = FakeRawSource(raw)
    filters = [cf(ZtfRb(RbCfg(history=True)), f"h{i}") for i in range(3)]
    r, _, _, _ = runner(filters, raw=RawBatch(src), history_decoder=history)
    r.process([msg(i, e) for i, e in enumerate(ztf)])
    assert decoded == [(raw[e.id], e.id) for e in ztf]
    assert len(src.calls) == 1


def test_raw_batch_reads_from_the_asking_alert_on():
    src = FakeRawSource({"ztf:1": b"1", "ztf:2": b"2", "ztf:3": b"3"})
    rb = RawBatch(src)
    rb.begin(["ztf:1", "ztf:2", "ztf:3"])
    assert rb.get("ztf:2") == b"2" and rb.get("ztf:3") == b"3"
    assert src.calls == [["ztf:2", "ztf:3"]]
    assert rb.get("ztf:9") is None and src.calls[-1] == ["ztf:9"]  # not in the batch: read alone


@pytest.mark.parametrize("entries, message", [
    ([{"name": "x", "plugin": "no-such-plugin"}], "[filters] x: no filter plugin 'no-such-plugin' (installed: "),
    ([{"name": "x", "plugin": "followup-rule", "params": {"max_far_hz": -1}}],
     "[filters] x: filter 'followup-rule': bad parameters: max_far_hz: Input should be greater than or equal to 0"),
    ([{"name": "x", "plugin": "followup-rule", "params": {"no_such_key": 1}}],
     "[filters] x: filter 'followup-rule': bad parameters: no_such_key: Extra inputs are not permitted"),
    ([{"name": "x", "plugin": "followup-rule"}, {"name": "x", "plugin": "followup-rule"}],
     "[filters] filters: instance name(s) x given twice"),
], ids=["unknown-plugin", "bad-value", "unknown-key", "duplicate"])
def test_a_bad_filter_configuration_is_a_one_line_start_up_error(tmp_path, entries, message):
    from broker.app import App
    from broker.config import settings_class
    from filters.api import FilterConfigError
    from filters.stage import stages

    settings = settings_class()(home=tmp_path, filters={"filters": entries})
    with pytest.raises(FilterConfigError) as err:
        stages(App(settings))  # fails before any connection is made
    text = str(err.value)
    assert "\n" not in text and text.startswith(message), text


def test_no_loop_when_filters_are_disabled_or_none_configured(tmp_path):
    from broker.app import App
    from broker.config import settings_class
    from filters.stage import stages

    assert stages(App(settings_class()(home=tmp_path, filters={"enabled": False}))) == []
    assert stages(App(settings_class()(home=tmp_path, filters={"filters": []}))) == []


def test_several_acceptances_encode_the_document_once_with_the_same_bytes(alerts):
    """encode_filtered gives, byte for byte, json.dumps(filtered_record(...)) per decision."""
    from filters.stage import encode_filtered, filtered_record

    r, producer, _, _ = runner([cf(BySource()), cf(BySource(), "again"), cf(BySource(SourceCfg(source="igwn")), "gw")])
    m = msg(0, alerts["gbm"])
    r.process([m])
    doc = json.loads(m.value())
    decisions = r.stage.filter_set.evaluate(FilterInput(alerts["gbm"], doc["enrichment"]))
    want = [json.dumps(filtered_record(doc, d), allow_nan=False, default=str).encode() for d in decisions]
    assert encode_filtered(doc, decisions) == want
    without_schema = {k: v for k, v in doc.items() if k != "schema"}  # "schema" appended, not replaced
    assert encode_filtered(without_schema, decisions) == [
        json.dumps(filtered_record(without_schema, d), allow_nan=False, default=str).encode() for d in decisions]
    # what the stage published is the same bytes, less the elapsed time each run measured
    got = [json.loads(p["value"]) for p in producer.produced if p["topic"] in ("t.mma.filter.by-source", "t.mma.filter.again")]
    assert [{**g, "filter": {**g["filter"], "elapsed_ms": 0}} for g in got] == [
        {**json.loads(w), "filter": {**json.loads(w)["filter"], "elapsed_ms": 0}} for w in want[:2]]
    with pytest.raises(ValueError):
        encode_filtered({**doc, "bad": float("nan")}, decisions)


def test_shared_values_are_computed_once_per_alert_by_key_and_a_failure_is_not_kept(alerts):
    calls = []

    def compute(a):
        calls.append(a)
        if len(calls) == 2:
            raise ValueError("once")
        return len(calls)

    one, other = FilterInput(alerts["gbm"]), FilterInput(alerts["gbm"])
    assert one.shared(("t", "1", "n"), compute) == 1 and one.shared(("t", "1", "n"), compute) == 1
    with pytest.raises(ValueError):  # another key: computed, and its failure reaches the asking filter
        one.shared(("t", "1", "m"), compute)
    assert one.shared(("t", "1", "m"), compute) == 3  # not kept: the next filter asking computes again
    assert other.shared(("t", "1", "n"), compute) == 4  # another alert, its own values
    assert calls == [one, one, one, other]


def test_filtered_values_are_the_enriched_bytes_with_the_tag_swapped_and_the_decision_appended(alerts):
    """The same bytes as encoding the parsed record again, without parsing or encoding it."""
    from filters.stage import encode_filtered, filtered_record, filtered_values

    r, _, _, _ = runner([cf(BySource()), cf(BySource(), "again")])
    for event in (alerts["gbm"], *alerts["ztf"]):
        data = msg(0, event).value()
        doc = json.loads(data)
        decisions = r.stage.filter_set.evaluate(FilterInput(event, doc["enrichment"]))
        assert len(decisions) == 2
        want = [json.dumps(filtered_record(doc, d), allow_nan=False, default=str).encode() for d in decisions]
        assert filtered_values(data, decisions) == want == encode_filtered(doc, decisions)
        assert filtered_values(data, decisions[:1]) == want[:1]
    # written otherwise (compact, another "schema" or a "filter" inside): parsed and encoded again
    doc = json.loads(msg(0, alerts["gbm"]).value())
    decisions = r.stage.filter_set.evaluate(FilterInput(alerts["gbm"], doc["enrichment"]))
    inner = {**doc, "enrichment": {**doc["enrichment"], "provenance": {"schema": "x", "filter": "y"}}}
    for other in (json.dumps(doc, separators=(",", ":")).encode(), json.dumps(inner).encode(),
                  json.dumps(doc).encode() + b" "):
        assert filtered_values(other, decisions) == encode_filtered(json.loads(other), decisions)


def test_raw_batch_takes_each_alerts_bytes_when_it_asks_and_closes_what_it_fetched():
    class Lazy(dict):
        def __init__(self, data):
            super().__init__(data)
            self.read, self.closed = [], False

        def get(self, key, default=None):
            self.read.append(key)
            return super().get(key, default)

        def close(self):
            self.closed = True

    fetched = []

    def fetch(ids):
        fetched.append(Lazy({i: i.encode() for i in ids if i != "ztf:3"}))
        return fetched[-1]

    rb = RawBatch(fetch)
    rb.begin(["ztf:1", "ztf:2", "ztf:3"])
    assert rb.get("ztf:1") == b"ztf:1" and fetched[0].read == ["ztf:1"]  # the rest is fetched, not read
    assert rb.get("ztf:3") is None and rb.get("ztf:2") == b"ztf:2"
    assert len(fetched) == 1 and fetched[0].read == ["ztf:1", "ztf:3", "ztf:2"]
    assert (rb.queries, rb.alerts_read) == (1, 2)
    assert not fetched[0].closed
    rb.clear()
    assert fetched[0].closed
