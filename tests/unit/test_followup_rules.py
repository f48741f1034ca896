"""Trigger rules (the ``followup-rule`` filter, enabled by default once per rule) on real
alerts decoded by the production decoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.sources import decode
from filters.api import FilterInput
from filters.config import FiltersSettings
from filters.registry import build_filter_set
from followup.filter import FollowupRule
from followup.messages import FollowupRequest, json_schema, request_id
from followup.rules import is_significant, looks_like_grb

DATA = Path(__file__).resolve().parents[1] / "data"


def decide(event, filter_set=None):
    """(action, first accepting instance, analyses) of the default follow-up rules."""
    filter_set = filter_set or build_filter_set(FiltersSettings())
    for d in filter_set.evaluate(FilterInput(event)):
        assert d.error is None, d.error
        if d.accepted and d.plugin == "followup-rule":
            (spec,) = d.result.followup or (None,)
            if spec is None:
                return "accepted-no-request", d.filter, ()
            return spec.kind, d.filter, tuple(sorted(spec.analyses))
    return "skip", None, ()


def event_of(rel: str):
    return decode((DATA / rel).read_bytes())[0]


@pytest.mark.parametrize("rel, action, rule", [
    ("voevent/fink-mm/integral/voevent_number=18790.xml", "analyze", "followup-integral-grb"),
    ("voevent/pygcn/gbm_flt_pos.xml", "analyze", "followup-fermi-gbm-grb"),
    ("voevent/fink-mm/swift/voevent_number=392.xml", "analyze", "followup-swift-bat-grb"),
    ("voevent/fink-mm/swift/voevent_number=393.xml", "skip", None),      # Swift FOM_Obs: not a GRB notice
    ("gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json", "analyze", "followup-swift-bat-grb"),
    ("gcn/gcn-schema/gcn/notices/swift/bat/Guano.Retraction.example.json", "withdraw", "followup-swift-bat-grb"),
    ("voevent/hop-client/S200302c-1-Preliminary.xml", "analyze", "followup-igwn-significant"),  # FAR decides
    ("igwn/userguide/MS181101ab-initial.json", "skip", None),           # mock superevent
    ("igwn/userguide/MS181101ab-earlywarning.json", "skip", None),
    ("gcn/gcn-schema/gcn/notices/icecube/lvk_nu_track_search.example.json", "skip", None),
])
def test_default_rules_on_real_alerts(rel, action, rule):
    if not (DATA / rel).exists():
        pytest.fail(f"missing sample {rel}")
    got, name, analyses = decide(event_of(rel))
    assert (got, name) == (action, rule)
    if action == "analyze":
        assert analyses == ("isgri", "spiacs")


def test_significance_reads_the_file_values():
    path = DATA / "voevent/hop-client/S200302c-1-Preliminary.xml"
    from lxml import etree

    far = float(etree.parse(str(path)).getroot().find(".//Param[@name='FAR']").get("value"))
    ev = event_of("voevent/hop-client/S200302c-1-Preliminary.xml")
    assert ev.properties["far_hz"] == pytest.approx(far)
    assert far < 1 / (30 * 86400)
    assert is_significant({"far_hz": far}, 1 / (30 * 86400))
    assert not is_significant({"far_hz": far}, far / 2)
    assert not is_significant({"significant": False, "far_hz": 1e-20}, 1.0)  # the flag wins


def test_mock_events_follow_when_tests_are_allowed():
    rule = FollowupRule.from_params(dict(source="igwn", alert_types=["initial"], significant_only=True,
                                         exclude_tests=False, analyses=["spiacs"]))
    obj = json.loads((DATA / "igwn/userguide/MS181101ab-initial.json").read_text())
    assert obj["event"]["significant"] is True
    result = rule.apply(FilterInput(event_of("igwn/userguide/MS181101ab-initial.json")))
    assert result.accepted and [(f.kind, f.analyses) for f in result.followup] == [("analyze", ("spiacs",))]
    strict = FollowupRule.from_params(dict(source="igwn", alert_types=["initial"], significant_only=True))
    result = strict.apply(FilterInput(event_of("igwn/userguide/MS181101ab-initial.json")))
    assert (result.accepted, result.reason) == (False, "test_alert")


def test_a_rule_with_a_misspelt_key_is_a_start_up_error():
    from filters.api import FilterConfigError

    with pytest.raises(FilterConfigError, match="followup-rule.*max_far: Extra inputs"):
        FollowupRule.from_params({"max_far": 1e-7})


def test_grb_classification():
    assert looks_like_grb({"most_likely": "GRB", "classification": {"GRB": 0.85, "GENERIC_SGR": 0.14}})
    assert not looks_like_grb({"classification": {"BELOW_HORIZON": 1}})
    assert not looks_like_grb({"not_a_grb": True})
    assert not looks_like_grb({"most_likely": "SOLAR_FLARE"})
    assert looks_like_grb({})


def test_request_id_is_deterministic_and_content_bound():
    ev = event_of("voevent/fink-mm/integral/voevent_number=18790.xml")
    params = {"window_s": 300.0, "max_sky_samples": 1000}
    a = FollowupRequest("analyze", ev, ("spiacs", "isgri"), params, "rule:x", created_at="2024-01-01T00:00:00Z")
    b = FollowupRequest("analyze", ev, ("isgri", "spiacs"), dict(params), "cli")
    assert a.request_id == b.request_id == request_id("analyze", ev.id, ("spiacs", "isgri"), params)
    assert a.request_id != request_id("analyze", ev.id, ("spiacs",), params)
    assert a.request_id != request_id("analyze", ev.id, ("spiacs", "isgri"), {**params, "window_s": 100.0})
    back = FollowupRequest.decode(a.encode())
    assert back.request_id == a.request_id and back.event == ev
    tampered = json.loads(a.encode())
    tampered["analyses"] = ["spiacs"]
    with pytest.raises(ValueError, match="does not match"):
        FollowupRequest.decode(json.dumps(tampered).encode())
    with pytest.raises(ValueError, match="not a follow-up request"):
        FollowupRequest.decode(b"{not json")


def test_request_matches_its_json_schema():
    import jsonschema

    ev = event_of("gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json")
    req = FollowupRequest("analyze", ev, ("spiacs",), {"window_s": 300.0, "max_sky_samples": 10}, "cli")
    schema = json_schema("followup_request.json")
    jsonschema.validate(json.loads(req.encode()), schema)


# ----------------------------------------------------------------- one follow-up per trigger
import math  # noqa: E402

from broker.event import HealpixLocalization, PointLocalization  # noqa: E402
from broker.enrich.groups import group_key  # noqa: E402 - the follow-up's group is the enrich stage's
from followup.rules import (  # noqa: E402
    AREA_GAIN, T0_TOLERANCE_S, localization_area_deg2, reanalysis_reason,
)

GBM_JSON = "gcn/gcn-schema/gcn/notices/fermi/gbm"


def test_lvk_json_and_voevent_of_one_superevent_share_a_group():
    """The JSON alert (igwn.gwalert) and the VOEvent of one superevent: one group."""
    json_form = event_of("igwn/userguide/MS181101ab-preliminary.json")
    voevent = event_of("igwn/userguide/MS181101ab-2-Preliminary.xml")
    assert json_form.format == "json" and voevent.format == "voevent" and json_form.id != voevent.id
    assert group_key(json_form) == group_key(voevent) == "igwn:MS181101ab"
    # and the retraction of either form is in it
    assert group_key(event_of("igwn/userguide/MS181101ab-5-Retraction.xml")) == group_key(json_form)


def test_gbm_revisions_and_retraction_of_other_mission_groups():
    revs = [event_of(f"{GBM_JSON}/trigger.{n}.example.json") for n in ("alert", "flight1", "ground2", "final")]
    assert {group_key(e) for e in revs} == {"gcn:fermi:745121685"}
    guano = event_of("gcn/gcn-schema/gcn/notices/swift/bat/Guano.Retraction.example.json")
    assert group_key(guano).startswith("gcn:swift:")  # another mission: another group


@pytest.mark.parametrize("loc, area", [
    (None, math.inf),
    (PointLocalization(ra=10, dec=0), math.inf),                       # no error radius: not localized
    (PointLocalization(ra=10, dec=0, error_radius=1.0, containment=0.9), 3.1416),  # π r² for small r
    # a 1σ (68 %) GBM radius scales to 90 % by sqrt(ln 10 / -ln 0.32) = 1.422 (2-D Gaussian)
    (PointLocalization(ra=10, dec=0, error_radius=1.0, containment=0.68), 3.1416 * 1.4224 ** 2),
    (HealpixLocalization(area_50=100.0, area_90=400.0, ra_max=1, dec_max=2), 400.0),
])
def test_localization_area(loc, area):
    got = localization_area_deg2(loc)
    assert got == area if math.isinf(area) else got == pytest.approx(area, rel=2e-3)
    if loc is not None:  # the JSON form (stored in result documents) gives the same
        assert localization_area_deg2(loc.model_dump(mode="json")) == got


def _previous(t0="2024-08-24T02:14:40.430Z", loc=None, status="done", analyses=None, **extra):
    doc = {"t0": t0, "localization": loc.model_dump(mode="json") if loc else None, "status": status,
           "analyses": analyses if analyses is not None else {"spiacs": {"detected": False}},
           "analyses_requested": ["spiacs"], "params": {"window_s": 300.0}}
    return doc | extra


def _reason(event, previous, by="filter:followup-fermi-gbm-grb", analyses=("spiacs",), params=None):
    return reanalysis_reason(event, analyses, params or {"window_s": 300.0}, by, previous)


def test_gbm_revisions_in_order():
    """745121685's seven real revisions against a group whose follow-up found data."""
    names = ["alert", "flight1", "flight2", "flight3", "ground1", "ground2", "final"]
    events = [event_of(f"{GBM_JSON}/trigger.{n}.example.json") for n in names]
    current, reasons = None, []
    for ev in events:
        why = _reason(ev, current)
        reasons.append(why)
        if why is not None:
            current = _previous(ev.time, ev.localization)
    assert reasons[0] == "first follow-up of this trigger"
    assert reasons[1].startswith("better localization (90 % region none → 438 deg²")
    assert reasons[2] is None  # flight2: 9.23° > 8.32°
    assert reasons[3].startswith("better localization (90 % region 438 deg² → 324 deg²")
    assert reasons[4].startswith("better localization (90 % region 324 deg² → 11.4 deg²")
    assert reasons[5].startswith("better localization (90 % region 11.4 deg² → 7.4 deg²")
    # final 1.0° after ground2 1.08°: (1.0/1.08)² = 0.857, 14 % less area (> AREA_GAIN)
    assert reasons[6].startswith("better localization (90 % region 7.4 deg² → 6.35 deg²")
    # a re-fit that shrinks the region by less than AREA_GAIN adds nothing
    refit = events[6].model_copy(update={"localization": events[6].localization.model_copy(
        update={"error_radius": 1.0 * math.sqrt(1 - AREA_GAIN / 2)})})
    assert _reason(refit, current) is None


