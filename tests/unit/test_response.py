"""SPI-ACS response: spectral integrals against an independent dense-grid integration,
the counts->fluence factor fitted to published GCN Circulars, the direction-dependent
fraction of optimal response, and the direction labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from followup.bundled import bundled_data_dir
from followup.excess import ExcessSearchParams, search_excess
from followup.lightcurve import read_ogip_lightcurve
from followup.response import (
    LONG_GRB_SPECTRUM,
    SHORT_GRB_SPECTRUM,
    Band,
    CutoffPowerLaw,
    SpiAcsResponseModel,
    calibrate_against_circulars,
    derive_response_fraction_table,
    energy_fluence_kev,
    load_circulars,
    load_response_fraction_table,
    response_for_direction,
    response_fraction,
)


def _independent_energy_integral(photons, lo_kev, hi_kev):
    """E N(E) integrated by the trapezoid rule on a dense linear grid (no log transform)."""
    energy_kev = np.linspace(lo_kev, hi_kev, 400001)
    return np.trapezoid(energy_kev * photons(energy_kev), energy_kev)


def _cpl(energy_kev):  # alpha=-0.5, Ep=600 keV written out by hand
    return (energy_kev / 100.0) ** -0.5 * np.exp(-energy_kev * 1.5 / 600.0)


def _band(energy_kev):  # alpha=-1, beta=-2.5, Ep=300 keV: E0=300, break=450 keV
    low = (energy_kev / 100.0) ** -1.0 * np.exp(-energy_kev / 300.0)
    high = (450.0 / 100.0) ** 1.5 * np.exp(-1.5) * (energy_kev / 100.0) ** -2.5
    return np.where(energy_kev < 450.0, low, high)


@pytest.mark.parametrize("spectrum, by_hand", [(SHORT_GRB_SPECTRUM, _cpl), (LONG_GRB_SPECTRUM, _band)])
@pytest.mark.parametrize("band_kev", [(75.0, 1000.0), (75.0, 2000.0), (20.0, 200.0)])
def test_energy_integrals_match_independent_integration(spectrum, by_hand, band_kev):
    got = energy_fluence_kev(spectrum, band_kev)
    assert got == pytest.approx(_independent_energy_integral(by_hand, *band_kev), rel=1e-6)


def test_spectral_shapes_peak_at_ep():
    energy_kev = np.geomspace(10, 10000, 200001)
    for spectrum in (SHORT_GRB_SPECTRUM, LONG_GRB_SPECTRUM, CutoffPowerLaw(-1.2, 250.0)):
        nu_f_nu = energy_kev ** 2 * spectrum.photons(energy_kev)
        assert energy_kev[np.argmax(nu_f_nu)] == pytest.approx(spectrum.ep_kev, rel=1e-3)
    band = Band(-1.0, -2.5, 300.0)
    assert band.photons(450.0 * (1 - 1e-9)) == pytest.approx(band.photons(450.0 * (1 + 1e-9)), rel=1e-6)


@pytest.mark.parametrize("spectrum, by_hand", [(SHORT_GRB_SPECTRUM, _cpl), (LONG_GRB_SPECTRUM, _band)])
@pytest.mark.parametrize("theta_deg, fraction", [
    (74.0, 0.90),                                  # a node of the table
    (64.5, 0.93 + (64.5 - 55.0) / 19.0 * (0.90 - 0.93)),  # between 55 deg (0.93) and 74 deg (0.90)
    (10.0, 0.69),                                  # below the first node: held flat
    (180.0, 0.38),                                 # above the last node: held flat
])
def test_counts_per_fluence_uses_fitted_factor_band_ratio_and_direction(spectrum, by_hand, theta_deg, fraction):
    response = response_for_direction(theta_deg, 0.0, spectrum)
    ratio = _independent_energy_integral(by_hand, 75, 2000) / _independent_energy_integral(by_hand, 75, 1000)
    k = SpiAcsResponseModel().fluence_per_count_erg_cm2
    assert 1.0 / response.counts_per_erg_cm2 == pytest.approx(k * ratio / fraction, rel=1e-6)
    assert response.fluence_erg_cm2(1000.0) == pytest.approx(1000.0 * k * ratio / fraction, rel=1e-6)
    assert response.response_fraction == pytest.approx(fraction, rel=1e-9)
    assert response.response_fraction_range[0] <= response.response_fraction <= response.response_fraction_range[1]
    assert response.band_kev == (75.0, 2000.0)
    # The hard short-GRB spectrum puts more energy above 1 MeV than the soft long one.
    assert ratio > 1.0


def test_response_fraction_is_bounded_and_direction_dependent():
    theta = np.linspace(0.0, 180.0, 361)
    fraction, lo, hi = response_fraction(theta)
    assert np.all((0 < lo) & (lo <= fraction) & (fraction <= hi) & (hi <= 1))
    assert fraction.max() / fraction.min() > 2  # 0.93 near 55 deg against 0.38 at 170 deg


def test_fraction_table_is_derived_from_the_circulars():
    circulars = load_circulars()
    assert derive_response_fraction_table(circulars) == load_response_fraction_table()
    with pytest.raises(ValueError):
        derive_response_fraction_table(circulars, bin_width_deg=25.0)


def test_circulars_as_published():
    by_number = {c.gcn: c for c in load_circulars()}
    assert sum(c.short_fluence_1s_erg_cm2 is not None for c in by_number.values()) >= 5
    # GCN 24951 (S190701ah) and 26401 (S191213g), quoted in issue 8.
    assert (by_number[24951].theta_deg, by_number[24951].fraction_of_optimal,
            by_number[24951].short_fluence_1s_erg_cm2) == (75.0, 0.97, 1.6e-7)
    assert (by_number[24951].long_peak_flux_1s_erg_cm2_s, by_number[24951].long_peak_flux_8s_erg_cm2_s) == (1.4e-7, 5e-8)
    assert (by_number[26401].fraction_of_optimal, by_number[26401].short_fluence_1s_erg_cm2) == (0.40, 5.2e-7)


def _bundled_background_rate_cts_s():
    lc = read_ogip_lightcurve(bundled_data_dir() / "spiacs_lc_GRB230307A.fits").relative_to("2023-03-07T15:44:06.67Z")
    one_s = min(search_excess(lc, ExcessSearchParams()).scales, key=lambda row: abs(row.scale_s - 1.0))
    return one_s.mean_background_counts / one_s.scale_s


def test_model_constants_are_the_fit_to_the_circulars():
    model = SpiAcsResponseModel()
    # The reference background is the bundled curve's (measured by the excess search).
    assert model.reference_background_rate_cts_s == pytest.approx(_bundled_background_rate_cts_s(), rel=0.02)
    fit = calibrate_against_circulars(model.reference_background_rate_cts_s, model)
    assert fit.n_circulars == len(model.calibration_circulars) >= 5
    assert model.fluence_per_count_erg_cm2 == pytest.approx(fit.fluence_per_count_erg_cm2, rel=0.005)
    assert model.systematic_fraction == pytest.approx(fit.rms_log_model, abs=0.01)
    # The stated fractions fit better than the azimuth-blind table, and no circular is off by 2x.
    assert fit.rms_log_stated_fraction < fit.rms_log_model
    assert all(0.5 < r.short_ratio < 2.0 for r in fit.residuals)
    # K is roughly the published in-flight calibration (~1e-10, Vigano & Mereghetti 2009).
    assert 1.0 < fit.fluence_per_count_erg_cm2 / model.vigano_mereghetti_fluence_per_count_erg_cm2 < 2.0


def test_fit_follows_the_published_limits():
    circulars = load_circulars()
    base = calibrate_against_circulars(9e4, circulars=circulars)
    doubled = [replace(c, short_fluence_1s_erg_cm2=None if c.short_fluence_1s_erg_cm2 is None
                       else 2 * c.short_fluence_1s_erg_cm2) for c in circulars]
    assert calibrate_against_circulars(9e4, circulars=doubled).fluence_per_count_erg_cm2 == pytest.approx(
        2 * base.fluence_per_count_erg_cm2, rel=1e-9)
    # K scales as B**-1/2 (a 4x background means a 2x count limit).
    assert calibrate_against_circulars(36e4, circulars=circulars).fluence_per_count_erg_cm2 == pytest.approx(
        base.fluence_per_count_erg_cm2 / 2, rel=1e-9)
    with pytest.raises(ValueError):
        calibrate_against_circulars(9e4, circulars=circulars[:4])


def test_direction_labels_and_bounds():
    labels = {theta: response_for_direction(theta, 45.0, SHORT_GRB_SPECTRUM).direction_quality
              for theta in (0.0, 29.9, 30.0, 45.0, 90.0, 150.0, 180.0)}
    assert labels == {0.0: "near-axis-optimistic", 29.9: "near-axis-optimistic", 30.0: "calibrated",
                      45.0: "calibrated", 90.0: "calibrated", 150.0: "calibrated", 180.0: "calibrated"}
    with pytest.raises(ValueError):
        response_for_direction(181.0, 0.0, SHORT_GRB_SPECTRUM)
    with pytest.raises(ValueError):
        response_fraction(np.array([90.0, np.nan]))
    with pytest.raises(ValueError):
        response_for_direction(90.0, 0.0, SHORT_GRB_SPECTRUM, band_kev=(2000.0, 75.0))


def test_model_cites_its_sources():
    model = SpiAcsResponseModel()
    assert "arXiv:0912.5329" in model.source and "A&A 603, A46" in model.source and "GCN" in model.source
    assert "20%" in model.systematic_note
