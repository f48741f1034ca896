"""Honest availability: mission span, perigee passages from the real orbit file, light-curve gaps."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from followup.attitude import OrbitTable
from followup.availability import BeltModel, NoData, check_integral_coverage, find_gaps, lightcurve_coverage
from followup.bundled import bundled_data_dir
from followup.lightcurve import read_ogip_lightcurve

DATA = bundled_data_dir()
LC_FILE = DATA / "spiacs_lc_GRB230307A.fits"
T0 = "2023-03-07T15:44:06.650"


@pytest.mark.parametrize(
    "t0,kind",
    [("2002-10-16T23:59:59", "outside_mission"), ("1999-01-01T00:00:00Z", "outside_mission"),
     ("2025-03-01T00:00:00", "outside_mission"), ("2026-01-01T00:00:00", "outside_mission"),
     ("2002-10-17T12:00:00", None), ("2017-08-17T12:41:04.4Z", None), ("2025-02-28T12:00:00", None)],
)
def test_mission_span(t0, kind):
    result = check_integral_coverage(t0)
    assert (result.kind if result else None) == kind
    if result:
        assert str(result).startswith("no data: ") and result.to_dict()["no_data"] is True


def test_orbit_file_mid_revolution_is_not_a_gap():
    orbit = OrbitTable.read(DATA / "sc_orbit_param.fits.gz")
    assert check_integral_coverage("2009-04-01T02:30:00", orbit) is None


def test_orbit_file_altitude_decides_perigee_gaps():
    # the file's real distances: ~152 870 km at the start, ~151 970 km at the end
    with fits.open(DATA / "sc_orbit_param.fits.gz") as hdul:
        distance = np.asarray(hdul["INTL-ORBI-SCP"].data["DISTANCE"], dtype=float)
    threshold_km = float(np.median(distance)) - 6378.137  # half of the file is "below" it
    orbit = OrbitTable.read(DATA / "sc_orbit_param.fits.gz")
    early, late = "2009-04-01T02:12:00", "2009-04-01T02:43:00"
    belts = BeltModel(min_altitude_km=threshold_km)
    assert check_integral_coverage(early, orbit, belts) is None
    gap = check_integral_coverage(late, orbit, belts)
    assert isinstance(gap, NoData) and gap.kind == "data_gap" and "revolution 789" in gap.reason


def test_orbit_phase_outside_belt_window_is_a_gap():
    orbit = OrbitTable.read(DATA / "sc_orbit_param.fits.gz")
    gap = check_integral_coverage("2009-04-01T02:30:00", orbit, BeltModel(belt_exit_phase=0.64))
    assert gap is not None and "phase 0.63" in gap.reason


def test_real_light_curve_covers_its_burst():
    lc = read_ogip_lightcurve(LC_FILE, t0=Time(T0))
    assert lightcurve_coverage(lc, 150.0) is None


def test_window_beyond_the_light_curve_is_a_gap():
    lc = read_ogip_lightcurve(LC_FILE, t0=Time("2023-03-07T16:30:00"))
    result = lightcurve_coverage(lc, 300.0)
    assert isinstance(result, NoData) and result.kind == "data_gap"
    assert result.gap_start_utc.startswith("2023-03-07T16:25:00") and result.gap_stop_utc.startswith("2023-03-07T16:35:00")


def test_find_gaps_on_the_real_time_axis():
    lc = read_ogip_lightcurve(LC_FILE, t0=Time(T0))
    keep = (lc.time_s < -20.0) | (lc.time_s > 30.0)
    gaps = find_gaps(lc.time_s[keep], lc.bin_s, -100.0, 100.0)
    assert len(gaps) == 1
    lo, hi = gaps[0]
    assert abs(lo + 20.0) < 0.1 and abs(hi - 30.0) < 0.1
    assert find_gaps(lc.time_s, lc.bin_s, -100.0, 100.0) == []