def test_no_reanalysis_when_no_position_can_help():
    final = event_of(f"{GBM_JSON}/trigger.final.example.json")
    gap = {"spiacs": {"no_data": True, "kind": "data_gap", "reason": "no light curve"},
           "coverage": {"covered": True}}
    assert _reason(final, _previous(status="no_data", analyses=gap)) is None
    not_visible = gap | {"ibis_visibility": {"no_data": True, "kind": "not_visible", "reason": "outside FoV"}}
    assert _reason(final, _previous(status="no_data", analyses=not_visible)).startswith("better localization")
    down = {"spiacs": {"no_data": True, "kind": "service_unavailable", "reason": "MMODA down"}}
    assert _reason(final, _previous(loc=final.localization, status="no_data", analyses=down)).startswith(
        "a data service was unavailable")


def test_other_reasons_for_a_new_analysis():
    final = event_of(f"{GBM_JSON}/trigger.final.example.json")
    same = _previous(final.time, final.localization)
    assert _reason(final, same) is None
    assert _reason(final, same, by="cli") == "requested by hand (cli)"
    assert _reason(final, _previous(final.time, final.localization, status="failed")) == "the previous analysis failed"
    assert _reason(final, same, analyses=("isgri", "spiacs")) == "analyses added: isgri"
    assert _reason(final, same, params={"window_s": 600.0}) == "analysis parameters changed"
    shifted = final.model_copy(update={"time": "2024-08-24T02:14:42.430Z"})
    assert _reason(shifted, same) == "T0 changed by 2 s"
    within = final.model_copy(update={"time": "2024-08-24T02:14:41.230Z"})  # 0.8 s < T0_TOLERANCE_S
    assert T0_TOLERANCE_S == 1.0 and _reason(within, same) is None


