"""TNS AT reports (followup/reports/tns.py) built from real ZTF alerts and their real history.

The filtered records are what the filter stage writes for ``optical-counterpart``: the
real alert enriched by the enrich stage's own handler (in-memory stores) next to the
real Swift BAT-GUANO notice moved to 12 h before the candidate's first detection and
0.1 deg from it (made for these tests: no real coincident pair is bundled), then the
filter's decision (filters.stage.filtered_record). Expected values are computed here
from the alert with fastavro and astropy, not with the decoders under test.
"""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache

import fastavro
import pytest
from astropy.time import Time

from broker.enrich.coinc_settings import CoincidenceSettings
from broker.enrich.config import EnrichSettings
from broker.enrich.enriched import decode_enriched
from broker.pipeline.enrich import EnrichHandler
from broker.sinks.config import PublishSettings, TnsSettings
from broker.sinks.tns import validate_report
from filters.api import FilterInput
from filters.engine import ConfiguredFilter, FilterSet
from filters.registry import filter_class
from filters.stage import filtered_record
from filters.ztf_history import decode_history
from followup.reports.tns import tns_report, tns_values
from tests.conftest import DATA
from tests.unit.test_enrich_stage import CODEC, PROV, MemArchive, MemGroups, MemLocalizations, Msg

SWIFT = "gcn/gcn-schema/gcn/notices/swift/bat/guano.loc_arc_min.example.json"
NEW = "ztf/kowalski/20200202/1127561442115015003.avro"  # ZTF20aalseuk: one detection, 31 upper limits
RISING = "ztf/kowalski/20200202/1127561444715015009.avro"  # ZTF20aakyoez: 17 detections over 3 days, 51 limits
SETTINGS = {"reporting_group": "82", "reporter": "A. Person (Inst.) on behalf of mma-broker"}


def _t0_before(jd: float, hours: float = 12.0) -> str:
    return Time(jd - hours / 24.0, format="jd", scale="utc").isot + "Z"


@lru_cache(maxsize=None)
def _alert(rel: str) -> dict:
    with open(DATA / rel, "rb") as fh:
        return next(fastavro.reader(fh))


@lru_cache(maxsize=None)
def counterpart(rel: str) -> tuple[str, bytes]:
    """(filtered record JSON, raw alert) of the alert ``rel`` accepted by optical-counterpart."""
    alert = _alert(rel)
    c = alert["candidate"]
    dets = [p for p in alert["prv_candidates"] if p["candid"] is not None] + [c]
    first_jd = min(p["jd"] for p in dets)
    notice = json.loads((DATA / SWIFT).read_text())
    notice.update(trigger_time=_t0_before(first_jd), ra=c["ra"], dec=c["dec"] + 0.1)
    settings = EnrichSettings(coincidences=CoincidenceSettings(optical_days=5.0))
    locs, groups, archive = MemLocalizations(), MemGroups(), MemArchive()
    stage = EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=settings,
                          enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences",
                          provenance=PROV, index_positions=locs.index)
    raw = (DATA / rel).read_bytes()
    values = []
    for payload in (json.dumps(notice).encode(), raw):
        for ev in archive.add(payload):
            h = stage.handle(Msg(CODEC.encode(ev, PROV)))
            if h.write is not None:
                stage.write([h])
            stage.committed([h], [])
            values += [o.value for o in h.outputs if o.topic == "mma.events.enriched"]
    enriched = decode_enriched(values[-1])
    fs = FilterSet([ConfiguredFilter("optical-counterpart", filter_class("optical-counterpart").from_params({}))])
    (decision,) = fs.evaluate(FilterInput(enriched.event, enriched.enrichment, raw=raw))
    assert decision.accepted, decision
    return json.dumps(filtered_record(json.loads(values[-1]), decision), default=str), raw


def record(rel: str) -> dict:
    return json.loads(counterpart(rel)[0])


def tns_time(jd: float) -> str:
    return Time(jd, format="jd", scale="utc", precision=3).iso  # rounded to the millisecond


