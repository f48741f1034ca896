"""Lanes (:mod:`broker.lanes`): enrich and filters as one loop per group of Event sources.

A lane's loop picks its records by their ``mma.event.id`` header alone; the others are
skipped undecoded, their offsets committed with the loop's own, and only its sources'
Events are handled. Across lanes, a trigger–optical pair is found by at least one loop
whatever the interleaving (the optical lane asks again after storing its candidates) and,
when both find it, both write the same record (same id, same ``computed_from``).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from broker.config import Settings
from broker.enrich.config import EnrichSettings
from broker.errors import BrokerError, DecodeError
from broker.kafka import Outgoing
from broker.lanes import Lane, check_lanes, lanes_of
from broker.pipeline.enrich import EnrichHandler
from broker.pipeline.runner import BaseStage, Handled, StageRunner
from tests.unit.test_enrich_stage import (
    CODEC,
    GW_JSON,
    GW_RETRACTION,
    PROV,
    MemArchive,
    MemGroups,
    MemLocalizations,
    Msg,
    _candidate,
    _peak,
    docs,
)
from tests.unit.test_ingest_stage import FakeConsumer, FakeMessage, FakeProducer

LANES = {"notices": ["*"], "optical": ["ztf", "lsst"]}


# ------------------------------------------------------------------ settings
def test_lanes_setting_is_validated():
    assert Settings().lanes == {} and lanes_of(Settings()) == [Lane(None)]
    s = Settings(lanes=LANES)
    notices, optical = lanes_of(s)
    assert (notices.loop("enrich"), optical.loop("filters")) == ("enrich.notices", "filters.optical")
    assert notices.takes("gcn") and notices.takes("igwn") and notices.takes(None) and not notices.takes("ztf")
    assert optical.takes("lsst") and not optical.takes("gcn") and not optical.takes(None)
    assert [lane.name for lane in lanes_of(s, ["optical"])] == ["optical"]
    with pytest.raises(BrokerError, match="not a lane"):
        lanes_of(s, ["fast"])
    with pytest.raises(BrokerError, match="no \\[lanes\\]"):
        lanes_of(Settings(), ["optical"])
    for bad, why in (({"a": ["ztf"]}, "exactly one lane"), ({"a": ["*"], "b": ["*", "ztf"]}, "exactly one lane"),
                     ({"a": ["*", "ztf"], "b": ["ztf"]}, "one lane per source"), ({"a": []}, "no source"),
                     ({"A b": ["*"]}, "lane name"), ({"a": ["*"], "b": ["Z TF"]}, "not a source name")):
        with pytest.raises(ValueError, match=why):
            check_lanes(bad)


def test_only_a_lane_without_a_survey_stream_hands_records_over_at_once():
    notices, optical = lanes_of(Settings(lanes=LANES))
    assert notices.fill_s(0.02) == 0.0 and optical.fill_s(0.02) == 0.02
    assert lanes_of(Settings())[0].fill_s(0.02) == 0.02  # one lane for everything: the ZTF stream too
    # a "*" lane that takes ZTF (no other lane names it) keeps its batch windows; a GCN-only lane does not
    rest, gcn = lanes_of(Settings(lanes={"main": ["*"], "fast": ["gcn"]}))
    assert rest.fill_s(0.02) == 0.02 and gcn.fill_s(0.02) == 0.0


def _msg(offset: int, event_id: str | None, partition: int = 0, value: bytes = b"not an event") -> FakeMessage:
    headers = [("content-type", b"application/json")]
    if event_id is not None:
        headers.append(("mma.event.id", event_id.encode()))
    return FakeMessage("mma.events", partition, offset, value, headers=headers)


def test_a_lane_reads_the_source_from_the_header_only():
    notices, optical = lanes_of(Settings(lanes=LANES))
    assert optical.accept(_msg(0, "ztf:1234")) and not notices.accept(_msg(0, "ztf:1234"))
    assert notices.accept(_msg(0, "gcn:swift:1")) and not optical.accept(_msg(0, "gcn:swift:1"))
    for odd in (None, "no-colon", ":empty-source"):  # the '*' lane takes what names no source
        assert notices.accept(_msg(0, odd)) and not optical.accept(_msg(0, odd))
    assert Lane(None).accept_fn() is None  # the default lane reads no header at all


# ------------------------------------------------------------------ the runner
class Recorder(BaseStage):
    """Decodes nothing: a record it is handed must be of its lane (else it fails loudly)."""

    name = "enrich"

    def __init__(self, lane: Lane) -> None:
        self.lane, self.seen = lane, []

    def handle(self, msg):
        eid = dict(msg.headers())["mma.event.id"].decode()
        if not self.lane.takes(eid.split(":", 1)[0]):
            raise AssertionError(f"{eid} handed to lane {self.lane.name}")
        self.seen.append(eid)
        return Handled(msg, [Outgoing("mma.events.enriched", eid.encode(), b"{}", [])])


def _lane_runner(lane: Lane, batches, **kw):
    log: list = []
    consumer, producer = FakeConsumer(log, batches=batches), FakeProducer(log)
    runner = StageRunner(Recorder(lane), consumer, producer, dlq_topic="mma.dlq", batch_size=100,
                         accept=lane.accept_fn(), **kw)
    stop = threading.Event()
    consumer.stop = stop
    return runner, consumer, producer, stop


def test_each_lane_handles_its_sources_and_commits_every_offset():
    batch = [_msg(0, "ztf:1"), _msg(1, "gcn:swift:7"), _msg(2, "ztf:2"), _msg(0, "igwn:S1", partition=1),
             _msg(3, "lsst:9")]
    for lane, want in zip(lanes_of(Settings(lanes=LANES)), (["gcn:swift:7", "igwn:S1"], ["ztf:1", "ztf:2", "lsst:9"])):
        runner, consumer, producer, stop = _lane_runner(lane, [list(batch)])
        runner.run(stop)
        assert runner.stage.seen == want
        assert [r["key"].decode() for r in producer.produced] == want  # outputs for its sources only
        assert consumer.commits == [{("mma.events", 0): 4, ("mma.events", 1): 1}]  # skipped ones too
        assert runner.stats.skipped == len(batch) - len(want) and runner.stats.messages == len(want)


class TxnProducer:
    """A transactional producer noting each committed transaction's records and offsets."""

    def __init__(self) -> None:
        self.txns: list[dict] = []

    def init_transactions(self, timeout=None):
        pass

    def begin_transaction(self):
        self.cur = {"keys": [], "offsets": None}

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self.cur["keys"].append(key.decode())

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0

    def send_offsets_to_transaction(self, tps, metadata, timeout=None):
        self.cur["offsets"] = {(tp.topic, tp.partition): tp.offset for tp in tps}

    def commit_transaction(self, timeout=None):
        self.txns.append(self.cur)