def test_a_follow_up_notice_starts_no_analysis_at_its_own_observation_time():
    """A Swift UVOT notice of BAT trigger 1253910 (gcn-schema PR 306): decoded alone its
    T0 is its observation_start, minutes after the burst, and an INTEGRAL search there
    would look at the wrong time; decoded after the BAT notice it has the trigger time."""
    from broker.sources.gcn import forget_triggers

    swift = "gcn/gcn-schema-pr306-swift/gcn/notices/swift/"
    uvot = json.loads((DATA / swift / "uvot/image.white.initial.example.json").read_text())
    bat = json.loads((DATA / swift / "bat/position.rate_trigger.initial.example.json").read_text())
    assert uvot["id"] == bat["id"] == "1253910" and "trigger_time" not in uvot
    rule = FollowupRule.from_params(dict(missions=["Swift"], analyses=["spiacs"]))
    forget_triggers()
    try:
        alone = event_of(swift + "uvot/image.white.initial.example.json")
        assert alone.properties["time_source"] == "observation_start"
        result = rule.apply(FilterInput(alone))
        assert (result.accepted, result.reason) == (False, "t0_not_event_time")
        assert FollowupRule.from_params(dict(missions=["Swift"], event_time_only=False)).apply(
            FilterInput(alone)).accepted
        event_of(swift + "bat/position.rate_trigger.initial.example.json")
        joined = event_of(swift + "uvot/image.white.initial.example.json")
        assert joined.properties["time_source"] == "parent_trigger"
        assert joined.time.replace("+00:00", "Z").startswith(bat["trigger_time"][:19])
        assert rule.apply(FilterInput(joined)).accepted
    finally:
        forget_triggers()


@pytest.mark.parametrize("value", [[], {"a": 1}, float("nan"), "\udcff", "x" * 1_000_000])
def test_a_time_source_of_any_shape_is_no_error_of_the_rule(value):
    """An enriched record may carry anything in properties.time_source: an unhashable value
    made match_rule raise, and a filter that keeps raising is quarantined (no follow-ups)."""
    event = event_of("voevent/pygcn/gbm_flt_pos.xml")
    hostile = event.model_copy(update={"properties": {**event.properties, "time_source": value}})
    rule = FollowupRule.from_params(dict(missions=["Fermi"], analyses=["spiacs"]))
    assert rule.apply(FilterInput(hostile)).accepted
