"""The circular-style text says what the limits are and never oversells them (issue 8 item 7)."""

from __future__ import annotations

import re

import astropy.units as u
import numpy as np
import pytest
from astropy.time import Time

from followup.bundled import bundled_data_dir
from followup.lightcurve import LightCurve, read_ogip_lightcurve
from followup.report import fap_text, spiacs_summary_text
from followup.spiacs import SkyDirection, run_spiacs_analysis

GRB = Time("2023-03-07T15:44:06.650", scale="utc")


@pytest.fixture(scope="module")
def quiet():
    """The real curve before the burst, around a T0 90 s before it, one source direction."""
    lc = read_ogip_lightcurve(bundled_data_dir() / "spiacs_lc_GRB230307A.fits", t0=GRB)
    t0 = GRB - 90 * u.s
    curve = lc.between(-180.5, -5.0).relative_to(t0)
    return run_spiacs_analysis(curve, t0, [SkyDirection(80.0, 30.0, 1.0)])


def test_limit_is_for_a_burst_at_a_given_time_with_detection_fluences(quiet):
    text = spiacs_summary_text(quiet, "a test T0", perigee_check="passed: measured belt passages: revolution 1")
    assert "anywhere in the window" not in text
    one = quiet.limit_at(1.0)
    assert "3-sigma upper limit on the" in text and "fluence of a burst lasting up to 1 s at a given time" in text
    f50 = one.short_grb_fluence_50pct_detection_erg_cm2.best
    f90 = one.short_grb_fluence_90pct_detection_erg_cm2.best
    assert f50 > one.short_grb_fluence_erg_cm2.best and f90 > f50
    assert f"half of the time at {f50:.2g} erg/cm^2 and 90% of the time at {f90:.2g} erg/cm^2" in text
    # partial coverage, the flags and the perigee-check state are all said
    assert "partial coverage" in text and "T0-300 s to T0+300 s" in text
    assert "Flags raised by the search: background 120 s long" in text
    assert "Radiation-belt (perigee) check: passed: measured belt passages" in text
    assert "times are at INTEGRAL" in text


def test_floored_excess_variance_is_not_called_super_poissonian():
    """Poisson counts at the real SPI-ACS rate: the measured factor scatters around 1, and where it is
    floored the text must not say the noise exceeds the Poisson value."""
    rng = np.random.default_rng(12)
    time_s = np.arange(-550.0, 550.0, 0.1) + 0.05
    lc = LightCurve("2023-03-07T15:42:36.650", time_s, 0.1, rng.poisson(9066.0, time_s.size), "SPI-ACS")
    result = run_spiacs_analysis(lc, "2023-03-07T15:42:36.650")
    floored = [row.scale_s for row in result.excess.scales if row.excess_variance_floored]
    assert floored, "seed chosen so that some scales are floored"
    text = spiacs_summary_text(result)
    assert "exceeds the Poisson value" not in text
    listed = re.search(r"on the ([0-9., ]+) s scales? is not above the Poisson value", text)
    assert listed and [float(v) for v in listed.group(1).split(", ")] == pytest.approx(floored)
    above = [row for row in result.excess.scales if not row.excess_variance_floored]
    assert ("times the Poisson value" in text) == bool(above)


def test_fap_text():
    assert fap_text(0.0) == "< 1e-15" and fap_text(3e-16) == "< 1e-15"
    assert fap_text(0.0027) == "0.0027" and fap_text(0.8) == "0.8"