def test_skipped_offsets_go_into_the_transaction_of_the_lanes_outputs():
    class Consumer(FakeConsumer):
        def consumer_group_metadata(self):
            return object()

    optical = lanes_of(Settings(lanes=LANES))[1]
    batch = [_msg(0, "gcn:swift:7"), _msg(1, "ztf:1"), _msg(2, "igwn:S1")]
    consumer, producer = Consumer([], batches=[batch]), TxnProducer()
    runner = StageRunner(Recorder(optical), consumer, producer, dlq_topic="mma.dlq", batch_size=100,
                         accept=optical.accept_fn(), transactional=True)
    stop = threading.Event()
    consumer.stop = stop
    runner.run(stop)
    assert producer.txns == [{"keys": ["ztf:1"], "offsets": {("mma.events", 0): 3}}]
    assert consumer.commits == []  # nothing committed outside the transaction


def test_a_batch_of_other_lanes_records_waits_to_be_committed_with_the_next_work():
    notices = lanes_of(Settings(lanes=LANES))[0]
    ztf_only = [[_msg(0, "ztf:1"), _msg(1, "ztf:2")], [_msg(2, "ztf:3")], [_msg(3, "gcn:swift:7"), _msg(4, "ztf:4")]]
    runner, consumer, producer, stop = _lane_runner(notices, ztf_only, skip_commit_s=60.0)
    runner.run(stop)
    assert runner.stage.seen == ["gcn:swift:7"]
    assert consumer.commits == [{("mma.events", 0): 5}]  # no transaction or commit of its own for skips
    # ... unless skip_commit_s has passed: then the skipped offsets alone are committed
    runner, consumer, producer, stop = _lane_runner(notices, [[_msg(0, "ztf:1")], [_msg(1, "ztf:2")]],
                                                    skip_commit_s=0.0)
    runner.run(stop)
    assert runner.stage.seen == [] and producer.produced == []
    assert consumer.commits == [{("mma.events", 0): 1}, {("mma.events", 0): 2}]


