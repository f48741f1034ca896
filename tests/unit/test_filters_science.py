"""The built-in science filters on real alerts (tests/data), decoded by the production
decoders and enriched by the enrich stage's own handler (broker.pipeline.enrich) with the
in-memory stores of tests/unit/test_enrich_stage.py; each filter sees what the filter
stage will see: the ``mma.events.enriched`` record read back with
``broker.enrich.enriched.decode_enriched``.

No real coincident pair is bundled: for the coincidence filters a real GRB notice is
*moved* in time (and, for the optical ones, in position) next to a real LVK alert or a
real ZTF alert — said at each place, as in test_enrich_stage.py. Every other alert is
used byte for byte.

``coincidence_records`` (the coincidence records themselves in the enrichment) is a
proposed addition to the enrich stage's output (filters/builtin/coinc.py); where a test
needs it, it is built from the ``mma.coincidences`` records the same handler call
published, as the enrich stage would carry them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from broker.enrich.enriched import decode_enriched
from filters.api import FilterConfigError, FilterInput
from filters.engine import ConfiguredFilter, FilterSet
from filters.registry import filter_class
from tests.conftest import DATA
from tests.unit.test_enrich_stage import CODEC, PROV, MemArchive, MemGroups, MemLocalizations, Msg

from broker.enrich.config import EnrichSettings
from broker.pipeline.enrich import EnrichHandler

NAMES = ("gw-significant", "grb-short", "gw-grb-coincidence", "neutrino-track", "optical-counterpart")


# ------------------------------------------------------------------ enrichment as the stage builds it
def new_stage() -> EnrichHandler:
    locs, groups, archive = MemLocalizations(), MemGroups(), MemArchive()
    h = EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(),
                      enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences", provenance=PROV,
                      index_positions=locs.index)
    h.mem = (locs, groups, archive)
    return h


def feed(stage: EnrichHandler, raw: bytes, *, records: bool = False) -> list[FilterInput]:
    """Archive an alert (as ingest does), enrich each of its Events, and return what a
    filter sees of each: the enriched record decoded back, with the alert's raw bytes.
    ``records``: also carry the coincidence records (the proposed ``coincidence_records``)."""
    out = []
    for ev in stage.mem[2].add(raw):
        handled = stage.handle(Msg(CODEC.encode(ev, PROV)))
        if handled.write is not None:
            stage.write([handled])
        stage.committed([handled], [])
        (rec,) = [o for o in handled.outputs if o.topic == "mma.events.enriched"]
        enriched = decode_enriched(rec.value)
        enrichment = dict(enriched.enrichment)
        if records:
            enrichment["coincidence_records"] = [
                {k: v for k, v in json.loads(o.value).items() if k != "provenance"}
                for o in handled.outputs if o.topic == "mma.coincidences"]
        out.append(FilterInput(enriched.event, enrichment, raw=raw))
    return out


@lru_cache(maxsize=None)
def alone(rel: str) -> tuple[FilterInput, ...]:
    """The alert file ``tests/data/<rel>`` enriched by a stage that has seen nothing else."""
    return tuple(feed(new_stage(), (DATA / rel).read_bytes()))


def run(name: str, params: dict, alert: FilterInput):
    return filter_class(name).from_params(params).apply(alert)


def moved(rel: str, t0: str, **edits) -> bytes:
    """The real GCN Kafka notice ``rel`` with its trigger_time set to ``t0`` and the
    given keys replaced (made for these tests: no real coincident pair is bundled)."""
    obj = json.loads((DATA / rel).read_text())
    obj["trigger_time"] = t0
    obj.update(edits)
    return json.dumps(obj).encode()


# ------------------------------------------------------------------ table: one alert, one config
GW_PRELIM = "igwn/userguide/MS181101ab-preliminary.json"
S200302C = "voevent/hop-client/S200302c-1-Preliminary.xml"  # a real O3 BBH candidate, no 'significant' flag
MOCK = {"allow_mock": True}

CASES = [
    # gw-significant: LVK user guide thresholds, mock superevents, classification
    ("gw-significant", S200302C, {}, True, "significant"),  # FAR 9.3e-9 Hz < 7.7e-8 Hz, no flag
    ("gw-significant", S200302C, {"unflagged_max_far_hz_cbc": 9.3e-9}, False, "not_significant"),
    ("gw-significant", S200302C, {"unflagged_max_far_hz_cbc": 9.35e-9}, True, "significant"),
    ("gw-significant", S200302C, {"max_far_hz": 3.2e-9}, False, "far_above_threshold"),
    ("gw-significant", S200302C, {"min_has_ns": 0.5}, False, "has_ns_below_threshold"),  # HasNS 0
    ("gw-significant", S200302C, {"min_p_bbh": 0.88}, True, "significant"),  # BBH 0.8896
    ("gw-significant", S200302C, {"min_p_bbh": 0.89}, False, "p_bbh_below_threshold"),
    ("gw-significant", S200302C, {"max_p_terrestrial": 0.1}, False, "p_terrestrial_above_threshold"),  # 0.110
    ("gw-significant", S200302C, {"min_has_mass_gap": 0.1}, False, "has_mass_gap_missing"),  # O3: no HasMassGap
    ("gw-significant", S200302C, {"searches": ["AllSky"], "pipelines": ["GSTLAL"]}, True, "significant"),
    ("gw-significant", S200302C, {"pipelines": ["pycbc"]}, False, "pipeline_not_selected"),
    ("gw-significant", S200302C, {"groups": ["Burst"]}, False, "group_not_selected"),
    ("gw-significant", GW_PRELIM, {}, False, "mock_event"),  # MS: a mock superevent
    ("gw-significant", GW_PRELIM, MOCK, True, "significant"),  # significant: true
    ("gw-significant", GW_PRELIM, {**MOCK, "min_has_ns": 0.95, "min_has_remnant": 0.91}, True, "significant"),
    ("gw-significant", GW_PRELIM, {**MOCK, "min_has_ns": 0.951}, False, "has_ns_below_threshold"),
    ("gw-significant", GW_PRELIM, {**MOCK, "searches": ["AllSky"]}, False, "search_not_selected"),  # MDC
    ("gw-significant", "igwn/userguide/MS181101ab-2-Preliminary.xml", {}, False, "mock_event"),
    ("gw-significant", "igwn/userguide/MS181101ab-2-Preliminary.xml", MOCK, True, "significant"),
    ("gw-significant", "igwn/userguide/MS181101ab-earlywarning.json", {**MOCK, "alert_types": ["preliminary"]},
     False, "alert_type_not_selected"),
    ("gw-significant", "igwn/userguide/MS181101ab-retraction.json", MOCK, False, "retraction"),
    ("gw-significant", "igwn/fink-mm/MS230518e-initial.json", {**MOCK, "min_p_bns": 0.99, "max_p_terrestrial": 1e-6},
     True, "significant"),
    ("gw-significant", "igwn/fink-mm/MS230518e-initial.json", {**MOCK, "min_p_nsbh": 0.01}, False,
     "p_nsbh_below_threshold"),
    # grb-short: T90, Fermi GBM duration class, the notices' own classification
    ("grb-short", "voevent/gwcelery/fermi_subthresh_grb_gcn.xml", {}, True, "short_t90"),  # 0.703 s
    ("grb-short", "voevent/gwcelery/fermi_subthresh_grb_gcn.xml", {"max_t90_s": 0.7}, False, "long_t90"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/burstcube/alert.example.json", {}, False, "long_t90"),  # 2.3 s
    ("grb-short", "gcn/gcn-schema/gcn/notices/burstcube/alert.example.json",
     {"max_t90_s": 2.3, "allow_presumed_grb": False}, True, "short_t90"),  # classification GRB 0.95: stated
    ("grb-short", "voevent/gwcelery/fermi_subthresh_grb_gcn.xml", {"allow_presumed_grb": False}, False,
     "grb_presumed"),  # the notice states no class: Event.category_rule grb_monitor_presumed
    ("grb-short", "gcn/gcn-schema/gcn/notices/burstcube/alert.example.json", {"max_t90_s": 2.3}, True, "short_t90"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.final.example.json", {}, False, "long_class"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.final.example.json", {"use_duration_class": False},
     False, "duration_unknown"),
    ("grb-short", "voevent/fink-mm/fermi/voevent_number=2750.xml", {}, False, "duration_unknown"),  # 'unknown'
    ("grb-short", "voevent/fink-mm/fermi/voevent_number=2750.xml", {"accept_unknown_duration": True}, True,
     "duration_unknown"),
    ("grb-short", "voevent/voevent-parse/SWIFT_bat_position_v2.0_example.xml", {}, False, "duration_unknown"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.flight1.example.json", {}, False,
     ("classified_not_grb", "not_grb")),  # BELOW_HORIZON: Event.category not_astrophysical
    ("grb-short", "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.flight3.example.json", {"min_grb_probability": 0.9},
     False, "classified_not_grb"),  # GRB 0.85
    ("grb-short", "voevent/pygcn/gbm_flt_pos.xml", {"min_grb_probability": 0.95}, False, "classified_not_grb"),
    ("grb-short", "voevent/pygcn/gbm_flt_pos.xml", {"accept_unknown_duration": True}, True, "duration_unknown"),
    ("grb-short", "gcn/gcn-schema-pr161-classic/gcn/notices/classic/gecam/alert.example.json", {}, False,
     ("classified_not_grb", "not_grb")),  # classification KNOWN_SOURCE: Event.category known_source
    ("grb-short", "voevent/gwcelery/svom_catalog_gcn.xml", {"accept_unknown_duration": True}, False,
     ("known_source", "not_grb")),  # Cen X-3; not_grb once Event.category says known_source
    ("grb-short", "gcn/gcn-schema/gcn/notices/svom/eclairs/trigger.wakeup.example.json",
     {"accept_unknown_duration": True}, False, "test_notice"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/svom/eclairs/trigger.wakeup.example.json",
     {"accept_unknown_duration": True, "allow_test": True}, True, "duration_unknown"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/chime/frb.detection.example.json", {"accept_unknown_duration": True},
     False, "not_grb"),
    ("grb-short", "gcn/gcn-schema/gcn/notices/maxi/gsc.unknown.retraction.example.json", {}, False, "retraction"),
    # neutrino-track: IceCube Gold/Bronze streams, signalness, FAR per year, error radius
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json", {}, True, "gold_track"),
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json", {"streams": ["bronze"]}, False,
     "stream_not_selected"),
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_bronze.json", {}, True, "bronze_track"),
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_bronze.json", {"min_signalness": 0.74}, True,
     "bronze_track"),  # p_astro 0.74064
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_bronze.json", {"min_signalness": 0.75}, False,
     "signalness_below_threshold"),
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=3028.xml", {}, True, "bronze_track"),
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=3028.xml", {"max_far_per_yr": 1.8772}, True,
     "bronze_track"),  # the notice's FAR: 1.8772 yr^-1
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=3028.xml", {"max_far_per_yr": 1.877}, False,
     "far_above_threshold"),
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=3028.xml", {"max_error_radius_deg": 0.5}, False,
     "error_radius_above_threshold"),  # 0.6521 deg at 90 %
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=3028.xml", {"min_signalness": 0.5}, False,
     "signalness_below_threshold"),  # 0.3865
    ("neutrino-track", "gcn/gcn-schema-pr161-classic/gcn/notices/classic/amon/astrotrack_alert.example.json", {},
     True, "bronze_track"),
    ("neutrino-track", "voevent/fink-mm/icecube/voevent_number=825.xml", {}, False, "not_gold_bronze_track"),
    ("neutrino-track", "gcn/gcn-schema-pr161-classic/gcn/notices/classic/amon/hese_alert.example.json", {}, False,
     "not_gold_bronze_track"),
    ("neutrino-track", "gcn/gcn-schema/gcn/notices/km3net/alert.example.json", {}, False, "not_gold_bronze_track"),
    ("neutrino-track", "gcn/gcn-schema/gcn/notices/icecube/lvk_nu_track_search.example.json", {}, False,
     "not_gold_bronze_track"),
    ("neutrino-track", "gcn/gwcelery-kafka/kafka_alert_icecube_retraction.json", {}, False, "retraction"),
    ("neutrino-track", "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.ground1.example.json", {}, False,
     "not_gold_bronze_track"),
    ("neutrino-track", "gcn/gcn-schema-pr161-classic/gcn/notices/classic/snews/alert.example.json", {}, False,
     "test_notice"),
    # the coincidence filters on alerts that took part in none
    ("gw-grb-coincidence", GW_PRELIM, {}, False, "no_coincidence"),
    ("gw-grb-coincidence", "igwn/userguide/MS181101ab-retraction.json", {}, False, "retraction"),
    ("optical-counterpart", "ztf/kowalski/20200202/1127561442115015003.avro", {}, False, "no_coincidence"),
]


@pytest.mark.parametrize("name,rel,params,accepted,reason", CASES,
                         ids=[f"{c[0]}:{Path(c[1]).name}:{json.dumps(c[2], sort_keys=True)}" for c in CASES])
def test_filter_on_a_real_alert(name, rel, params, accepted, reason):
    (alert,) = alone(rel)
    result = run(name, params, alert)
    assert result.accepted is accepted, result
    assert result.reason in ((reason,) if isinstance(reason, str) else reason), result


def test_s200302c_detail_states_the_numbers_that_decided():
    (alert,) = alone(S200302C)
    r = run("gw-significant", {"max_p_terrestrial": 0.1}, alert)
    assert r.detail == "Terrestrial 0.11 > 0.1"
    assert run("gw-significant", {}, alert).tags == ("gw", "cbc")


def test_a_revision_after_its_superevents_retraction_is_rejected():
    stage = new_stage()
    for rel in (GW_PRELIM, "igwn/userguide/MS181101ab-retraction.json"):
        feed(stage, (DATA / rel).read_bytes())
    (late,) = feed(stage, (DATA / "igwn/userguide/MS181101ab-update.json").read_bytes())
    assert late.group["retracted"] is True
    assert run("gw-significant", MOCK, late).reason == "group_retracted"
    assert run("gw-significant", MOCK, alone("igwn/userguide/MS181101ab-update.json")[0]).accepted


# ------------------------------------------------------------------ GW–GRB coincidences
GBM = "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json"


@pytest.fixture()
def gw_grb():
    """MS181101ab's preliminary alert, then the real GBM ground notice moved to 2 s after
    its merger (made for this test), then the GW update alert."""
    stage = new_stage()
    (gw,) = feed(stage, (DATA / GW_PRELIM).read_bytes(), records=True)
    (grb,) = feed(stage, moved(GBM, "2018-11-01T22:22:48.654"), records=True)
    (upd,) = feed(stage, (DATA / "igwn/userguide/MS181101ab-update.json").read_bytes(), records=True)
    return stage, gw, grb, upd


def _ids_only(alert: FilterInput) -> FilterInput:
    """The same enriched record without the proposed ``coincidence_records`` (today's output)."""
    enrichment = {k: v for k, v in alert.enrichment.items() if k != "coincidence_records"}
    return FilterInput(alert.event, enrichment)


def test_both_members_of_a_gw_grb_coincidence_are_accepted(gw_grb):
    _, gw, grb, upd = gw_grb
    cid = "gw-grb:igwn:MS181101ab+gcn:fermi:745121685"
    assert gw.coincidences == [] and grb.coincidences == [cid] and upd.coincidences == [cid]
    assert run("gw-grb-coincidence", {}, gw).reason == "no_coincidence"  # it came first: the GRB found it
    for alert in (grb, upd, _ids_only(grb), _ids_only(upd)):
        r = run("gw-grb-coincidence", {}, alert)
        assert r.accepted and r.reason == "gw_grb_coincidence" and r.detail.startswith(cid), r
        assert r.tags == ("gw-grb", "coincidence")


def test_joint_far_threshold_at_ravens_value(gw_grb):
    _, _, grb, _ = gw_grb
    (rec,) = grb.enrichment["coincidence_records"]
    joint, temporal = rec["joint_far_hz"], rec["temporal_far_hz"]
    assert rec["search"] == "cbc" and 0 < temporal and 0 < joint
    assert run("gw-grb-coincidence", {"max_joint_far_hz": joint}, grb).accepted
    r = run("gw-grb-coincidence", {"max_joint_far_hz": joint * 0.999}, grb)
    assert r.reason == "joint_far_above_threshold" and not r.accepted
    assert run("gw-grb-coincidence", {"max_temporal_far_hz": temporal}, grb).accepted
    assert run("gw-grb-coincidence", {"max_temporal_far_hz": temporal * 0.999}, grb).reason == \
        "temporal_far_above_threshold"
    assert run("gw-grb-coincidence", {"searches": ["burst"]}, grb).reason == "search_not_selected"
    # without the records a FAR cut cannot be checked: rejected, never guessed
    assert run("gw-grb-coincidence", {"max_joint_far_hz": 1.0}, _ids_only(grb)).reason == \
        "coincidence_details_missing"


def test_joint_far_falls_back_to_the_temporal_far_without_a_joint_one(gw_grb):
    _, _, grb, _ = gw_grb
    (rec,) = grb.enrichment["coincidence_records"]
    no_joint = FilterInput(grb.event, {**grb.enrichment, "coincidence_records": [{**rec, "joint_far_hz": None}]})
    t = rec["temporal_far_hz"]
    assert run("gw-grb-coincidence", {"max_joint_far_hz": t}, no_joint).accepted
    assert not run("gw-grb-coincidence", {"max_joint_far_hz": t * 0.999}, no_joint).accepted
    assert run("gw-grb-coincidence", {"max_joint_far_hz": 1.0, "require_joint_far": True}, no_joint).reason == \
        "joint_far_above_threshold"


def test_retraction_and_a_grb_revision_out_of_the_window(gw_grb):
    stage, _, grb, _ = gw_grb
    later = json.loads(moved(GBM, "2018-11-01T22:23:48.654"))  # moved: a later notice, dt = +62 s
    later["record_number"] = 7
    (out,) = feed(stage, json.dumps(later).encode(), records=True)
    (rec,) = out.enrichment["coincidence_records"]
    assert rec["coincident"] is False
    assert run("gw-grb-coincidence", {}, out).reason == "coincidence_withdrawn"
    # the ids alone cannot tell a superseded coincidence: why coincidence_records is proposed
    assert run("gw-grb-coincidence", {}, _ids_only(out)).accepted


def test_a_retraction_lists_the_coincidence_it_withdraws_and_is_rejected(gw_grb):
    stage, _, grb, _ = gw_grb
    (ret,) = feed(stage, (DATA / "igwn/userguide/MS181101ab-retraction.json").read_bytes(), records=True)
    assert ret.coincidences == grb.coincidences and ret.enrichment["coincidence_records"][0]["retracted"] is True
    assert run("gw-grb-coincidence", {}, ret).reason == "retraction"


# ------------------------------------------------------------------ optical counterparts
ZTF_NEW = "ztf/kowalski/20200202/1127561442115015003.avro"  # ZTF20aalseuk, first detection
SWIFT = "gcn/gcn-schema/gcn/notices/swift/bat/guano.loc_arc_min.example.json"  # 0.5 deg at 90 %


@pytest.fixture()
def grb_optical():
    """The real Swift BAT-GUANO notice moved to 12 h before ZTF20aalseuk's first detection
    and 0.1 deg from it (made for this test), then the real ZTF alert."""
    stage = new_stage()
    feed(stage, moved(SWIFT, "2020-02-02T01:28:29.004Z", ra=207.8402872, dec=61.9610302), records=True)
    (cand,) = feed(stage, (DATA / ZTF_NEW).read_bytes(), records=True)
    return cand


def test_a_new_ztf_source_in_a_grb_error_circle_after_t0_is_a_counterpart(grb_optical):
    cand = grb_optical
    (rec,) = cand.enrichment["coincidence_records"]
    assert rec["kind"] == "grb-optical" and rec["dt_days"] == pytest.approx(0.5) and rec["history_checked"] is True
    for alert in (cand, _ids_only(cand)):
        r = run("optical-counterpart", {}, alert)
        assert r.accepted and r.reason == "optical_counterpart" and r.tags == ("optical", "grb-optical"), r
    assert run("optical-counterpart", {"require_history_checked": True, "max_dt_days": 0.5}, cand).accepted
    assert run("optical-counterpart", {"max_dt_days": 0.49}, cand).reason == "too_late"
    assert run("optical-counterpart", {"max_dt_days": 1}, _ids_only(cand)).reason == "coincidence_details_missing"
    assert run("optical-counterpart", {"kinds": ["gw-optical"]}, cand).reason == "no_coincidence"
    assert run("optical-counterpart", {"max_credible_level": 0.1}, cand).accepted  # a point trigger has no level
    (rec,) = cand.enrichment["coincidence_records"]
    mapped = FilterInput(cand.event, {**cand.enrichment, "coincidence_records": [{**rec, "credible_level": 0.85}]})
    assert run("optical-counterpart", {"max_credible_level": 0.85}, mapped).accepted
    assert run("optical-counterpart", {"max_credible_level": 0.8}, mapped).reason == "outside_region"
    assert run("optical-counterpart", {"min_rb": 0.6999}, cand).accepted  # rb: float32 0.7 = 0.69999999
    assert run("optical-counterpart", {"min_rb": 0.7}, cand).reason == "rb_below_threshold"
    assert run("optical-counterpart", {"min_drb": 0.9995}, cand).reason == "drb_below_threshold"  # 0.99945


def test_new_ztf_sources_near_known_asteroids_are_vetoed():
    """The real GBM ground notice moved to 12 h before the 2023-10-12 ZTF exposure and to
    (46.8, 8.9) deg (made for this test); the exposure's real alerts: ten first
    detections, every one within 1 arcsec of a known asteroid (ssdistnr 0), and older sources."""
    stage = new_stage()
    feed(stage, moved(GBM, "2023-10-11T22:24:45.003Z", ra=46.8, dec=8.9), records=True)
    cands = [a for p in sorted((DATA / "ztf/kowalski/20231012").glob("*.avro")) for a in feed(stage, p.read_bytes(),
                                                                                              records=True)]
    new = [a for a in cands if a.coincidences]
    old = [a for a in cands if not a.coincidences]
    assert len(new) == 10 and all(a.event.upstream_id.startswith("ZTF23") for a in new)
    assert {run("optical-counterpart", {}, a).reason for a in old} == {"no_coincidence"}
    assert {run("optical-counterpart", {}, a).reason for a in new} == {"solar_system_object"}
    no_sso = {a.event.upstream_id: run("optical-counterpart", {"min_sso_dist_arcsec": None}, a) for a in new}
    assert all(r.accepted for r in no_sso.values())
    # PS1 sources of star score > 0.8 within 18 arcsec: ZTF23abjjnql (0.970 at 17.3"), ZTF23abjjnqp (0.820 at 5.8")
    strict = {"min_sso_dist_arcsec": None, "ps1_sgveto_rad_arcsec": 18.0}
    vetoed = {a.event.upstream_id for a in new if run("optical-counterpart", strict, a).reason == "stellar_source"}
    assert vetoed == {"ZTF23abjjnql", "ZTF23abjjnqp"}
    assert not any(run("optical-counterpart", {**strict, "ps1_sgveto_rad_arcsec": 17.0}, a).reason == "stellar_source"
                   and a.event.upstream_id == "ZTF23abjjnql" for a in new)
    nql = next(a for a in new if a.event.upstream_id == "ZTF23abjjnql")
    assert run("optical-counterpart", {**strict, "ps1_sgveto_th": 0.99}, nql).accepted


# ------------------------------------------------------------------ the filter set, configs
def test_every_filter_accepts_and_rejects_real_alerts_in_the_table():
    for name in NAMES:
        outcomes = {c[3] for c in CASES if c[0] == name}
        if name in ("gw-grb-coincidence", "optical-counterpart"):
            outcomes.add(True)  # accepted in the coincidence tests above
        assert outcomes == {True, False}, name


def test_through_the_filter_set_each_sees_only_its_sources():
    fs = FilterSet([ConfiguredFilter(n, filter_class(n).from_params({})) for n in NAMES])
    alerts = [alone(S200302C)[0], alone("gcn/gwcelery-kafka/kafka_alert_icecube_gold.json")[0], alone(ZTF_NEW)[0]]
    got = {a.event.source: {d.filter: d.reason for d in fs.evaluate(a)} for a in alerts}
    assert got == {  # filters of other sources are left out of the list
        "igwn": {"gw-significant": "significant", "gw-grb-coincidence": "no_coincidence"},
        "gcn": {"grb-short": "not_grb", "gw-grb-coincidence": "no_coincidence", "neutrino-track": "gold_track"},
        "ztf": {"optical-counterpart": "no_coincidence"}}
    assert fs.stats["gw-significant"].skipped_source == 2 and fs.stats["optical-counterpart"].calls == 1


@pytest.mark.parametrize("name,params", [
    ("gw-significant", {"max_far_hz": -1.0}),
    ("gw-significant", {"min_has_ns": 1.5}),
    ("gw-significant", {"groups": ["CBC", "Ringdown"]}),
    ("gw-significant", {"alert_types": ["retraction"]}),
    ("gw-significant", {"max_far": 1e-7}),  # unknown key: units go in the name
    ("grb-short", {"max_t90_s": 0}),
    ("grb-short", {"max_t90_s": "short"}),
    ("grb-short", {"min_grb_probability": 2}),
    ("gw-grb-coincidence", {"searches": ["cbc", "subgrb"]}),
    ("gw-grb-coincidence", {"max_joint_far_hz": -1e-9}),
    ("neutrino-track", {"streams": ["gold", "silver"]}),
    ("neutrino-track", {"min_signalness": 1.01}),
    ("neutrino-track", {"max_error_radius_deg": 0}),
    ("optical-counterpart", {"kinds": ["gw-neutrino"]}),
    ("optical-counterpart", {"ps1_sgveto_th": 1.5}),
    ("optical-counterpart", {"min_rb": -0.1}),
])
def test_bad_config_is_a_filter_config_error(name, params):
    with pytest.raises(FilterConfigError, match=name):
        filter_class(name).from_params(params)


def test_configs_are_frozen_and_hashes_follow_parameters():
    f = filter_class("gw-significant").from_params({"min_has_ns": 0.5})
    with pytest.raises(Exception):
        f.config.min_has_ns = 0.1  # type: ignore[misc]
    assert f.config_hash != filter_class("gw-significant").from_params({}).config_hash
