"""Trigger rules on real alerts decoded by the production decoders (default rule set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from followup.config import FollowupRuleSettings, FollowupSettings
from broker.sources import decode
from followup.messages import FollowupRequest, json_schema, request_id
from followup.rules import decide, is_significant, looks_like_grb

DATA = Path(__file__).resolve().parents[1] / "data"
RULES = FollowupSettings().rules


def event_of(rel: str):
    return decode((DATA / rel).read_bytes())[0]


@pytest.mark.parametrize("rel, action, rule", [
    ("voevent/fink-mm/integral/voevent_number=18790.xml", "analyze", "integral-grb"),
    ("voevent/pygcn/gbm_flt_pos.xml", "analyze", "fermi-gbm-grb"),
    ("voevent/fink-mm/swift/voevent_number=392.xml", "analyze", "swift-bat-grb"),
    ("voevent/fink-mm/swift/voevent_number=393.xml", "skip", None),      # Swift FOM_Obs: not a GRB notice
    ("gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json", "analyze", "swift-bat-grb"),
    ("gcn/gcn-schema/gcn/notices/swift/bat/Guano.Retraction.example.json", "withdraw", "swift-bat-grb"),
    ("voevent/hop-client/S200302c-1-Preliminary.xml", "analyze", "igwn-significant"),  # no flag: FAR decides
    ("igwn/userguide/MS181101ab-initial.json", "skip", None),           # mock superevent
    ("igwn/userguide/MS181101ab-earlywarning.json", "skip", None),
    ("gcn/gcn-schema/gcn/notices/icecube/lvk_nu_track_search.example.json", "skip", None),
])
def test_default_rules_on_real_alerts(rel, action, rule):
    if not (DATA / rel).exists():
        pytest.fail(f"missing sample {rel}")
    d = decide(event_of(rel), RULES)
    assert (d.action, d.rule) == (action, rule), d.reason
    if action == "analyze":
        assert d.analyses == ("isgri", "spiacs")


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
    rule = FollowupRuleSettings(name="gw", source="igwn", alert_types=["initial"], significant_only=True,
                                exclude_tests=False, analyses=["spiacs"])
    obj = json.loads((DATA / "igwn/userguide/MS181101ab-initial.json").read_text())
    assert obj["event"]["significant"] is True
    d = decide(event_of("igwn/userguide/MS181101ab-initial.json"), [rule])
    assert d.action == "analyze" and d.analyses == ("spiacs",)
    assert decide(event_of("igwn/userguide/MS181101ab-initial.json"), [rule], ["isgri"]).action == "skip"


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