def test_without_lanes_every_record_is_handled_and_a_bad_one_is_still_a_dead_letter():
    class Strict(Recorder):
        def handle(self, msg):
            raise DecodeError("enrich: not an Event")

    log: list = []
    consumer, producer = FakeConsumer(log, batches=[[_msg(0, "ztf:1"), _msg(1, None)]]), FakeProducer(log)
    runner = StageRunner(Strict(Lane(None)), consumer, producer, dlq_topic="mma.dlq", batch_size=100,
                         accept=Lane(None).accept_fn())
    stop = threading.Event()
    consumer.stop = stop
    runner.run(stop)
    assert [r["topic"] for r in producer.produced] == ["mma.dlq", "mma.dlq"] and runner.stats.skipped == 0


# ------------------------------------------------------------------ across lanes
class TimedArchive(MemArchive):
    """MemArchive with ``ingested_at`` (the order Events were archived in)."""

    def __init__(self):
        super().__init__()
        self.at: dict[str, datetime] = {}
        self.t = datetime(2026, 11, 30, tzinfo=timezone.utc)

    def archived(self, ev):
        self.events.setdefault(ev.id, ev)
        self.t += timedelta(seconds=1)
        self.at.setdefault(ev.id, self.t)

    def get(self, event_id):
        e = self.events.get(event_id)
        return None if e is None else type("Rec", (), {"event": e, "ingested_at": self.at.get(event_id)})()


def _two_lanes():
    """Two enrich loops (notices, optical) over one set of stores, as two lane processes over one database."""
    locs, groups, archive = MemLocalizations(), MemGroups(), TimedArchive()
    out = []
    for recheck in (False, True):
        out.append(EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(),
                                 enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences",
                                 provenance=PROV, index_positions=locs.index, cross_lane=True,
                                 recheck_optical=recheck))
    return (*out, locs, archive)


def _gw_events(archive):
    gw = archive.add(GW_JSON.read_bytes())
    for ev in gw:
        archive.archived(ev)
    return gw


def _peak_of(locs, archive, handler):
    """(ra, dec) of the GW map's densest tile (the map stored as the notices lane stores it)."""
    gw = [e for e in archive.events.values() if e.source == "igwn"][0]
    locs.put(gw.id, handler.extract(gw, archive.raws[gw.id]))
    return _peak(type("S", (), {"mem": (locs, None, archive)})())


def _pairs(*handled):
    return [(d["id"], d["computed_from"]) for d in docs(list(handled), "mma.coincidences")]


def test_a_trigger_stored_while_the_candidate_is_in_flight_is_found_once():
    """The candidate is handled (no trigger yet), then the GW is handled by the other lane
    (the candidate not stored yet: its region holds nothing), then the candidate's batch
    is written: the optical lane's second look finds the pair."""
    notices, optical, locs, archive = _two_lanes()
    (gw,) = _gw_events(archive)
    ra, dec = _peak_of(locs, archive, notices)
    cand = _candidate(1, 1.0, ra, dec)
    archive.archived(cand)
    h_cand = optical.handle(Msg(CODEC.encode(cand, PROV)))
    assert docs([h_cand], "mma.coincidences") == []
    h_gw = notices.handle(Msg(CODEC.encode(gw, PROV)))
    assert docs([h_gw], "mma.coincidences") == []  # the candidate's position is not stored yet
    optical.write([h_cand])
    assert _pairs(h_cand) == [("gw-optical:igwn:MS181101ab+ztf:ZTF18test1", cand.id)]
    (enr,) = docs([h_cand], "mma.events.enriched")  # listed for the optical-counterpart filter
    assert enr["enrichment"]["coincidences"] == ["gw-optical:igwn:MS181101ab+ztf:ZTF18test1"]
    assert enr["enrichment"]["coincidence_records"][0]["computed_from"] == cand.id
    assert h_cand.outputs[-1].key == b"gw-optical:igwn:MS181101ab+ztf:ZTF18test1"
    optical.write([h_cand])  # written again (a bisected or repeated write): not added twice
    assert len(_pairs(h_cand)) == 1


