"""HERMES messages: the schema (LCOGT/hermes serializers.py rules), the builders on real
follow-up results, and the reports stage's outbox operations.

The follow-up results are made by the follow-up worker's own analysis path
(``WorkerHandler._analyze``) on the bundled real data, as the worker publishes them:
GRB 230307A (T0 and the Swift-XRT position of the quickstart's request, GCN Circ. 33405
and 33429) detected in the real SPI-ACS light curve, and a real SVOM notice after the end
of the mission (no data).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from broker.event import PointLocalization
from broker.serde import Provenance
from broker.sinks.channels import ChannelError
from broker.sinks.hermes import HermesChannel, hermes_schema, message_errors, validate_message
from broker.sinks.outbox import OutboxEntry
from broker.sources import decode
from followup.cache import DirectoryCache
from followup.messages import FollowupRequest, adhoc_event
from followup.reports.hermes import (
    H_KEV_S, HermesOptions, band_averaged_mjy, coincidence_message, followup_message, retraction_message,
)
from followup.reports.stage import Put, ReportsHandler, Withdraw, load_builders
from followup.worker import FollowupStats, WorkerHandler
from tests.conftest import DATA, ROOT
from tests.unit.test_followup_service import _sources

EXAMPLE = DATA / "hermes" / "hermes_test_message.json"
OPTS = HermesOptions(topic="hermes.test", submitter="mma-broker test", authors="A. Person (Inst.)",
                     public_base_url="https://broker.example.org")


def _result(tmp: Path, request: FollowupRequest) -> dict:
    handler = WorkerHandler(store=None, archive=None, sources=_sources(), cache=DirectoryCache(tmp),
                            results_topic="mma.followup.results",
                            provenance=Provenance("followup.worker", "test", "0" * 16), stats=FollowupStats())
    doc = handler._analyze(request) | {"revision_reason": "requested by hand", "supersedes": None,
                                       "superseded_by": None}
    return json.loads(json.dumps(doc))  # as a subscriber reads it


@pytest.fixture(scope="module")
def grb_doc(tmp_path_factory) -> dict:
    loc = PointLocalization(type="point", ra=60.85935, dec=-75.3788, error_radius=0.00094, containment=0.9)
    event = adhoc_event("2023-03-07T15:44:06.670Z", "GRB 230307A", loc,
                        note="T0: Fermi GBM trigger time, GCN Circ. 33405; position: Swift-XRT, GCN Circ. 33429")
    req = FollowupRequest(kind="analyze", event=event, analyses=("spiacs", "isgri"), params={"window_s": 300.0},
                          requested_by="cli")
    return _result(tmp_path_factory.mktemp("grb"), req)


@pytest.fixture(scope="module")
def no_data_doc(tmp_path_factory) -> dict:
    event = decode((DATA / "voevent/gwcelery/svom_catalog_gcn.xml").read_bytes())[0]
    req = FollowupRequest(kind="analyze", event=event, analyses=("spiacs", "isgri"), params={"window_s": 300.0},
                          requested_by="rule:test")
    return _result(tmp_path_factory.mktemp("nodata"), req)


# ---------------------------------------------------------------------- schema
def test_hermes_example_validates():
    example = json.loads(EXAMPLE.read_text())
    assert message_errors(example) == []
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(hermes_schema())


def _broken(path: str, value=None, delete: bool = False) -> dict:
    msg = json.loads(EXAMPLE.read_text())
    *head, last = path
    node = msg
    for p in head:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return msg


@pytest.mark.parametrize("path, value, delete, where, words", [
    (("title",), None, True, "$", "'title' is a required property"),
    (("title",), "   ", False, "$.title", "allow_blank=False"),
    (("submitter",), True, False, "$.submitter", "CharField"),
    (("data", "targets", 0, "dec"), 95.2, False, "$.data.targets[0].dec", ""),
    (("data", "targets", 0, "dec"), "95.2", False, "$.data.targets[0].dec", "outside -90..90"),
    (("data", "targets", 0, "ra"), "not an angle", False, "$.data.targets[0].ra", ""),
    (("data", "targets", 0, "dec"), None, True, "$.data.targets[0]", "ra and dec together"),
    (("data", "targets", 0, "ra_error_units"), "radians", False, "$.data.targets[0].ra_error_units", "radians"),
    (("data", "photometry", 1, "limiting_brightness"), None, True, "$.data.photometry[1]",
     "brightness or limiting_brightness"),
    (("data", "photometry", 0, "brightness_unit"), "erg/cm2", False, "$.data.photometry[0].brightness_unit", ""),
    (("data", "photometry", 0, "telescope"), "", False, "$.data.photometry[0]", "telescope or instrument"),
    (("data", "photometry", 0, "date_obs"), "99999999", False, "$.data.photometry[0].date_obs", "JD"),
    (("data", "photometry", 0, "target_name"), "GRB 230409C", False, "$.data.photometry[0].target_name",
     "names no target"),
    (("data", "references", 0, "citation"), None, True, "$.data.references[0]", "source and citation together"),
    (("data", "references", 2, "url"), "not a url", False, "$.data.references[2].url", ""),
])
def test_broken_messages_are_refused_with_the_json_path(path, value, delete, where, words):
    msg = _broken(path, value, delete)
    if path[-1] == "telescope":  # both empty: neither telescope nor instrument
        msg["data"]["photometry"][0]["instrument"] = ""
    errors = dict(message_errors(msg))
    assert where in errors, errors
    assert words in errors[where]
    with pytest.raises(ValueError, match=r"HERMES message refused at " + __import__("re").escape(where)):
        validate_message(msg)


def test_cross_field_rules():
    msg = json.loads(EXAMPLE.read_text())
    msg["data"]["targets"].append(dict(msg["data"]["targets"][0]))
    assert "not unique" in dict(message_errors(msg))["$.data.targets[1].name"]
    msg = json.loads(EXAMPLE.read_text())
    msg["data"]["spectroscopy"] = [{"target_name": "GRB 230409B", "date_obs": "2023-04-09", "telescope": "X",
                                    "flux": [1.0, 2.0], "wavelength": [500.0]}]
    assert "differ in length" in dict(message_errors(msg))["$.data.spectroscopy[0].wavelength"]


# ---------------------------------------------------------------------- builders
def _no_host_path(obj) -> None:
    text = json.dumps(obj)
    for path in (str(ROOT), "/tmp/", "/home/", "/work/"):
        assert path not in text, path


def test_detection_of_grb230307a(grb_doc):
    msg = followup_message(grb_doc, OPTS)
    validate_message(msg)
    assert msg["title"] == "GRB 230307A: INTEGRAL follow-up, SPI-ACS detection (automatic)"
    assert (msg["topic"], msg["submitter"], msg["authors"]) == ("hermes.test", "mma-broker test", "A. Person (Inst.)")
    assert msg["message_text"].startswith(grb_doc["summary_text"].rstrip("\n"))
    data = msg["data"]
    assert data["event_id"] == "GRB 230307A"
    (target,) = data["targets"]
    assert (target["ra"], target["dec"], target["ra_error"]) == (60.85935, -75.3788, 0.00094)
    assert target["comments"] == "error radius at 90% containment"
    assert data["photometry"] == []  # a detection, and no attitude in 2023: no physical limits
    spi = data["extra_data"]["integral_spiacs"]
    assert spi["detected"] and spi["best_snr"] == grb_doc["analyses"]["spiacs"]["best_snr"]
    assert spi["fluence_upper_limits_erg_cm2"] == []  # count limits only, no direction
    counts = [r["counts"] for r in spi["count_upper_limits"]]
    assert counts == [r["upper_limit_counts"] for r in grb_doc["analyses"]["spiacs"]["result"]["limits"]]
    assert data["extra_data"]["request_id"] == grb_doc["request_id"]
    plot_url = f"https://broker.example.org/artifacts/sha256/{grb_doc['plot']['sha256']}"
    assert {"source": "mma-broker", "citation": "SPI-ACS light curve (PNG)", "url": plot_url} in data["references"]
    assert plot_url in msg["message_text"]
    _no_host_path(msg)


def test_no_data_result(no_data_doc):
    assert no_data_doc["status"] == "no_data"
    msg = followup_message(no_data_doc, HermesOptions())
    validate_message(msg)
    assert msg["title"].endswith("INTEGRAL follow-up, no data (automatic)")
    assert msg["data"]["photometry"] == [] and msg["data"]["event_id"] == no_data_doc["upstream_id"]
    spi = msg["data"]["extra_data"]["integral_spiacs"]
    assert spi["no_data"] and spi["kind"] == "outside_mission" and "2025-02-28" in spi["reason"]
    assert "Light curve:" not in msg["message_text"]  # no plot, no link
    _no_host_path(msg)


def test_fluence_limits_become_limiting_brightness(grb_doc):
    """Real limit rows: the real GRB 230307A light curve analysed with test_spiacs's three
    sky directions (run_spiacs_analysis). The detection flag is set false here only to
    take the non-detection path of the builder."""
    from followup.bundled import bundled_data_dir
    from followup.lightcurve import read_ogip_lightcurve
    from followup.spiacs import run_spiacs_analysis
    from tests.unit.test_spiacs import MAP

    result = run_spiacs_analysis(read_ogip_lightcurve(bundled_data_dir() / "spiacs_lc_GRB230307A.fits"),
                                 grb_doc["t0"], MAP)
    doc = copy.deepcopy(grb_doc)
    doc["analyses"]["spiacs"]["result"] = json.loads(json.dumps(result.to_dict()))
    doc["analyses"]["spiacs"]["detected"] = False
    msg = followup_message(doc, OPTS)
    validate_message(msg)
    assert "upper limits" in msg["title"]
    spi = msg["data"]["extra_data"]["integral_spiacs"]
    fl = spi["fluence_upper_limits_erg_cm2"]
    assert [r["time_scale_s"] for r in fl] == [row.scale_s for row in result.limits]
    one = next(r for r in fl if r["time_scale_s"] == 1.0)
    expect = result.limit_at(1.0).short_grb_fluence_erg_cm2
    assert one["containment_90"] == expect.containment_90 and one["energy_band_kev"] == [75.0, 2000.0]
    assert one["spectrum"].startswith("short GRB") and one["sigma"] == 3
    assert one["fraction_of_optimal_response"]["best"] == expect.best_response_fraction
    peak = spi["peak_flux_upper_limits_erg_cm2_s"]
    assert len(msg["data"]["photometry"]) == len(peak) > 0
    for row, phot in zip(peak, msg["data"]["photometry"]):
        assert phot["limiting_brightness_unit"] == "mJy" and "brightness" not in phot
        dnu = (2000.0 - 75.0) / H_KEV_S
        assert phot["limiting_brightness"] == pytest.approx(row["containment_90"] / dnu / 1e-26, rel=1e-12)
        assert phot["bandpass"] == "75-2000 keV" and phot["exposure_time"] == row["time_scale_s"]
        assert (phot["telescope"], phot["instrument"], phot["target_name"]) == ("INTEGRAL", "SPI-ACS", "GRB 230307A")


def test_band_averaged_flux_density():
    # 1e-7 erg/cm2/s over 75-2000 keV: dnu = 1925 keV / h = 4.6546e20 Hz -> 2.148e-28 erg/s/cm2/Hz
    assert band_averaged_mjy(1e-7, (75.0, 2000.0)) == pytest.approx(0.021484, rel=1e-4)


def test_failed_withdrawn_and_skipped_results_are_not_messages(grb_doc):
    for change in ({"status": "failed"}, {"kind": "withdrawal"}, {"kind": "skipped"}, {"withdrawn": True}):
        assert followup_message(grb_doc | change, OPTS) is None


def _coincidence() -> dict:
    """A record in the shape of mma.coincidences (checked against its schema), values of
    the MS181101ab x Fermi GBM overlap of docs/coincidences.md; constructed, not recorded."""
    rec = {"schema": "mma.coincidence/1", "id": "gw-grb:igwn:MS181101ab+gcn:fermi:745121685", "kind": "gw-grb",
           "members": [{"role": "gw", "group": "igwn:MS181101ab", "event_id": "igwn:MS181101ab:preliminary:1",
                        "source": "igwn", "mission": "LVK", "upstream_id": "MS181101ab",
                        "t0": "2018-11-01T22:22:46.654Z", "localization": "sha256:" + "a" * 64},
                       {"role": "grb", "group": "gcn:fermi:745121685", "event_id": "gcn:fermi-gbm:745121685:gnd_pos",
                        "source": "gcn", "mission": "Fermi", "upstream_id": "745121685",
                        "t0": "2018-11-01T22:22:48.100Z", "localization": "sha256:" + "b" * 64}],
           "coincident": True, "dt_s": 1.446, "window_s": [-1.0, 5.0], "search": "cbc",
           "overlap_integral": 0.0359578, "temporal_far_hz": 1.1e-12, "joint_far_hz": 3.06e-11, "gw_far_hz": 9.1e-14,
           "ext_rate_hz": 9.83e-6, "overlap_method": "raven", "gw_localization": "multiorder",
           "ext_localization": "flat", "notes": [], "retracted": False, "retracted_by": None,
           "computed_from": "gcn:fermi-gbm:745121685:gnd_pos",
           "provenance": {"component": "enrich", "version": "test", "config_hash": "0" * 16}}
    import jsonschema

    schema = json.loads((ROOT / "broker/schemas/mma/coincidence.json").read_text())
    jsonschema.validate(rec, schema)
    return rec


def test_coincidence_message():
    rec = _coincidence()
    msg = coincidence_message(rec, OPTS)
    validate_message(msg)
    assert msg["title"] == "GW-GRB coincidence: MS181101ab and 745121685 (automatic)"
    assert msg["data"]["event_id"] == "MS181101ab"
    assert "Time offset +1.446 s in the window [-1, 5] s (cbc search)." in msg["message_text"]
    assert "joint FAR 3.06e-11 Hz" in msg["message_text"]
    assert msg["data"]["extra_data"]["coincidence"]["id"] == rec["id"]
    assert coincidence_message(rec | {"retracted": True}, OPTS) is None
    assert coincidence_message(rec | {"coincident": False}, OPTS) is None


def test_retraction_message_cites_the_hop_uuid(grb_doc):
    sent = followup_message(grb_doc, OPTS)
    receipt = {"topic": "hermes.test", "partition": 0, "offset": 7, "hop_uuid": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    msg = retraction_message(sent, receipt, "user:GRB 230307A:retraction", OPTS)
    validate_message(msg)
    assert msg["title"] == f"RETRACTION: {sent['title']}"
    assert {"source": "hop_uuid", "citation": receipt["hop_uuid"]} in msg["data"]["references"]
    assert "offset 7" in msg["message_text"]


# ---------------------------------------------------------------------- channel (no Kafka)
def test_channel_refuses_an_invalid_message_before_sending():
    channel = HermesChannel("kafka://127.0.0.1:9/")  # nothing listens: a send attempt would time out
    bad = _broken(("data", "targets", 0, "dec"), 95.2)
    entry = OutboxEntry(id=1, key="hermes:test:1", channel="hermes", payload=bad, state="sending")
    with pytest.raises(ValueError, match=r"\$\.data\.targets\[0\]\.dec"):
        channel.validate(bad)
    with pytest.raises(ChannelError) as err:
        channel.send(entry)
    assert not err.value.retryable and "$.data.targets[0].dec" in str(err.value)
    assert channel._producer is None  # refused before any client was opened


# ---------------------------------------------------------------------- reports stage
class FakeOutbox:
    """The Outbox methods the stage calls, in memory (keys unique, as in the table)."""

    def __init__(self) -> None:
        self.entries: dict[str, OutboxEntry] = {}

    def put(self, key, channel, payload, *, source_event_id=None, group_key=None, requires_approval=False,
            replaces=None):
        if key not in self.entries:
            self.entries[key] = OutboxEntry(id=len(self.entries) + 1, key=key, channel=channel, payload=payload,
                                            state="pending_approval" if requires_approval else "queued",
                                            source_event_id=source_event_id, group_key=group_key,
                                            requires_approval=requires_approval, replaces=replaces)
        return self.entries[key]

    def withdraw_group(self, group_key, by_event_id):
        withdrawn, sent = [], []
        for k, e in list(self.entries.items()):
            if e.group_key != group_key:
                continue
            if e.state in ("queued", "pending_approval", "failed"):
                self.entries[k] = e = dataclasses.replace(e, state="withdrawn")
                withdrawn.append(e)
            elif e.state == "sent":
                sent.append(e)
        return withdrawn, sent


class _Msg:
    def __init__(self, topic: str, value: dict) -> None:
        self._t, self._v = topic, json.dumps(value).encode()

    def topic(self):
        return self._t

    def value(self):
        return self._v


def _handler(outbox, builders=None):
    return ReportsHandler(outbox=outbox, topics={"r": "followup", "c": "coincidence", "o": "optical"},
                          builders=builders if builders is not None else load_builders({"hermes"}), options=OPTS)


def test_stage_puts_entries_and_withdraws_with_retraction(grb_doc):
    outbox = FakeOutbox()
    h = _handler(outbox)
    handled = [h.handle(_Msg("r", grb_doc)), h.handle(_Msg("r", grb_doc)), h.handle(_Msg("c", _coincidence()))]
    h.write(handled)
    key = f"hermes:followup:{grb_doc['request_id']}"
    coinc_key = f"hermes:coincidence:{_coincidence()['id']}:{_coincidence()['computed_from']}"
    assert sorted(outbox.entries) == sorted([key, coinc_key])  # the same result twice: one entry
    entry = outbox.entries[key]
    assert entry.group_key == "user:GRB 230307A" and entry.source_event_id == grb_doc["event_id"]
    assert entry.payload == followup_message(grb_doc, OPTS)

    # the result was sent; then the trigger is retracted: a retraction message follows
    receipt = {"topic": "hermes.test", "partition": 0, "offset": 3, "hop_uuid": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    outbox.entries[key] = OutboxEntry(**{**entry.__dict__, "state": "sent", "receipt": receipt})
    withdrawal = {"kind": "withdrawal", "status": "withdrawn", "group": "user:GRB 230307A",
                  "retracted_by": "user:GRB 230307A:retraction", "event_id": "user:GRB 230307A:retraction",
                  "upstream_id": "GRB 230307A"}
    handled = h.handle(_Msg("r", withdrawal))
    assert handled.write == [Withdraw("user:GRB 230307A", "user:GRB 230307A:retraction",
                                      "its source event was retracted (user:GRB 230307A:retraction)")]
    h.write([handled])
    retraction = outbox.entries[f"hermes:retraction:{key}"]
    validate_message(retraction.payload)
    assert retraction.group_key is None
    assert {"source": "hop_uuid", "citation": receipt["hop_uuid"]} in retraction.payload["data"]["references"]

    # the coincidence is retracted before it was sent: withdrawn, no retraction message
    h.write([h.handle(_Msg("c", _coincidence() | {"retracted": True, "retracted_by": "igwn:MS181101ab:retraction:3"}))])
    assert outbox.entries[coinc_key].state == "withdrawn"
    assert f"hermes:retraction:{coinc_key}" not in outbox.entries


def test_withdrawal_retracts_a_sent_gcn_notice_with_its_own_notice(grb_doc):
    """The GCN notice has a retraction (alert_type retraction): put when the group's notice
    went out, not when it was withdrawn unsent (found by tests/integration/test_publish_e2e.py:
    the stage never put one)."""
    from broker.sinks.gcn import validate_notice

    notice_key = f"gcn-notice:followup:{grb_doc['request_id']}"
    withdrawal = {k: grb_doc[k] for k in ("schema", "event_id", "source", "upstream_id", "mission", "instrument",
                                          "alert_type", "t0", "created_at", "provenance", "localization", "group")}
    withdrawal |= {"kind": "withdrawal", "status": "withdrawn", "request_id": "e" * 32,
                   "withdrawn_request_ids": [grb_doc["request_id"]], "retracted_by": "user:GRB 230307A:retraction",
                   "summary_text": "retracted"}
    retraction_key = f"gcn-notice:followup:{'e' * 32}"
    for sent in (False, True):
        outbox = FakeOutbox()
        h = _handler(outbox, load_builders({"hermes", "gcn-notice"}))
        h.write([h.handle(_Msg("r", grb_doc))])
        assert outbox.entries[notice_key].group_key == grb_doc["group"]
        if sent:
            outbox.entries[notice_key] = dataclasses.replace(outbox.entries[notice_key], state="sent")
        (op,) = h.plan("followup", withdrawal)
        assert isinstance(op, Withdraw) and [p.key for p in op.retractions] == [retraction_key]
        h.write([h.handle(_Msg("r", withdrawal))])
        if not sent:  # nothing went out: withdrawn, nothing to retract
            assert outbox.entries[notice_key].state == "withdrawn" and retraction_key not in outbox.entries
            continue
        entry = outbox.entries[retraction_key]
        validate_notice(entry.payload)
        assert entry.payload["alert_type"] == "retraction" and entry.group_key is None
        assert entry.payload["withdrawn_followup_ids"] == [grb_doc["request_id"]]
        assert entry.source_event_id == "user:GRB 230307A:retraction" and h.stats.retractions == 1


def test_superseding_result_replaces_the_earlier_entry(grb_doc):
    doc = grb_doc | {"request_id": "f" * 32, "supersedes": grb_doc["request_id"]}
    (put,) = _handler(FakeOutbox()).plan("followup", doc)
    assert put == Put(f"hermes:followup:{'f' * 32}", "hermes", followup_message(doc, OPTS), doc["event_id"],
                      "user:GRB 230307A", f"hermes:followup:{grb_doc['request_id']}")


def test_missing_builders_are_skipped_with_a_log_line(caplog, monkeypatch):
    import importlib

    real = importlib.import_module

    def no_gcn(name, *a, **k):
        if name in ("followup.reports.gcn", "followup.reports.tns"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_gcn)
    with caplog.at_level("WARNING", logger="followup.reports.stage"):
        builders = load_builders({"hermes", "gcn-notice", "gcn-circular", "tns"})
    assert sorted(builders) == ["hermes:coincidence", "hermes:followup", "hermes:optical"]
    assert sum("gets no entries" in r.getMessage() for r in caplog.records) == 3


def test_optical_topics_follow_the_filter_instances():
    from broker.config import load_settings
    from followup.reports.stage import optical_topics

    s = load_settings()
    assert optical_topics(s) == ["mma.filter.optical-counterpart"]  # not a default filter: its topic anyway
    entries = [*s.filters.filters, {"name": "ztf-near-gw", "plugin": "optical-counterpart"}]
    s2 = s.model_copy(update={"filters": s.filters.model_copy(update={"filters": [
        e if not isinstance(e, dict) else type(s.filters.filters[0]).model_validate(e) for e in entries]})})
    assert optical_topics(s2) == ["mma.filter.optical-counterpart", "mma.filter.ztf-near-gw"]


def test_a_channel_that_does_not_publish_a_record_or_fails_leaves_the_others(grb_doc):
    """NotPublishable (GCN's "nothing for GCN") skips that channel; a builder's bug is
    logged and counted; neither dead-letters the record nor stops HERMES."""
    from followup.reports.gcn import NotPublishable

    def no_circular(doc, event, settings):
        raise NotPublishable("no SPI-ACS data; nothing for GCN")

    def broken_notice(doc, event):
        raise KeyError("upper_limits")

    builders = load_builders({"hermes"}) | {"gcn-circular:followup": no_circular, "gcn-notice:followup": broken_notice}
    outbox = FakeOutbox()
    h = ReportsHandler(outbox=outbox, topics={"r": "followup"}, builders=builders, options=OPTS,
                       load_event=lambda event_id: None)
    handled = h.handle(_Msg("r", grb_doc))
    # the GCN messages are built in the write, after the HERMES entry is put
    assert [(op.channel, op.payload is None) for op in handled.write] == [
        ("hermes", False), ("gcn-circular", True), ("gcn-notice", True)]
    assert h.stats.not_publishable == {} and h.stats.build_errors == {}
    h.write([handled])
    h.committed([handled], [])
    assert [e.channel for e in outbox.entries.values()] == ["hermes"]
    assert h.stats.entries == 1 and h.stats.by_channel == {"hermes": 1}
    assert h.stats.not_publishable == {"gcn-circular": 1} and h.stats.build_errors == {"gcn-notice": 1}
    assert "not for a channel: gcn-circular 1; builder errors: gcn-notice 1" in h.stats.summary()


def test_the_gcn_messages_of_a_result_are_built_after_its_hermes_entry_and_before_a_withdrawal(grb_doc):
    """The deferred builders run in the write: after the batch's HERMES entry was put
    (a HERMES message never waits for the event query and the GCN schema), and before a
    withdrawal later in the same batch, which therefore withdraws them too."""
    outbox, calls = FakeOutbox(), []

    def notice(doc, event):
        calls.append(("build gcn-notice", [e.channel for e in outbox.entries.values()], event))
        return {"notice": doc["request_id"]}

    def load_event(event_id):
        calls.append(("load event", event_id))
        return "the event"

    builders = load_builders({"hermes"}) | {"gcn-notice:followup": notice}
    h = ReportsHandler(outbox=outbox, topics={"r": "followup"}, builders=builders, options=OPTS,
                       load_event=load_event)
    result = h.handle(_Msg("r", grb_doc))
    assert calls == []  # nothing loaded or built for GCN while handling
    withdrawal = {"kind": "withdrawal", "event_id": grb_doc["event_id"], "request_id": grb_doc["request_id"],
                  "group": grb_doc.get("group") or grb_doc["upstream_id"], "upstream_id": grb_doc["upstream_id"],
                  "retracted_by": "gcn:retraction"}
    gone = h.handle(_Msg("r", withdrawal))  # builds its retraction notice at once (as before)
    calls.clear()
    h.write([result, gone])
    h.committed([result, gone], [])
    assert calls == [("load event", grb_doc["event_id"]), ("build gcn-notice", ["hermes"], "the event")]
    states = {e.channel: e.state for e in outbox.entries.values()}
    assert states == {"hermes": "withdrawn", "gcn-notice": "withdrawn"}
    assert h.stats.entries == 2 and h.stats.withdrawals == 1


@pytest.mark.parametrize("bad_id", [None, "", 12, "x" * 2000])
def test_a_coincidence_record_without_a_usable_id_is_a_dead_letter_not_an_outbox_key(bad_id):
    from broker.errors import DecodeError

    h = _handler(FakeOutbox())
    with pytest.raises(DecodeError, match="coincidence record without a usable id"):
        h.handle(_Msg("c", _coincidence() | {"id": bad_id}))
    assert h.handle(_Msg("c", _coincidence())).write  # a good one still plans its message