@pytest.mark.parametrize("rel", [NEW, RISING])
def test_report_from_a_real_alert_and_its_history(rel):
    alert = _alert(rel)
    c = alert["candidate"]
    positive = [p for p in alert["prv_candidates"] + [c]
                if p["candid"] is not None and p["isdiffpos"] in ("t", "1") and p["magpsf"] is not None]
    positive.sort(key=lambda p: p["jd"])
    first = positive[0]
    limits = [p for p in alert["prv_candidates"] if p["candid"] is None and p["diffmaglim"] is not None
              and p["jd"] < first["jd"]]
    last = max(limits, key=lambda p: p["jd"])
    rec, raw = counterpart(rel)
    rep = tns_report(json.loads(rec), decode_history(raw), SETTINGS)["at_report"]["0"]

    assert rep["internal_name"] == alert["objectId"]
    assert rep["discovery_datetime"] == tns_time(first["jd"])
    points = rep["photometry"]["photometry_group"]
    assert [p["obsdate"] for p in points.values()] == [tns_time(p["jd"]) for p in positive]
    assert [p["flux"] for p in points.values()] == [round(p["magpsf"], 3) for p in positive]
    assert [p["flux_error"] for p in points.values()] == [round(p["sigmapsf"], 3) for p in positive]
    assert [p["limiting_flux"] for p in points.values()] == [round(p["diffmaglim"], 3) for p in positive]
    assert [p["filter_value"] for p in points.values()] == [{1: "110", 2: "111", 3: "112"}[p["fid"]] for p in positive]
    assert {p["instrument_value"] for p in points.values()} == {"196"}
    assert {p["flux_units"] for p in points.values()} == {"1"}  # ABMag
    assert points[str(len(points) - 1)]["exptime"] == c["exptime"] == 30.0
    nd = rep["non_detection"]
    assert nd["obsdate"] == tns_time(last["jd"]) and nd["limiting_flux"] == round(last["diffmaglim"], 3)
    assert nd["filter_value"] == {1: "110", 2: "111", 3: "112"}[last["fid"]]
    # mean position of the detections, within 1 mas; error 0.36" (the Event's error circle)
    ra = math.degrees(math.atan2(sum(math.cos(math.radians(p["dec"])) * math.sin(math.radians(p["ra"])) for p in positive),
                                 sum(math.cos(math.radians(p["dec"])) * math.cos(math.radians(p["ra"])) for p in positive)))
    assert rep["ra"]["value"] == pytest.approx(ra % 360, abs=3e-7)
    assert rep["dec"]["value"] == pytest.approx(sum(p["dec"] for p in positive) / len(positive), abs=3e-7)
    assert rep["ra"]["error"] == rep["dec"]["error"] == 0.36 and rep["ra"]["units"] == "arcsec"
    assert (rep["reporting_group_id"], rep["discovery_data_source_id"], rep["at_type"]) == ("82", "48", "1")
    assert "Swift trigger 694215995" in rep["remarks"] and "event group gcn:swift:694215995" in rep["remarks"]
    assert f"grb-optical:gcn:swift:694215995+ztf:{alert['objectId']}" in rep["remarks"]
    assert "0.50 d after T0" in rep["remarks"] and "optical-counterpart filter" in rep["remarks"]


def test_the_two_alerts_differ_where_their_histories_do():
    """ZTF20aalseuk: one detection, its last limit 2 min earlier in the same night (r);
    ZTF20aakyoez: 17 positive detections and an upper limit between two of them that
    is *not* the last non-detection (it comes after the first detection)."""
    a = tns_report(record(NEW), decode_history(counterpart(NEW)[1]), SETTINGS)["at_report"]["0"]
    b = tns_report(record(RISING), counterpart(RISING)[1], SETTINGS)["at_report"]["0"]  # raw bytes work too
    assert len(a["photometry"]["photometry_group"]) == 1 and len(b["photometry"]["photometry_group"]) == 17
    assert a["non_detection"]["obsdate"] == "2020-02-02 13:26:29.996"  # measured: jd 2458882.0600694
    assert b["non_detection"]["obsdate"] < b["discovery_datetime"] < "2020-02-01"
    assert "17 detections" in b["remarks"] and "1 detection in" in a["remarks"]


def test_settings_objects_and_names():
    rec, raw = counterpart(NEW)
    pub = PublishSettings(tns=TnsSettings(reporting_group="82", source_group="48"))
    with pytest.raises(ValueError, match="publish.tns.reporter"):
        tns_report(json.loads(rec), raw, pub)
    rep = tns_report(json.loads(rec), raw, {**SETTINGS, "at_type": "Other - Undefined", "observer": "ZTF robot",
                                            "remarks": "Test report."}, host_name="WISEA J1", host_redshift=0.05)
    r = rep["at_report"]["0"]
    assert r["at_type"] == "0" and r["remarks"].startswith("Test report. Candidate optical counterpart")
    assert r["host_name"] == "WISEA J1" and r["host_redshift"] == 0.05
    assert r["photometry"]["photometry_group"]["0"]["observer"] == "ZTF robot"
    assert tns_values()["options"]["at_types"][int(tns_report(json.loads(rec), raw, {**SETTINGS, "at_type": "nuc"})
                                                   ["at_report"]["0"]["at_type"])] == "NUC - Possibly nuclear"


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.update(source="gcn"), r"\$.source"),
    (lambda r: r["enrichment"].update(coincidence_records=[{**r["enrichment"]["coincidence_records"][0],
                                                            "retracted": True}]), r"\$.enrichment.coincidences"),
    (lambda r: r["enrichment"].update(coincidence_records=[], coincidences=[]), r"\$.enrichment.coincidences"),
    (lambda r: r.update(upstream_id="ZTF20aaaaaaa"), "history: alert ZTF20aalseuk"),
])
def test_records_that_cannot_be_reported(edit, match):
    rec = record(NEW)
    edit(rec)
    with pytest.raises(ValueError, match=match):
        tns_report(rec, counterpart(NEW)[1], SETTINGS)