def both_lanes_find(notices, optical, locs, archive):
    """Play "both lanes find the pair": the optical lane handles and writes the candidate
    while the notices lane handles the GW (between its group's store and its region
    query). Returns the GW's and the candidate's Handled, the GW and the candidate."""
    (gw,) = _gw_events(archive)
    ra, dec = _peak_of(locs, archive, notices)
    cand = _candidate(1, 1.0, ra, dec)
    archive.archived(cand)
    found = {}
    region = locs.events_in_region

    def in_between(*a, **k):
        if "optical" not in found:
            h = optical.handle(Msg(CODEC.encode(cand, PROV)))
            optical.write([h])
            found["optical"] = h
        return region(*a, **k)

    locs.events_in_region = in_between
    h_gw = notices.handle(Msg(CODEC.encode(gw, PROV)))
    locs.events_in_region = region
    return h_gw, found["optical"], gw, cand


def test_a_pair_both_lanes_find_is_the_same_record():
    """The optical lane handles and stores the candidate while the GW is being handled
    (after its group was stored, before its region query): both loops find the pair and
    name the same version (the member archived last)."""
    notices, optical, locs, archive = _two_lanes()
    region = locs.events_in_region
    h_gw, h_cand, gw, cand = both_lanes_find(notices, optical, locs, archive)
    both = _pairs(h_gw) + _pairs(h_cand)
    assert both == [("gw-optical:igwn:MS181101ab+ztf:ZTF18test1", cand.id)] * 2
    # without lanes the version is the Event whose arrival found the pair (the GW here)
    single = EnrichHandler(localizations=locs, groups=notices.groups, archive=archive, settings=EnrichSettings(),
                           enriched_topic="e", coincidences_topic="mma.coincidences", provenance=PROV)
    locs.events_in_region = region
    assert _pairs(single.handle(Msg(CODEC.encode(gw, PROV)))) == [("gw-optical:igwn:MS181101ab+ztf:ZTF18test1",
                                                                    gw.id)]


def test_a_trigger_retracted_while_the_candidate_is_in_flight_leaves_no_live_pair():
    """The candidate is handled while its GW is live (the pair is found), then the other
    lane handles the GW's retraction (the candidate not stored yet: the retraction's
    region query does not see it), then the candidate's batch is written: the pair is
    published retracted, by the retraction, in the record and in the enriched record."""
    notices, optical, locs, archive = _two_lanes()
    (gw,) = _gw_events(archive)
    ra, dec = _peak_of(locs, archive, notices)
    assert docs([notices.handle(Msg(CODEC.encode(gw, PROV)))], "mma.coincidences") == []
    cand = _candidate(1, 1.0, ra, dec)
    archive.archived(cand)
    h_cand = optical.handle(Msg(CODEC.encode(cand, PROV)))
    assert [d["retracted"] for d in docs([h_cand], "mma.coincidences")] == [False]
    (retraction,) = [e for e in archive.add(GW_RETRACTION.read_bytes()) if e.is_retraction]
    archive.archived(retraction)
    h_ret = notices.handle(Msg(CODEC.encode(retraction, PROV)))
    assert docs([h_ret], "mma.coincidences") == []  # the candidate's position is not stored yet
    optical.write([h_cand])
    (c,) = docs([h_cand], "mma.coincidences")
    assert c["retracted"] is True and c["retracted_by"] == c["computed_from"] == retraction.id
    (enr,) = docs([h_cand], "mma.events.enriched")
    assert [r["retracted"] for r in enr["enrichment"]["coincidence_records"]] == [True]


def test_a_lane_of_any_survey_source_is_a_survey_lane():
    """fill_s and the enrich factory's second look for triggers (recheck_optical) ask the
    same question: an LSST-only optical lane is one too, not only a lane holding ZTF."""
    s = Settings(lanes={"notices": ["*"], "rubin": ["lsst"], "ztf": ["ztf"]})
    by = {lane.name: lane for lane in lanes_of(s)}
    assert [by[n].takes_survey() for n in ("notices", "rubin", "ztf")] == [False, True, True]
    assert [by[n].fill_s(0.02) for n in ("notices", "rubin", "ztf")] == [0.0, 0.02, 0.02]
    assert Lane(None).takes_survey()  # the single default lane takes every source
