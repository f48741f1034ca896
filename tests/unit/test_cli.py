"""The ``mma-broker`` command line without servers: ``inspect`` on real files and
``--help`` of every command.

Exit codes and stderr are checked through a subprocess (``python -m broker``, i.e.
``main()``, which is what a user runs); help pages in-process with typer's CliRunner.
Expected values are read from the files with fastavro, json, lxml and astropy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fastavro
import pytest
import typer
from astropy.time import Time
from lxml import etree
from typer.testing import CliRunner

from broker.cli import app
from tests.conftest import ROOT as REPO_ROOT

DATA = REPO_ROOT / "tests" / "data"
ZTF_MULTI = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
GBM = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
IGWN = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json"
BAD = DATA / "hermes" / "hop-client" / "example_blob.txt"
MISSING = DATA / "no-such-alert.json"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker", *map(str, args)], env=_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def _ms(t: str) -> float:
    return Time(t.rstrip("Z"), format="isot", scale="utc").mjd * 86400e3


def _check_ztf(lines: list[dict]) -> None:
    with ZTF_MULTI.open("rb") as fh:
        recs = list(fastavro.reader(fh))
    assert len(lines) == len(recs) > 1
    for ev, rec in zip(lines, recs):
        cand = rec["candidate"]
        assert ev["id"] == f"ztf:{cand['candid']}"
        assert ev["upstream_id"] == rec["objectId"]
        assert (ev["source"], ev["format"]) == ("ztf", "avro")
        assert ev["localization"]["type"] == "point"
        assert ev["localization"]["ra"] == pytest.approx(cand["ra"], abs=1e-9)
        assert ev["localization"]["dec"] == pytest.approx(cand["dec"], abs=1e-9)
        assert abs(_ms(ev["time"]) - Time(cand["jd"], format="jd", scale="utc").mjd * 86400e3) < 1.0


def _check_gbm(ev: dict) -> None:
    root = etree.parse(str(GBM)).getroot()

    def text(local: str) -> str:
        return root.xpath(f"//*[local-name()='{local}']/text()")[0].strip()

    assert ev["id"].endswith(root.get("ivorn"))
    assert (ev["source"], ev["format"], ev["mission"]) == ("gcn", "voevent", "Fermi")
    assert ev["localization"]["ra"] == pytest.approx(float(text("C1")))
    assert ev["localization"]["dec"] == pytest.approx(float(text("C2")))
    assert ev["localization"]["error_radius"] == pytest.approx(float(text("Error2Radius")))
    assert abs(_ms(ev["time"]) - _ms(text("ISOTime"))) < 1.0


def _check_igwn(ev: dict) -> None:
    raw = json.loads(IGWN.read_text())
    assert ev["id"].startswith("igwn:" + raw["superevent_id"])
    assert ev["upstream_id"] == raw["superevent_id"]
    assert ev["alert_type"] == raw["alert_type"].lower()
    assert ev["properties"]["far_hz"] == pytest.approx(raw["event"]["far"])
    assert abs(_ms(ev["time"]) - _ms(raw["event"]["time"])) < 1.0
    assert ev["localization"]["type"] == "healpix"


# ---------------------------------------------------------------- inspect
@pytest.fixture(scope="module")
def mixed_run() -> subprocess.CompletedProcess:
    return _cli("inspect", "--json", ZTF_MULTI, BAD, GBM, MISSING, IGWN)


def test_inspect_json_prints_one_object_per_alert(mixed_run):
    lines = [json.loads(line) for line in mixed_run.stdout.splitlines()]
    n_ztf = len(list(fastavro.reader(ZTF_MULTI.open("rb"))))
    assert len(lines) == n_ztf + 2
    _check_ztf(lines[:n_ztf])
    _check_gbm(lines[n_ztf])
    _check_igwn(lines[n_ztf + 1])


def test_inspect_bad_files_give_one_line_each_on_stderr(mixed_run):
    err_lines = [ln for ln in mixed_run.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 2, mixed_run.stderr
    assert err_lines[0].startswith(f"mma-broker: error: {BAD}: ") and "unknown format" in err_lines[0]
    assert err_lines[1].startswith(f"mma-broker: error: {MISSING}: ")
    assert "Traceback" not in mixed_run.stderr


def test_inspect_exit_code_is_1_when_a_file_fails(mixed_run):
    assert mixed_run.returncode == 1, (mixed_run.stdout[-500:], mixed_run.stderr)


def test_inspect_good_files_exit_0():
    proc = _cli("inspect", "--json", GBM, IGWN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    _check_gbm(lines[0])
    _check_igwn(lines[1])


def test_usage_error_is_exit_2_with_usage():
    """A missing argument is a usage error (click's convention: exit 2, usage text)."""
    proc = _cli("inspect")
    assert proc.returncode == 2, proc.stderr
    assert "Usage" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- one error format
@pytest.mark.parametrize("args, says", [
    (["inspect"], "Missing argument"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["--bogus"], "No such option: --bogus"),
    (["events", "list", "--limit", "abc"], "'--limit'"),
    (["subscribe", "mma.events", "--timeout", "nan"], "'--timeout': nan: expected a finite number"),
    (["subscribe", "mma.events", "--timeout", "1e999"], "'--timeout'"),
    (["subscribe", "bad topic"], "a Kafka topic name"),
    (["subscribe", "mma.events", "--max", "-3"], "'--max'"),
    (["subscribe", "mma.events", "--group", "\x1b]0;x\x07"], "'--group'"),
    (["subscribe", "mma.events", "--group", "\udcff"], "'--group'"),
    (["dlq", "raw", "--", "-1"], "'offset'"),
    (["dlq", "raw", "1", "--partition", "99999999999999"], "'--partition'"),
    (["events", "list", "--limit", "1000000000000000000000"], "'--limit'"),
])
def test_usage_errors_keep_the_hint_and_print_one_error_line(args, says):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("Usage: ") and lines[1].startswith("Try '") and lines[1].endswith(" --help' for help.")
    assert len(lines) == 3 and lines[2].startswith("mma-broker: error: ") and says in lines[2], proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr


@pytest.mark.parametrize("args, says", [
    (["events", "list", "--since", "yesterday"], "--since 'yesterday': expected an ISO 8601"),
    (["events", "list", "--since", "\udcff"], "--since"),
    (["events", "list", "--category", "GRB!"], "unknown category 'GRB!'"),
    (["subscribe", "mma.events", "--since", "2023-02-30"], "--since '2023-02-30': expected an ISO 8601"),
    (["subscribe", "mma.events", "--since", "1969-07-20T20:17Z"], "before 1970"),
    (["followup", "results", "--limit", "0"], "'--limit'"),
    (["events", "show", ""], "'EVENT_ID'"),
    (["events", "show", "x" * 100_000], "'EVENT_ID'"),
    (["events", "show", "igwn:\udcff"], "'EVENT_ID'"),
    (["followup", "results", "--upstream-id", ""], "--upstream-id"),
])
def test_bad_values_are_refused_before_any_server_is_asked(args, says):
    """Nothing listens at 127.0.0.1:1: an error naming Kafka or the database would
    mean the value was not checked first."""
    env = dict(_env(), MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
               MMA_BROKER_ARCHIVE__DATABASE_URL="postgresql+psycopg://u:p@127.0.0.1:1/none")
    proc = subprocess.run([sys.executable, "-m", "broker", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode in (1, 2), proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("mma-broker: error: ") and says in last, proc.stderr
    assert "127.0.0.1" not in proc.stderr and "did not answer" not in proc.stderr and "Traceback" not in proc.stderr


def test_error_lines_are_one_printable_line_each():
    from broker.errors import cli_error_lines

    assert cli_error_lines(KeyError("candidate\nsecond line")) == ["mma-broker: error: KeyError: 'candidate\\nsecond line'"]
    assert cli_error_lines(ValueError("a\x1b[2Jb")) == ["mma-broker: error: ValueError: a\\x1b[2Jb"]
    from broker.config import SettingsError

    assert cli_error_lines(SettingsError("invalid setting a: x\ninvalid setting b: y")) == [
        "mma-broker: error: invalid setting a: x", "mma-broker: error: invalid setting b: y"]


def test_inspect_human_output_one_line_per_alert():
    result = CliRunner().invoke(app, ["inspect", str(GBM), str(ZTF_MULTI)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    with ZTF_MULTI.open("rb") as fh:
        recs = list(fastavro.reader(fh))
    assert len(lines) == 1 + len(recs)
    ivorn = etree.parse(str(GBM)).getroot().get("ivorn")
    assert lines[0].startswith(f"{GBM}: ") and ivorn in lines[0] and "RA " in lines[0]
    for line, rec in zip(lines[1:], recs):
        assert line.startswith(f"{ZTF_MULTI}: ztf:{rec['candidate']['candid']}")


# ---------------------------------------------------------------- help
def _command_paths(group, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append(prefix + (name,))
        if hasattr(cmd, "commands"):
            out += _command_paths(cmd, prefix + (name,))
    return out


def test_top_level_help_lists_every_command():
    proc = _cli("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("inspect", "replay", "run", "subscribe", "events", "followup"):
        assert name in proc.stdout
    proc = _cli("followup", "--help")
    assert proc.returncode == 0, proc.stderr


def test_help_of_every_command():
    paths = _command_paths(typer.main.get_command(app))
    assert {p[0] for p in paths} >= {"inspect", "replay", "run", "subscribe", "events"}
    assert ("events", "list") in paths and ("events", "show") in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path


def test_help_of_every_followup_command():
    import followup.cli as followup_cli
    paths = _command_paths(typer.main.get_command(followup_cli.app))
    assert paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(followup_cli.app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path
