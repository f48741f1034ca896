"""``followup excess`` CLI through typer's CliRunner on the followup sub-app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from followup.bundled import bundled_data_dir
from followup.cli import app

LC_PATH = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
CSV_PATH = LC_PATH.parent / "all_acs_ibas_triggers.csv"
T0 = "2023-03-07T15:44:06.67Z"


def _run(*args):
    return CliRunner().invoke(app, ["excess", *map(str, args)])


def test_json_output_keys_and_values(tmp_path):
    plot = tmp_path / "lc.png"
    result = _run(LC_PATH, "--t0", T0, "--json", "--theta-deg", "90", "--phi-deg", "10", "--plot", plot)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("detected", "best_time", "best_offset_s", "best_timescale_s", "best_snr", "fap", "upper_limits"):
        assert key in data
    assert data["detected"] is True
    assert data["best_time"].startswith("2023-03-07T15:44:") and data["best_time"].endswith("Z")
    assert 0 < data["best_offset_s"] < 15
    scales = [row["scale_s"] for row in data["upper_limits"]]
    assert scales == sorted(scales) and 1.0 in scales and 8.0 in scales
    for row in data["upper_limits"]:
        assert row["counts"] > 0 and row["fluence_erg_cm2"] > 0 and row["peak_flux_erg_cm2_s"] > 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_json_without_direction_has_counts_only():
    result = _run(LC_PATH, "--t0", T0, "--json", "--window", "100")
    data = json.loads(result.stdout)
    assert data["search_window_s"][1] == pytest.approx(100.0)
    assert all("fluence_erg_cm2" not in row for row in data["upper_limits"])


def test_text_output():
    result = _run(LC_PATH, "--t0", T0)
    assert result.exit_code == 0
    assert "most significant excess" in result.stdout


@pytest.mark.parametrize("args, named", [
    ((CSV_PATH, "--t0", T0), str(CSV_PATH)),
    ((LC_PATH, "--t0", "2020-01-01T00:00:00Z"), str(LC_PATH)),
    ((LC_PATH, "--t0", "yesterday"), "yesterday"),
])
def test_errors_are_one_line_and_exit_1(args, named):
    result = _run(*args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("mma-broker: error: ")
