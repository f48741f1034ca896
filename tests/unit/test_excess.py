"""Excess search on the real GRB 230307A SPI-ACS light curve: the burst is found at
the right time, background-only stretches give no detection, limits scale as expected."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits

from followup.bundled import bundled_data_dir
from followup.excess import ExcessSearchError, ExcessSearchParams, search_excess
from followup.lightcurve import read_ogip_lightcurve

LC_PATH = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
GBM_T0 = datetime(2023, 3, 7, 15, 44, 6, 670000)  # Fermi GBM trigger time, UTC


@pytest.fixture(scope="module")
def file_offsets():
    """Bin centres relative to the GBM T0 and counts, straight from the FITS file.

    IJD seconds (TT) -> UTC by hand: epoch 1999-12-31T23:58:55.816 UTC, 5 leap seconds since.
    """
    with fits.open(LC_PATH) as hdul:
        header, data = hdul["RATE"].header, hdul["RATE"].data
        utc_zero = datetime(1999, 12, 31, 23, 58, 55, 816000) + timedelta(seconds=header["TIMEZERO"] - 5)
        offset_s = (utc_zero - GBM_T0).total_seconds() + np.array(data["TIME"])
        return offset_s, np.array(data["RATE"]) * header["TIMEDEL"]


@pytest.fixture(scope="module")
def grb():
    lc = read_ogip_lightcurve(LC_PATH, t0="2023-03-07T15:44:06.67Z")
    return lc, search_excess(lc)


def test_grb230307a_detected_at_the_right_time(grb, file_offsets):
    _, result = grb
    offset_s, counts = file_offsets
    assert result.detected
    assert result.best_snr > 1000
    assert result.fap < 1e-12
    # The brightest 10 s of this very bright burst start right after the GBM trigger.
    assert 0.0 < result.best_offset_s < 15.0
    assert result.best_time_utc.startswith("2023-03-07T15:44:")
    assert result.best_time_utc.endswith("Z")
    # The 0.1 s scale peaks at the file's brightest bin (independent time conversion).
    row = next(r for r in result.scales if r.scale_s == pytest.approx(0.1))
    assert row.max_snr_offset_s == pytest.approx(offset_s[np.argmax(counts)], abs=0.1)
    assert row.max_snr > 50


def test_acs_onset_within_seconds_of_gbm_t0(file_offsets):
    # Data check, independent of our code: the first 1 s sum 20 sigma above the
    # pre-burst mean lies within a few seconds after the GBM T0.
    offset_s, counts = file_offsets
    sums = np.convolve(counts, np.ones(10), mode="valid")
    starts_s = offset_s[: sums.size]
    pre = sums[starts_s < -60]
    onset_s = starts_s[np.argmax(sums > pre.mean() + 20 * pre.std())]
    assert -1.0 < onset_s < 5.0


def test_default_window_leaves_background_at_both_ends(grb):
    lc, result = grb
    lo_s, hi_s = result.search_window_s
    assert lo_s == pytest.approx(lc.time_s[0] - 0.05 + 60.0, abs=0.01)
    assert hi_s == pytest.approx(min(300.0, lc.time_s[-1] + 0.05 - 60.0), abs=0.01)
    assert result.n_trials == sum(row.n_trials for row in result.scales)
    assert result.background.order in (0, 1, 2)


@pytest.mark.parametrize("pseudo_t0_s", [-150.0, -120.0, -100.0, -75.0])
def test_background_only_gives_no_detection(grb, pseudo_t0_s):
    lc, _ = grb
    # Pre-burst stretch only (GBM T0 - 180.6 s .. T0 - 10 s); a pseudo-T0 inside it.
    pre = lc.between(-200.0, -10.0)
    pseudo = pre.relative_to(lc.t0 + pseudo_t0_s * __import__("astropy.units", fromlist=["s"]).s)
    params = ExcessSearchParams(search_half_window_s=30.0, background_margin_s=30.0)
    result = search_excess(pseudo, params)
    assert result.search_window_s[0] >= pseudo.time_s[0]
    assert not result.detected
    assert result.fap > params.detection_fap
    assert result.best_snr < 5.0


def test_upper_limits_scale_with_timescale(grb, file_offsets):
    _, result = grb
    offset_s, counts = file_offsets
    limits = np.array([row.upper_limit_counts for row in result.scales])
    assert np.all(np.diff(limits) > 0)
    # UL = 3 sqrt(factor * B + model variance) with B proportional to the scale; the
    # background-model term grows as scale**2 and adds a few per cent at 8-10 s.
    normalised = [row.upper_limit_counts / np.sqrt(row.excess_variance_factor * row.scale_s) for row in result.scales]
    np.testing.assert_allclose(normalised[:6], normalised[0], rtol=0.02)
    np.testing.assert_allclose(normalised, normalised[0], rtol=0.07)
    # B from the file: mean counts per 0.1 s outside the search window.
    lo_s, hi_s = result.search_window_s
    bkg_per_bin = counts[(offset_s < lo_s) | (offset_s >= hi_s)].mean()
    one_s = next(r for r in result.scales if r.scale_s == pytest.approx(1.0))
    assert one_s.mean_background_counts == pytest.approx(10 * bkg_per_bin, rel=0.01)
    assert one_s.upper_limit_counts == pytest.approx(3 * np.sqrt(one_s.excess_variance_factor * 10 * bkg_per_bin),
                                                     rel=0.01)


def test_excess_variance_is_super_poissonian(grb, file_offsets):
    _, result = grb
    offset_s, counts = file_offsets
    lo_s, hi_s = result.search_window_s
    bkg = counts[(offset_s < lo_s) | (offset_s >= hi_s)]
    independent = bkg.var() / bkg.mean()
    row = next(r for r in result.scales if r.scale_s == pytest.approx(0.1))
    assert row.excess_variance_factor > 1.1
    assert row.excess_variance_factor == pytest.approx(independent, rel=0.05)


def test_t0_outside_the_data_raises(grb):
    lc, _ = grb
    with pytest.raises(ExcessSearchError, match="not inside a search window"):
        search_excess(lc.relative_to("2023-03-07T18:00:00Z"))


def test_partial_coverage_and_fetch_span_are_reported(grb):
    lc, result = grb
    assert ExcessSearchParams().required_half_span_s == 550.0
    assert result.coverage == "partial"
    assert result.requested_search_window_s == (-300.0, 300.0)
    assert any(flag.startswith("partial coverage: searched -120.7..+299.3 s") for flag in result.flags)
    assert result.noise_model == "counts-excess-variance"  # its ERROR column is the Poisson error
    # The GRB is left out of the excess-variance estimate, not of the search.
    assert any("left out of the excess-variance estimate" in flag for flag in result.flags)
    assert not result.background_excluded_s


def test_tiny_fap_stays_representable(grb):
    _, result = grb
    assert isinstance(result.fap, float) and result.fap < 1e-15
    assert np.isfinite(result.log10_fap) and result.log10_fap < -1000
    assert result.n_effective_trials <= result.n_trials
    assert 4.5 < result.detection_snr_threshold < 6.0


def test_full_coverage_on_a_long_curve_and_per_scale_variance(grb):
    lc, _ = grb
    # A +/-550 s curve of the real pre-burst counts (repeated): the full +/-300 s is searched.
    pre = lc.counts[lc.time_s < -5.0]
    counts = np.resize(pre, 11000)
    from followup.lightcurve import LightCurve
    long = LightCurve(lc.t0, (np.arange(11000) - 5500 + 0.5) * lc.bin_s, lc.bin_s, counts, lc.instrument)
    result = search_excess(long)
    assert result.coverage == "full" and result.search_window_s == pytest.approx((-300.0, 300.0))
    assert not result.flags
    for row in result.scales:
        # 1100 s of data (window + background) behind each factor.
        assert row.n_variance_windows == pytest.approx(1100.0 / row.scale_s, rel=0.02)
        assert row.excess_variance_factor == max(row.excess_variance_factor_measured, 1.0)
        assert row.excess_variance_floored == (row.excess_variance_factor_measured < 1.0)
        assert row.excess_variance_factor > 1.2  # SPI-ACS noise is super-Poissonian at all scales
        assert row.upper_limit_counts < row.detection_50_counts < row.detection_90_counts
