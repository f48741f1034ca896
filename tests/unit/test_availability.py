"""Honest availability: mission span, perigee passages from the real orbit file and the measured belt
passages, light-curve gaps."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from followup.attitude import OrbitTable
from followup.availability import (
    BELT_PASSAGES_FILE, BeltModel, BeltPassages, NoData, check_integral_coverage, find_gaps, integral_coverage,
    lightcurve_coverage, perigee_check,
)
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


# ----------------------------------------------------------------------------- the perigee check on every request

ORBIT = DATA / "sc_orbit_param.fits.gz"


def test_perigee_passage_of_revolution_789_is_no_data():
    """Revolution 789 starts at perigee 2009-03-30T04:51:40 (belt exit 08:55, entry 2009-04-02T02:22)."""
    orbit = OrbitTable.read(ORBIT)  # covers 2009-04-01T02:11-02:43 only: the belt table decides here
    for t0, phase in (("2009-03-30T05:30:00", "0.00"), ("2009-04-02T04:00:00", "0.99")):
        value = integral_coverage(t0, orbit)
        assert value["no_data"] is True and value["kind"] == "data_gap"
        assert "perigee passage" in value["reason"] and "revolution 789" in value["reason"]
        assert f"phase {phase}" in value["reason"]
        assert check_integral_coverage(t0, orbit).kind == "data_gap"


def test_apogee_of_revolution_789_is_covered_and_says_what_was_checked():
    value = integral_coverage("2009-04-01T02:30:00", OrbitTable.read(ORBIT))
    assert value["covered"] is True
    check = value["perigee_check"]
    assert check.startswith("passed: orbit file sc_orbit_param.fits.gz: revolution 789, phase 0.63")
    assert "measured belt passages: revolution 789, phase 0.63" in check
    # between belt exit and entry, without any orbit file: the table alone decides
    assert integral_coverage("2009-03-30T12:00:00")["perigee_check"].startswith(
        "passed: measured belt passages: revolution 789")


def test_no_orbit_data_for_t0_is_said_never_silent():
    missing = NoData("no orbit file in the bundled INTEGRAL files covers 2023-03-07T15:44:06.650Z", "data_gap")
    value = integral_coverage(T0, missing)
    assert value == {"covered": True, "perigee_check": (
        "not run: no orbit data for T0 (no orbit file in the bundled INTEGRAL files covers 2023-03-07T15:44:06.650Z; "
        "the measured belt passages cover 2002-10-19 to 2019-09-01)")}
    check = perigee_check(T0)
    assert not check.ran and not check.in_belts


def test_belt_table_agrees_with_the_orbit_file_and_its_own_dates():
    passages = BeltPassages.bundled()
    # the revolution phase from perigee times matches the orbit file's REVOL_PHASE
    orbit = OrbitTable.read(ORBIT)
    t = "2009-04-01T02:30:00"
    assert abs(passages.state_at(t).revol_phase - orbit.state_at(t).revol_phase) < 1e-3
    # every perigee IJD equals the row's UTC date and time within 10 s (the IJD column is UTC days)
    text = (DATA / BELT_PASSAGES_FILE).read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.split("\t")[1] != "nan"]
    utc = Time([f"{r[1]}T{r[2]}" for r in rows], scale="utc")
    ijd = np.array([float(r[3]) for r in rows])
    assert np.max(np.abs(utc.mjd - 51544.0 - ijd)) * 86400 < 10
    assert passages.revol[0] == 2 and passages.revol[-1] == 2131
    ok = np.isfinite(passages.exit_ijd) & np.isfinite(passages.entry_ijd)
    assert ok.mean() > 0.93 and np.all(passages.exit_ijd[ok] < passages.entry_ijd[ok])


def test_real_spiacs_triggers_avoid_the_belts():
    """SPI-ACS IBAS triggers 2002-2019 (real, bundled): 0.1 % fall in a belt passage by this check,
    against 9 % of random times: the check marks the times without data."""
    import csv
    import re

    with open(DATA / "all_acs_ibas_triggers.csv", newline="") as fh:
        times = [r["isotime"] for r in csv.DictReader(fh)
                 if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", r["isotime"])]
    passages = BeltPassages.bundled()
    covered, inside = passages.in_belts(Time(times, scale="utc").mjd)
    assert covered.sum() > 14000
    assert inside.sum() / covered.sum() < 0.003
    rng = np.random.default_rng(8)
    random_mjd = rng.uniform(passages.perigee_ijd[0], passages.perigee_ijd[-1], 20000) + 51544.0
    covered_r, inside_r = passages.in_belts(random_mjd)
    assert 0.07 < inside_r.sum() / covered_r.sum() < 0.11
    # the scalar check agrees with the vectorized one
    for mjd in random_mjd[:40]:
        t = Time(mjd, format="mjd", scale="utc")
        c, i = passages.in_belts(np.array([mjd]))
        check = perigee_check(t, passages=passages)
        assert check.ran == bool(c[0]) and check.in_belts == bool(i[0])