def test_ids_alone_name_the_event_when_the_records_are_missing():
    rec = record(NEW)
    rec["enrichment"].pop("coincidence_records")
    r = tns_report(rec, counterpart(NEW)[1], SETTINGS)["at_report"]["0"]
    assert "swift trigger 694215995 (event group gcn:swift:694215995; coincidence grb-optical:" in r["remarks"]


@pytest.mark.parametrize("settings,match", [
    ({"reporter": "X"}, "publish.tns.reporting_group must be a TNS group id"),
    ({**SETTINGS, "reporting_group": "AMPEL"}, "publish.tns.reporting_group must be a TNS group id"),
    ({**SETTINGS, "source_group": "ztf"}, "publish.tns.source_group"),
    ({**SETTINGS, "at_type": "kilonova"}, "publish.tns.at_type"),
])
def test_bad_settings_name_the_setting(settings, match):
    with pytest.raises(ValueError, match=match):
        tns_report(record(NEW), counterpart(NEW)[1], settings)


def _report() -> dict:
    return tns_report(record(RISING), counterpart(RISING)[1], SETTINGS)


@pytest.mark.parametrize("path,value,match", [
    ("ra.value", 361.0, r"\$.at_report.0.ra.value: 361.0 outside"),
    ("dec.error", -1, r"\$.at_report.0.dec.error"),
    ("dec.units", "parsec", r"\$.at_report.0.dec.units"),
    ("reporting_group_id", "ZTF", r"\$.at_report.0.reporting_group_id: not a TNS id"),
    ("reporter", " ", r"\$.at_report.0.reporter: missing"),
    ("discovery_datetime", "2020-02-01T21:42", r"\$.at_report.0.discovery_datetime: not a UTC date"),
    ("photometry.photometry_group", {}, r"\$.at_report.0.photometry.photometry_group: missing or empty"),
    ("photometry.photometry_group.3.filter_value", None, r"photometry_group.3.filter_value: missing"),
    ("photometry.photometry_group.0.flux", "bright", r"photometry_group.0.flux: not a number"),
    ("non_detection.obsdate", "2020-03-01 00:00:00.000", r"\$.at_report.0.non_detection.obsdate: .* not before"),
    ("non_detection", {"archiveid": "0"}, r"\$.at_report.0.non_detection: needs"),
    ("host_redshift", -0.1, r"\$.at_report.0.host_redshift"),
])
def test_validation_names_the_json_path(path, value, match):
    payload = _report()
    validate_report(copy.deepcopy(payload))
    node = payload["at_report"]["0"]
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        validate_report(payload)


def test_validation_of_the_envelope():
    with pytest.raises(ValueError, match=r"\$.at_report: missing"):
        validate_report({"at_report": {}})
    with pytest.raises(ValueError, match=r"unexpected keys \['classification_report'\]"):
        validate_report({**_report(), "classification_report": {}})
    with pytest.raises(ValueError, match=r"keys must be '0'..'0'"):
        validate_report({"at_report": {"1": _report()["at_report"]["0"]}})
    archival = _report()
    archival["at_report"]["0"]["non_detection"] = {"archiveid": "0", "archival_remarks": "none in 30 days"}
    validate_report(archival)


def test_without_the_history_the_events_own_candidate_is_reported():
    """The reports stage passes None when the raw alert is not archived."""
    alert = _alert(NEW)
    c = alert["candidate"]
    r = tns_report(record(NEW), None, PublishSettings(tns=TnsSettings(**SETTINGS)))["at_report"]["0"]
    (p,) = r["photometry"]["photometry_group"].values()
    assert (p["obsdate"], p["flux"], p["flux_error"], p["limiting_flux"], p["filter_value"]) == (
        tns_time(c["jd"]), round(c["magpsf"], 3), round(c["sigmapsf"], 3), round(c["diffmaglim"], 3), "111")
    assert (r["ra"]["value"], r["dec"]["value"]) == (round(c["ra"], 7), round(c["dec"], 7))
    assert r["non_detection"] == {"archiveid": "0", "archival_remarks":
                                  "ZTF alert history not available to the reporting broker: last non-detection unknown"}
    assert r["internal_name"] == "ZTF20aalseuk"
