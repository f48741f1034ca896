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


# ------------------------------------------------------------------ followup request / show
import subprocess  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from broker.errors import BrokerError  # noqa: E402
from followup.cli import check_name, parse_position, parse_t0, read_user_skymap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BAYESTAR = ROOT / "tests/data/igwn/userguide/bayestar.multiorder.fits"


@pytest.mark.parametrize("text, iso", [
    ("2023-03-07T15:44:06.67", "2023-03-07T15:44:06.670Z"),
    ("2023-03-07T15:44:06.67Z", "2023-03-07T15:44:06.670Z"),
    ("2023-03-07 15:44:06.67", "2023-03-07T15:44:06.670Z"),
    ("2023-03-07T17:44:06.67+02:00", "2023-03-07T15:44:06.670Z"),
])
def test_t0_forms(text, iso):
    assert parse_t0(text) == iso


@pytest.mark.parametrize("text, why", [
    ("yesterday", "not an ISO 8601"), ("2023-03-07", "not an ISO 8601"), ("2023-13-07T00:00:00", "not an ISO 8601"),
    ("1850-01-01T00:00:00", "outside 1900..now"), ("2031-01-01T00:00:00", "outside 1900..now"),
])
def test_t0_refused(text, why):
    with pytest.raises(BrokerError, match=why):
        parse_t0(text, now=datetime(2030, 1, 1, tzinfo=timezone.utc))


def test_position():
    loc = parse_position(60.85935, -75.3788, 3.4 / 3600)
    assert (loc.ra, loc.dec, loc.containment) == (60.85935, -75.3788, 0.9)
    assert parse_position(None, None, None) is None


@pytest.mark.parametrize("ra, dec, err, why", [
    (10.0, None, 1.0, "--dec missing"),
    (None, None, 1.0, "--ra and --dec missing"),
    (float("nan"), 0.0, 1.0, "--ra nan: not a finite number"),
    (10.0, 0.0, float("inf"), "--error-deg inf: not a finite number"),
    (361.0, 0.0, 1.0, r"right ascension must be in \[0, 360\]"),
    (-1.0, 0.0, 1.0, r"right ascension must be in \[0, 360\]"),
    (10.0, 90.5, 1.0, r"declination must be in \[-90, 90\]"),
    (10.0, 0.0, 0.0, "error radius must be > 0"),
    (10.0, 0.0, -2.0, "error radius must be > 0"),
])
def test_position_refused(ra, dec, err, why):
    with pytest.raises(BrokerError, match=why):
        parse_position(ra, dec, err)


def test_skymap_multiorder_and_flat(tmp_path):
    data, loc = read_user_skymap(BAYESTAR)
    assert data == BAYESTAR.read_bytes() and loc.type == "healpix" and 0 < loc.area_50 < loc.area_90
    # the same map written flat (NESTED, nside 32) reads too
    import astropy_healpix as ah
    import numpy as np
    from astropy.io import fits

    from broker.skymap import read_multiorder

    uniq, density, _ = read_multiorder(data)
    level, ipix = ah.uniq_to_level_ipix(uniq)
    order = 7  # nside 128: 0.2 deg² pixels
    nside = 1 << order
    flat = np.zeros(12 * nside * nside)
    for lv, p, d in zip(level.tolist(), ipix.tolist(), density.tolist()):
        if lv >= order:  # a finer pixel adds its probability to its parent
            flat[p >> (2 * (lv - order))] += d * ah.nside_to_pixel_area(1 << lv).value
        else:  # a coarser pixel spreads its density over its children
            n = 4 ** (order - lv)
            flat[p * n:(p + 1) * n] += d * ah.nside_to_pixel_area(nside).value
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="PROB", format="D", array=flat)])
    hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=nside, INDXSCHM="IMPLICIT", COORDSYS="C")
    path = tmp_path / "flat.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    _, flat_loc = read_user_skymap(path)
    assert flat_loc.area_90 == pytest.approx(loc.area_90, rel=0.1)  # one resolution, same map


@pytest.mark.parametrize("content, why", [
    (None, "cannot read it"),
    (b"SIMPLE  = not really", "not a readable HEALPix sky map"),
    (b"hello", "not a readable HEALPix sky map"),
])
def test_skymap_refused(tmp_path, content, why):
    path = tmp_path / "map.fits"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BrokerError, match=why):
        read_user_skymap(path)


def test_names():
    assert check_name(" GRB 230307A ") == "GRB 230307A" and check_name(None) is None
    for bad in ("", "   ", "a\x1bb", "x" * 257):
        with pytest.raises(BrokerError, match="--name"):
            check_name(bad)


@pytest.mark.parametrize("args, says", [
    (["--t0", "soon"], "--t0 'soon': not an ISO 8601"),
    (["--t0", "2023-03-07T15:44:06.67", "--ra", "nan", "--dec", "1", "--error-deg", "1"], "--ra nan"),
    (["--t0", "2023-03-07T15:44:06.67", "--ra", "10", "--dec", "-91", "--error-deg", "1"], "declination"),
    (["--t0", "2023-03-07T15:44:06.67", "--ra", "10", "--dec", "1", "--error-deg", "1", "--skymap",
      str(BAYESTAR)], "either --ra/--dec/--error-deg or --skymap"),
    (["--t0", "2023-03-07T15:44:06.67", "--skymap", "/nonexistent/map.fits"], "cannot read it"),
    (["--t0", "2023-03-07T15:44:06.67", "--analysis", "xrt"], "choose from spiacs, isgri"),
])
def test_request_errors_are_one_line_before_any_server(args, says, tmp_path):
    """Refused before Kafka or the database is contacted (none is configured here)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MMA_BROKER_HOME": str(tmp_path / "home"),
           "MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "broker", "followup", "request", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mma-broker: error: ") and says in lines[0]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())
