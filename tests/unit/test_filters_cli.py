"""``mma-broker filters list|test|why`` (filters/cli.py) on real alerts.

``filters test`` runs through typer's CliRunner on the plugin's own Typer (settings from
the environment, as ``mma-broker`` gives them) and, where a plugin must be installed for
the run (a filter that raises or loops), as a subprocess with a real ``*.dist-info`` on
``PYTHONPATH``. Expected decisions come from the Avro files read with fastavro
(tests/unit/test_example_filter.py holds the rule).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from filters.cli import app, parse_set
from tests.conftest import DATA, ROOT
from tests.unit.test_example_filter import expected, raw_candidates

DEMO_ZTF = ROOT / "broker/data/demo/ztf"
MULTI = DEMO_ZTF / "fink-client/avro_multi_alerts_other.avro"
GW_JSON = ROOT / "broker/data/demo/igwn/userguide/MS181101ab-preliminary.json"
PREFIX = "mma-broker: error: "


def run(*args, env: dict[str, str] | None = None):
    clean = {k: None for k in os.environ if k.startswith("MMA_BROKER_")}
    return CliRunner().invoke(app, [str(a) for a in args], env={**clean, **(env or {})})


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------ --set
@pytest.mark.parametrize("items, want", [
    (["a=1"], {"a": 1}),
    (["a=1.5e-8", "b=true", "c=null"], {"a": 1.5e-8, "b": True, "c": None}),
    (['a=["x", 2]', 'b={"k": 1}'], {"a": ["x", 2], "b": {"k": 1}}),
    (["a=hello", "b=", "c=x=y"], {"a": "hello", "b": "", "c": "x=y"}),
    (['a="19"'], {"a": "19"}),
])
def test_set_values_are_json_when_they_parse_else_strings(items, want):
    assert parse_set(items) == want


@pytest.mark.parametrize("items, named", [
    (["novalue"], "'novalue'"), (["=3"], "'=3'"), (["a=1", "a=2"], "a: given twice"),
    (["a=NaN"], "a:"), (["a=-Infinity"], "a:"), (["a=1e999"], "a:"), (["a=[1, NaN]"], "a:"),
])
def test_bad_set_items_are_refused_by_name(items, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        parse_set(items)


# ------------------------------------------------------------------ test --json on real alerts
def test_json_gives_exactly_id_accepted_reason_for_every_alert_of_every_file():
    result = run("test", "bright-ztf", MULTI, DEMO_ZTF / "kowalski", GW_JSON, "--json")
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    raw = raw_candidates()
    ztf = [d for d in lines if d["id"].startswith("ztf:")]
    assert len(ztf) == 3 + 3  # the three alerts of the multi-alert file, and the folder's three files
    for d in ztf:
        assert list(d) == ["id", "accepted", "reason"]
        assert d["reason"] == expected(raw[d["id"]]) and d["accepted"] == (d["reason"] == "bright_candidate")
    (gw,) = [d for d in lines if not d["id"].startswith("ztf:")]
    assert gw == {"id": "igwn:MS181101ab:preliminary:20181101T223449Z", "accepted": False,
                  "reason": "source_not_handled"}


def test_set_changes_the_decisions_and_is_validated():
    raw = raw_candidates()
    result = run("test", "bright-ztf", DEMO_ZTF, "--json", "--set", "max_magpsf_mag=18.1", "--set", "min_rb=0.6")
    assert result.exit_code == 0, result.stderr
    got = {d["id"]: d["reason"] for d in json_lines(result.stdout)}
    assert got == {i: expected(raw[i], max_mag=18.1, min_rb=0.6) for i in got}
    assert got["ztf:2475433850015015000"] == "bright_candidate"  # rb 0.614: rejected with the defaults
    assert got["ztf:472263571115115000"] == "too_faint"  # 18.36 mag: accepted with the defaults


@pytest.mark.parametrize("sets, named", [
    (["max_mag=18"], "--set max_mag: filter 'bright-ztf' has no parameter 'max_mag' (its parameters: max_magpsf_mag"),
    (["min_rb=2"], "min_rb: Input should be less than or equal to 1"),
    (["min_rb=NaN"], "--set min_rb: 'NaN' is not a finite number"),
    (["min_rb=lots"], "min_rb: Input should be a valid number"),
    (["min_rb"], "expected KEY=VALUE"),
])
def test_a_bad_set_is_one_error_line_naming_the_key_and_nothing_runs(sets, named):
    args = [a for s in sets for a in ("--set", s)]
    result = run("test", "bright-ztf", DEMO_ZTF, "--json", *args)
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(PREFIX) and named in line


def test_an_unknown_filter_is_one_error_line_listing_the_installed_ones():
    result = run("test", "no-such-filter", DEMO_ZTF)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert "no filter plugin 'no-such-filter'" in line and "bright-ztf" in line


def test_text_output_is_a_table_with_the_decisions_and_a_count():
    result = run("test", "bright-ztf", DEMO_ZTF)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("filter bright-ztf (plugin bright-ztf 1, config hash ")
    assert "ztf:472263571115115000" in out and "bright_candidate" in out and "magpsf 18.36 mag, rb 0.84" in out
    assert "rb 0.614 < 0.65" in out and out.rstrip().endswith("8 alert(s), 1 accepted")


def test_an_enabled_instance_is_tested_with_its_parameters_then_set_over_them():
    raw = raw_candidates()
    env = {"MMA_BROKER_FILTERS__FILTERS": json.dumps([{"name": "my-bright", "plugin": "bright-ztf",
                                                        "params": {"max_magpsf_mag": 18.1, "min_rb": 0.6}}])}
    got = {d["id"]: d["reason"] for d in json_lines(run("test", "my-bright", DEMO_ZTF, "--json", env=env).stdout)}
    assert got == {i: expected(raw[i], max_mag=18.1, min_rb=0.6) for i in got} and len(got) == 8
    result = run("test", "my-bright", DEMO_ZTF, "--json", "--set", "min_rb=0.65", env=env)
    got = {d["id"]: d["reason"] for d in json_lines(result.stdout)}
    assert got == {i: expected(raw[i], max_mag=18.1, min_rb=0.65) for i in got}


# ------------------------------------------------------------------ hostile input
@pytest.fixture()
def hostile(tmp_path) -> dict[str, Path]:
    files = {
        "text": ("notes.txt", b"hello, not an alert\n"),
        "nan": ("nan.json", b'{"superevent_id": "S1", "alert_type": "PRELIMINARY", "x": NaN}'),
        "nested": ("nested.json", b"[" * 200_000),
        "hugeint": ("hugeint.json", b'{"x": ' + b"9" * 100_000 + b"}"),
        "unicode": ("bad\udcffname.json".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape"),
                    b'{"\xff\xfe": "\xed\xa0\x80"}'),
        "avro": ("random.avro", b"Obj\x01" + os.urandom(5000)),
        "empty": ("empty.json", b""),
        "huge": ("huge.json", b'{"a": "' + b"x" * (65 * 1024 * 1024) + b'"}'),
    }
    out = {}
    for key, (name, data) in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        out[key] = p
    (tmp_path / "emptydir").mkdir()
    out["dir"] = tmp_path / "emptydir"
    out["missing"] = tmp_path / "missing.avro"
    return out


def test_hostile_files_are_one_error_line_each_and_the_real_alerts_go_on(hostile):
    real = DEMO_ZTF / "ztf-avro-alert/472263571115115000.avro"
    bad = list(hostile.values())
    result = run("test", "bright-ztf", bad[0], *bad[1:5], real, *bad[5:], "--json")
    assert result.exit_code == 1
    assert json_lines(result.stdout) == [{"id": "ztf:472263571115115000", "accepted": True,
                                          "reason": "bright_candidate"}]
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad)
    assert all(line.startswith(PREFIX) for line in lines)
    for key, path in hostile.items():
        name = path.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        (line,) = [ln for ln in lines if name in ln]
        assert len(line) < 700, line
    assert "\\xff" in next(ln for ln in lines if "bad" in ln)  # a file name that is not UTF-8, escaped
    assert "no alert files" in next(ln for ln in lines if "emptydir" in ln)
    assert "limit" in next(ln for ln in lines if "huge.json" in ln)


def test_a_folder_is_searched_for_alert_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    src = DEMO_ZTF / "kowalski/20231012/2475433850015015000.avro"
    (tmp_path / "a" / "b" / "one.avro").write_bytes(src.read_bytes())
    (tmp_path / "a" / "readme.md").write_text("not an alert suffix: skipped")
    result = run("test", "bright-ztf", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout) == [{"id": "ztf:2475433850015015000", "accepted": False,
                                          "reason": "rb_below_min"}]


# ------------------------------------------------------------------ isolation (installed plugins)
BROKEN = '''
from filters.api import Filter, FilterConfig, FilterResult

class Cfg(FilterConfig):
    pass

class Boom(Filter[Cfg]):
    """Raises on positive subtractions."""
    name = "zz-boom"
    sources = frozenset({"ztf"})

    def apply(self, alert):
        if alert.event.properties.get("isdiffpos"):
            raise RuntimeError("boom on " + alert.event.id)
        return FilterResult.reject("negative")

class Loop(Filter[Cfg]):
    """Never returns."""
    name = "zz-loop"

    def apply(self, alert):
        while True:
            pass
'''


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "zz_broken_filters.py").write_text(BROKEN)
    info = folder / "zz_broken_filters-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-broken-filters\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mma_broker.filters]\nzz-boom = zz_broken_filters:Boom\n"
                                           "zz-loop = zz_broken_filters:Loop\n")
    return folder


def _cli(plugins: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "broker", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_filter_that_raises_is_isolated_per_alert_and_fails_the_run(broken_plugins):
    proc = _cli(broken_plugins, "filters", "test", "zz-boom", str(DEMO_ZTF), "--json")
    assert proc.returncode == 1
    lines = json_lines(proc.stdout)
    raw = raw_candidates()
    assert len(lines) == 8
    for d in lines:
        positive = raw[d["id"]]["isdiffpos"] in ("t", "1")
        assert d == {"id": d["id"], "accepted": False, "reason": "error" if positive else "negative"}
    errors = proc.stderr.splitlines()
    assert len(errors) == sum(d["reason"] == "error" for d in lines) == 3
    assert all(e.startswith(PREFIX) and "filter zz-boom: raised: RuntimeError: boom on ztf:" in e for e in errors)


def test_a_filter_that_never_returns_is_stopped_by_the_watchdog(broken_plugins):
    proc = _cli(broken_plugins, "filters", "test", "zz-loop", str(MULTI), "--json", "--time-budget-ms", "2")
    assert proc.returncode == 1
    assert [d["reason"] for d in json_lines(proc.stdout)] == ["error"] * 3
    assert all("timeout: stopped after 100 ms" in e for e in proc.stderr.splitlines())


# ------------------------------------------------------------------ list
def test_list_shows_the_plugins_with_their_parameters_and_the_enabled_instances():
    from filters.registry import filter_class

    env = {"MMA_BROKER_FILTERS__FILTERS": json.dumps([{"name": "my-bright", "plugin": "bright-ztf",
                                                        "params": {"max_magpsf_mag": 18.5}, "time_budget_ms": 5}])}
    result = run("list", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    plugins = {r["name"]: r for r in rows if r["kind"] == "plugin"}
    assert "bright-ztf" in plugins and "followup-rule" in plugins
    b = plugins["bright-ztf"]
    assert b["package"] == "mma-broker-example-filter" and b["version"] == "1" and b["sources"] == ["ztf"]
    params = {p["name"]: p for p in b["parameters"]}
    assert params["max_magpsf_mag"]["default"] == 19.0 and params["max_magpsf_mag"]["bounds"] == ">= 5.0, <= 30.0"
    assert params["min_rb"]["doc"].startswith("Lowest random-forest RealBogus score accepted")
    assert params["min_drb"]["default"] is None and params["min_drb"]["type"] == "float | None"
    (inst,) = [r for r in rows if r["kind"] == "enabled"]
    assert inst["name"] == "my-bright" and inst["topic"] == "mma.filter.my-bright" and inst["time_budget_ms"] == 5
    assert inst["config_hash"] == filter_class("bright-ztf").from_params({"max_magpsf_mag": 18.5}).config_hash

    text = run("list", env=env).stdout
    assert "bright-ztf 1 (mma-broker-example-filter: mma_example_filter.bright:BrightZtf)" in text
    assert "  max_magpsf_mag: float = 19.0 (>= 5.0, <= 30.0)\n      Faintest PSF-fit magnitude accepted" in text
    assert "  my-bright: plugin bright-ztf -> mma.filter.my-bright, budget 5 ms, config hash " in text


def test_list_reports_an_enabled_filter_with_bad_parameters():
    env = {"MMA_BROKER_FILTERS__FILTERS": json.dumps([{"name": "my-bright", "plugin": "bright-ztf",
                                                        "params": {"max_mag": 18.5}}])}
    result = run("list", env=env)
    assert result.exit_code == 1
    assert "BAD PARAMETERS" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(PREFIX + "[filters] my-bright: filter 'bright-ztf': bad parameters: max_mag")


# ------------------------------------------------------------------ why (real PostgreSQL)
def test_why_prints_every_archived_decision_live_first(fresh_db, tmp_path):
    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from broker.sources import decode
    from filters.api import FilterInput
    from filters.engine import ConfiguredFilter, FilterSet
    from filters.registry import filter_class
    from filters.store import DecisionStore, decision_rows

    archive = Archive(fresh_db, raw_store=PostgresRawStore())
    archive.migrate()
    data = (DEMO_ZTF / "ztf-avro-alert/472263571115115000.avro").read_bytes()
    (ev,) = decode(data)
    cls = filter_class("bright-ztf")
    fs = FilterSet([ConfiguredFilter("bright-ztf", cls.from_params({})),
                    ConfiguredFilter("bright-strict", cls.from_params({"max_magpsf_mag": 18.0}))])
    store = DecisionStore(archive.engine)
    store.put_many(decision_rows(ev.id, fs.evaluate(FilterInput(ev, {}, raw=data))))
    store.put_many(decision_rows(ev.id, fs.evaluate(FilterInput(ev, {}, raw=data))[:1], run="rerun-test"))
    archive.close()
    env = {"MMA_BROKER_ARCHIVE__DATABASE_URL": fresh_db, "MMA_BROKER_HOME": str(tmp_path)}

    result = run("why", ev.id, "--json", env=env)
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [(r["run"], r["filter"], r["accepted"], r["reason"]) for r in rows] == [
        ("live", "bright-strict", False, "too_faint"), ("live", "bright-ztf", True, "bright_candidate"),
        ("rerun-test", "bright-ztf", True, "bright_candidate")]
    assert rows[0]["detail"] == "magpsf 18.36 > 18 mag" and rows[1]["tags"] == ["bright"]

    text = run("why", ev.id, env=env).stdout
    assert text.startswith(f"{ev.id}: 3 decision(s), 2 accepted") and "magpsf 18.36 > 18 mag" in text
    only = json_lines(run("why", ev.id, "--json", "--run", "rerun-test", env=env).stdout)
    assert [r["run"] for r in only] == ["rerun-test"]

    missing = run("why", "ztf:1", env=env)
    assert missing.exit_code == 1 and missing.stderr.strip() == PREFIX + "ztf:1: no such Event in the archive"


# ------------------------------------------------------------------ run (time machine)
@pytest.mark.parametrize("args, named", [
    (["--since", "yesterday", "--until", "2030-01-01"], "--since 'yesterday': not an ISO 8601 time"),
    (["--since", "2030-01-01", "--until", "2020-01-01"], "is not before --until"),
    (["--since", "2020-01-01", "--until", "2030-01-01", "--to-topic", "x", "--out", "y.jsonl"],
     "give --to-topic or --out, not both"),
    (["--since", "2020-01-01", "--until", "2030-01-01", "--set", "max_mag=1"], "--set max_mag: filter 'bright-ztf' "
                                                                              "has no parameter 'max_mag'"),
])
def test_run_refuses_bad_options_in_one_line(args, named, tmp_path):
    result = run("run", "bright-ztf", *args, env={"MMA_BROKER_HOME": str(tmp_path)})
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(PREFIX) and named in line


def test_run_re_decides_the_archived_alerts_of_a_period_to_a_file(fresh_db, tmp_path):
    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from broker.archive.rows import ArchiveItem
    from broker.sources import decode

    archive = Archive(fresh_db, raw_store=PostgresRawStore())
    archive.migrate()
    items = []
    for path in sorted(DEMO_ZTF.rglob("*.avro")):
        data = path.read_bytes()
        items += [ArchiveItem(ev, data) for ev in decode(data)]
    archive.write_batch(items)
    archive.close()
    raw = raw_candidates()
    times = {it.event.id: it.event.time for it in items}
    since, until = "2019-01-01T00:00:00Z", "2024-01-01T00:00:00Z"
    in_period = {i for i, t in times.items() if since <= t < until}
    assert 0 < len(in_period) < len(items)  # the period leaves some out
    env = {"MMA_BROKER_ARCHIVE__DATABASE_URL": fresh_db, "MMA_BROKER_HOME": str(tmp_path),
           "MMA_BROKER_ARCHIVE__RAW_STORE": "postgres"}
    out = tmp_path / "rerun.jsonl"
    result = run("run", "bright-ztf", "--since", since, "--until", until, "--set", "min_rb=0.6", "--out", out,
                 "--json", env=env)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    want = {i for i in in_period if expected(raw[i], min_rb=0.6) == "bright_candidate"}
    assert summary["alerts"] == len(in_period) and summary["accepted"] == {"bright-ztf": len(want)}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in records} == want and len(want) >= 1
    assert summary["not_redecoded"] == 0 and "ztf:2475433850015015000" in want  # rb 0.614: --set applied
    for r in records:
        assert r["rerun"]["id"] == summary["run_id"] and r["filter"]["version"] == "1"
        assert r["filter"]["config_hash"] == summary["filters"]["bright-ztf"]["config_hash"]
    why = json_lines(run("why", sorted(want)[0], "--json", "--run", summary["run_id"], env=env).stdout)
    assert [(d["filter"], d["accepted"], d["reason"]) for d in why] == [("bright-ztf", True, "bright_candidate")]


# ------------------------------------------------------------------ offline enrichment
def test_offline_localizations_are_the_ones_the_store_keeps(fresh_db):
    """filters test's localization id, areas and tiles equal LocalizationStore.put's on
    a real sky map (IGWN), a GCN error circle and a ZTF position; the group counts the
    revisions given in order."""
    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from broker.enrich.localization import extract_localization
    from broker.enrich.store import LocalizationStore
    from broker.sources import decode
    from filters.offline import OfflineEnricher

    archive = Archive(fresh_db, raw_store=PostgresRawStore())
    archive.migrate()
    store = LocalizationStore(archive.engine)
    enricher = OfflineEnricher({"component": "test"})
    files = [GW_JSON, ROOT / "broker/data/demo/igwn/userguide/MS181101ab-2-Preliminary.xml",
             DATA / "voevent/pygcn/gbm_flt_pos.xml", DEMO_ZTF / "ztf-avro-alert/472263571115115000.avro"]
    got = []
    for path in files:
        data = path.read_bytes()
        (ev,) = decode(data)
        enrichment = enricher.enrich(ev, data)
        got.append(enrichment)
        sky = extract_localization(ev, data)
        if enrichment["localization"]["from_event"] is None:  # the VOEvent gives no map: its group's
            assert enrichment["localization"]["from_group"] == "igwn:MS181101ab"
            assert enrichment["localization"]["id"] == got[0]["localization"]["id"]
            continue
        ref = store.put(ev.id, sky)
        assert enrichment["localization"] == ref.to_json_dict() | {"from_event": ev.id}
    archive.engine.dispose()
    assert got[0]["localization"]["kind"] == "skymap" and got[0]["localization"]["area_90_deg2"] > 0
    assert [g["group"]["revision"] for g in got[:2]] == [1, 2] and got[1]["group"]["n_revisions"] == 2
    assert all(g["crossmatch"] == {} and g["coincidences"] == [] and g["error"] is None for g in got)
