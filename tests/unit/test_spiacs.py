"""SPI-ACS analysis entry point, sky-map limits, report text and plot on GRB 230307A."""

from __future__ import annotations

import json

import numpy as np
import pytest

from followup.bundled import bundled_data_dir
from followup.lightcurve import read_ogip_lightcurve
from followup.plot import plot_lightcurve
from followup.report import spiacs_summary_text
from followup.response import LONG_GRB_SPECTRUM, SHORT_GRB_SPECTRUM, energy_fluence_kev
from followup.spiacs import SkyDirection, _containment, run_spiacs_analysis

LC_PATH = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
T0 = "2023-03-07T15:44:06.67Z"
MAP = [SkyDirection(20.0, 0.0, 0.2), SkyDirection(90.0, 30.0, 0.5), SkyDirection(140.0, 200.0, 0.3)]


@pytest.fixture(scope="module")
def lightcurve():
    # Read with its own TIMEZERO reference: run_spiacs_analysis must re-reference to T0.
    return read_ogip_lightcurve(LC_PATH)


@pytest.fixture(scope="module")
def result(lightcurve):
    return run_spiacs_analysis(lightcurve, T0, MAP)


def _band_ratio(spectrum):
    return energy_fluence_kev(spectrum, (75, 2000)) / energy_fluence_kev(spectrum, (75, 1000))


def test_result_has_search_limits_and_provenance(result):
    assert result.t0_utc == "2023-03-07T15:44:06.670Z"
    assert result.excess.detected and 0 < result.excess.best_offset_s < 15
    assert "0912.5329" in result.response_source
    data = json.loads(json.dumps(result.to_dict()))
    assert data["params"]["search"]["search_half_window_s"] == 300.0
    assert len(data["limits"]) == len(result.excess.scales)


def test_physical_limits_follow_counts_and_response(result):
    one_s = result.limit_at(1.0)
    eight_s = result.limit_at(8.0)
    short = one_s.short_grb_fluence_erg_cm2
    assert short.best == pytest.approx(one_s.upper_limit_counts * 1e-10 * _band_ratio(SHORT_GRB_SPECTRUM), rel=1e-6)
    assert eight_s.long_grb_peak_flux_erg_cm2_s.best == pytest.approx(
        eight_s.upper_limit_counts * 1e-10 * _band_ratio(LONG_GRB_SPECTRUM) / 8.0, rel=1e-6)
    # The typical 1 s short-GRB limit of SPI-ACS is ~1e-7 erg/cm2 (INTEGRAL LVK circulars).
    assert 5e-8 < short.best < 3e-7
    # Fluence limits grow with the time scale, peak-flux limits fall.
    fluences = [row.short_grb_fluence_erg_cm2.best for row in result.limits]
    fluxes = [row.long_grb_peak_flux_erg_cm2_s.best for row in result.limits]
    assert np.all(np.diff(fluences) > 0) and np.all(np.diff(fluxes) < 0)
    assert short.calibrated_probability == pytest.approx(0.5)
    assert short.best_direction_quality == "calibrated"  # tie goes to the most probable sample
    assert short.n_directions == 3


def test_containment_levels():
    values = np.array([4.0, 1.0, 3.0, 2.0])
    weights = np.array([0.1, 0.4, 0.2, 0.3])
    # sorted: 1 (0.4), 2 (0.3 -> 0.7), 3 (0.2 -> 0.9), 4 (0.1 -> 1.0)
    assert _containment(values, weights, 0.5) == 2.0
    assert _containment(values, weights, 0.9) == 3.0
    assert _containment(values, weights, 0.4) == 1.0


def test_without_direction_only_counts(lightcurve):
    plain = run_spiacs_analysis(lightcurve, T0)
    assert all(row.short_grb_fluence_erg_cm2 is None for row in plain.limits)
    assert "counts" in spiacs_summary_text(plain)


def test_bad_direction_probability(lightcurve):
    with pytest.raises(ValueError):
        run_spiacs_analysis(lightcurve, T0, [SkyDirection(90.0, 0.0, -1.0)])


def test_summary_text(result):
    text = spiacs_summary_text(result, "GRB 230307A")
    assert "GRB 230307A" in text and "T0 = 2023-03-07T15:44:06.670Z" in text
    assert "is significant" in text
    assert f"{result.limit_at(1.0).short_grb_fluence_erg_cm2.containment_50:.2g} erg/cm^2" in text
    assert "8 s scale" in text and "0912.5329" in text and "Systematic uncertainty" in text


def test_plot_writes_png(lightcurve, result, tmp_path):
    path = tmp_path / "lc.png"
    plot_lightcurve(lightcurve, result, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
