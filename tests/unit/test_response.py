"""SPI-ACS response: spectral integrals against an independent dense-grid integration,
the published calibration factor, and the direction labels."""

from __future__ import annotations

import numpy as np
import pytest

from followup.response import (
    LONG_GRB_SPECTRUM,
    SHORT_GRB_SPECTRUM,
    Band,
    CutoffPowerLaw,
    SpiAcsResponseModel,
    energy_fluence_kev,
    response_for_direction,
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
def test_counts_per_fluence_uses_published_factor_and_band_ratio(spectrum, by_hand):
    response = response_for_direction(90.0, 0.0, spectrum)
    ratio = _independent_energy_integral(by_hand, 75, 2000) / _independent_energy_integral(by_hand, 75, 1000)
    # Vigano & Mereghetti 2009: 1 count ~ 1e-10 erg/cm2 in 75-1000 keV.
    assert 1.0 / response.counts_per_erg_cm2 == pytest.approx(1e-10 * ratio, rel=1e-6)
    assert response.fluence_erg_cm2(1000.0) == pytest.approx(1000.0 * 1e-10 * ratio, rel=1e-6)
    assert response.systematic_fraction == pytest.approx(0.3)
    # The hard short-GRB spectrum puts more energy above 1 MeV than the soft long one.
    assert ratio > 1.0


def test_direction_labels_and_bounds():
    labels = {theta: response_for_direction(theta, 45.0, SHORT_GRB_SPECTRUM).direction_quality
              for theta in (0.0, 29.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0)}
    assert labels == {0.0: "near-axis-optimistic", 29.0: "near-axis-optimistic", 45.0: "extrapolated",
                      60.0: "calibrated", 90.0: "calibrated", 120.0: "calibrated", 150.0: "extrapolated",
                      180.0: "extrapolated"}
    with pytest.raises(ValueError):
        response_for_direction(181.0, 0.0, SHORT_GRB_SPECTRUM)
    with pytest.raises(ValueError):
        response_for_direction(90.0, 0.0, SHORT_GRB_SPECTRUM, band_kev=(2000.0, 75.0))


def test_model_cites_its_source():
    model = SpiAcsResponseModel()
    assert "arXiv:0912.5329" in model.source
    assert "30%" in model.systematic_note
