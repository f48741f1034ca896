"""The example plugin package (examples/mma-broker-example-filter): installed by the test
command (deploy/setup.sh), found through its entry point like any user's plugin, and
deciding on the repository's real ZTF alerts exactly as its documented rule says — the
expected decisions are computed here from the Avro files with fastavro, not with our
decoders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import fastavro
import pytest

from broker.sources import decode
from filters.api import FilterConfigError, FilterInput
from filters.engine import ConfiguredFilter, FilterSet
from filters.registry import available, filter_class
from tests.conftest import DATA, ROOT

ZTF_FILES = sorted({*(DATA / "ztf").rglob("*.avro"), *(ROOT / "broker/data/demo/ztf").rglob("*.avro")})


def expected(candidate: dict, *, max_mag: float = 19.0, min_rb: float = 0.65, min_sso_arcsec: float = 20.0) -> str:
    """The rule of mma_example_filter/bright.py, from the raw Avro candidate."""
    if candidate["isdiffpos"] not in ("t", "1"):
        return "negative_subtraction"
    if candidate["magpsf"] > max_mag:
        return "too_faint"
    if candidate["rb"] is None or candidate["rb"] < min_rb:
        return "rb_below_min"
    sso = candidate["ssdistnr"]
    if sso is not None and 0 <= sso < min_sso_arcsec:
        return "known_solar_system_object"
    return "bright_candidate"


def raw_candidates() -> dict[str, dict]:
    out = {}
    for path in ZTF_FILES:
        with open(path, "rb") as fh:
            for rec in fastavro.reader(fh):
                out[f"ztf:{rec['candid']}"] = rec["candidate"]
    return out


def test_the_installed_entry_point_is_found_by_the_registry():
    eps = [ep for ep in entry_points(group="mma_broker.filters") if ep.name == "bright-ztf"]
    assert len(eps) == 1 and eps[0].dist.name == "mma-broker-example-filter"
    assert available()["bright-ztf"] == "mma_example_filter.bright:BrightZtf"
    cls = filter_class("bright-ztf")
    assert cls.__module__ == "mma_example_filter.bright" and cls.sources == frozenset({"ztf"})
    assert set(cls.Config.model_fields) == {"max_magpsf_mag", "min_rb", "min_drb", "min_sso_dist_arcsec",
                                            "require_positive_subtraction"}


@pytest.mark.parametrize("params, key", [
    ({"max_mag": 18}, "max_mag"),
    ({"min_rb": 1.5}, "min_rb"),
    ({"min_rb": float("nan")}, "min_rb"),
    ({"min_sso_dist_arcsec": -1}, "min_sso_dist_arcsec"),
])
def test_bad_parameters_are_refused_naming_the_key(params, key):
    with pytest.raises(FilterConfigError, match=key):
        filter_class("bright-ztf").from_params(params)


@pytest.mark.parametrize("params", [{}, {"max_magpsf_mag": 18.5, "min_rb": 0.6}, {"min_sso_dist_arcsec": 0.0},
                                    {"max_magpsf_mag": 20.5, "min_rb": 0.5}])
def test_decisions_on_every_real_ztf_alert_match_the_rule_computed_with_fastavro(params):
    raw = raw_candidates()
    f = filter_class("bright-ztf").from_params(params)
    fs = FilterSet([ConfiguredFilter("bright-ztf", f)])
    got = {}
    for path in ZTF_FILES:
        data = path.read_bytes()
        for ev in decode(data):
            (d,) = fs.evaluate(FilterInput(ev, {}, raw=data))
            assert d.error is None
            got[ev.id] = d.reason
    want = {eid: expected(c, max_mag=params.get("max_magpsf_mag", 19.0), min_rb=params.get("min_rb", 0.65),
                          min_sso_arcsec=params.get("min_sso_dist_arcsec", 20.0)) for eid, c in raw.items()}
    assert got == want
    assert len(got) >= 30
    if not params:  # the defaults both accept and reject real alerts, for each reason
        assert {"bright_candidate", "negative_subtraction", "too_faint", "rb_below_min",
                "known_solar_system_object"} <= set(got.values())


def test_other_sources_never_reach_the_filter():
    data = (ROOT / "broker/data/demo/igwn/userguide/MS181101ab-preliminary.json").read_bytes()
    fs = FilterSet([ConfiguredFilter("bright-ztf", filter_class("bright-ztf").from_params({}))])
    assert fs.evaluate(FilterInput(decode(data)[0], {}, raw=data)) == []
    assert fs.stats["bright-ztf"].skipped_source == 1 and fs.stats["bright-ztf"].calls == 0


def test_the_test_command_on_real_alerts_as_a_user_runs_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    demo = ROOT / "broker/data/demo/ztf"
    proc = subprocess.run([sys.executable, "-m", "broker", "filters", "test", "bright-ztf", str(demo), "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    raw = raw_candidates()
    demo_ids = {f"ztf:{r['candid']}" for p in demo.rglob("*.avro") for r in fastavro.reader(p.open("rb"))}
    assert {d["id"] for d in lines} == demo_ids and len(lines) == len(demo_ids) == 8
    for d in lines:
        assert d == {"id": d["id"], "accepted": expected(raw[d["id"]]) == "bright_candidate",
                     "reason": expected(raw[d["id"]])}
    assert sum(d["accepted"] for d in lines) == 1
