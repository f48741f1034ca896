"""OGIP light-curve reader on the real GRB 230307A SPI-ACS file, checked against
astropy.io.fits directly, a hand-made TT->UTC conversion and astro-gdt-integral."""

from __future__ import annotations
import io

from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from followup.bundled import bundled_data_dir
from followup.lightcurve import LightCurve, LightCurveError, read_ogip_lightcurve

LC_PATH = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
GBM_T0 = "2023-03-07T15:44:06.67Z"


@pytest.fixture(scope="module")
def raw():
    with fits.open(LC_PATH) as hdul:
        return hdul["RATE"].header.copy(), np.array(hdul["RATE"].data["TIME"]), np.array(hdul["RATE"].data["RATE"])


def test_values_match_the_file(raw):
    header, time_col, rate = raw
    lc = read_ogip_lightcurve(LC_PATH)
    assert lc.instrument == "SPI-ACS"
    assert lc.bin_s == pytest.approx(header["TIMEDEL"])
    # Default T0 is the TIMEZERO instant. The file has no TIMEPIXR; its TSTART lies 25 ms
    # before the first stamp (MMODA stamps native 50 ms bins at their start), so each bin
    # centre is 25 ms after its stamp and the bins tile TSTART .. TSTOP.
    assert lc.meta["timepixr_from"].startswith("TSTART")
    np.testing.assert_allclose(lc.time_s, time_col + 0.025, atol=1e-5)
    tstart_s = header["TSTART"] - header["TIMEZERO"]
    tstop_s = header["TSTOP"] - header["TIMEZERO"]
    assert lc.time_s[0] - 0.5 * lc.bin_s == pytest.approx(tstart_s, abs=1e-5)
    assert lc.time_s[-1] + 0.5 * lc.bin_s == pytest.approx(tstop_s, abs=1e-5)
    np.testing.assert_allclose(lc.counts, rate * header["TIMEDEL"], rtol=1e-12)
    np.testing.assert_allclose(lc.rate_cps, rate, rtol=1e-12)


def test_timezero_converted_from_tt_to_utc_with_leap_seconds(raw):
    header, _, _ = raw
    # IJD seconds count from 2000-01-01T00:00:00 TT = 1999-12-31T23:58:55.816 UTC;
    # 5 leap seconds were inserted between 2000 and 2023 (2005, 2008, 2012, 2015, 2016).
    expected = datetime(1999, 12, 31, 23, 58, 55, 816000) + timedelta(seconds=header["TIMEZERO"] - 5)
    lc = read_ogip_lightcurve(LC_PATH)
    got = lc.t0.utc.to_datetime()
    assert abs((got - expected).total_seconds()) < 1e-3
    assert lc.t0.utc.isot.startswith("2023-03-07T15:45:35.97")


def test_matches_astro_gdt_integral_reader():
    from gdt.missions.integral.spi.spi_acs import Spi_acs
    from gdt.missions.integral.time import Time as GdtTime

    gdt_lc = Spi_acs.open(str(LC_PATH))
    lc = read_ogip_lightcurve(LC_PATH)
    gdt_t0 = GdtTime(gdt_lc.timezero, format="integral").utc
    assert abs((gdt_t0 - lc.t0).to_value("s")) < 1e-4
    # gdt exposes the raw TIME stamps; our bin centres are 25 ms later (TSTART, see above)
    np.testing.assert_allclose(lc.time_s, gdt_lc.time + 0.025, atol=1e-5)
    np.testing.assert_allclose(lc.rate_cps, gdt_lc.rates, rtol=1e-12)


def test_relative_to_gbm_t0(raw):
    header, time_col, _ = raw
    lc = read_ogip_lightcurve(LC_PATH, t0=GBM_T0)
    shift_s = (read_ogip_lightcurve(LC_PATH).t0 - Time("2023-03-07T15:44:06.67", scale="utc")).to_value("s")
    assert shift_s == pytest.approx(89.309, abs=2e-3)
    np.testing.assert_allclose(lc.time_s, time_col + shift_s + 0.025, atol=1e-5)
    assert lc.time_s[0] == pytest.approx(-180.616, abs=2e-3)
    assert lc.time_s[-1] == pytest.approx(359.284, abs=2e-3)


def test_bytes_input_equals_path_input():
    a = read_ogip_lightcurve(LC_PATH)
    b = read_ogip_lightcurve(LC_PATH.read_bytes())
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.time_s, b.time_s)
    assert b.meta["source"] == "<bytes>"


def test_counts_column_timepixr_mjdrefi_and_utc(tmp_path):
    # OGIP variants the SPI-ACS file does not exercise: COUNTS, TIMEPIXR=0 (bin start),
    # MJDREFI/MJDREFF, TIMESYS UTC, TIMEUNIT d.
    cols = [fits.Column("TIME", "D", array=np.array([0.0, 1.0, 2.0]) / 86400.0),
            fits.Column("COUNTS", "J", array=np.array([5, 7, 9]))]
    hdu = fits.BinTableHDU.from_columns(cols, name="RATE")
    hdu.header.update({"TIMESYS": "UTC", "MJDREFI": 60000, "MJDREFF": 0.5, "TIMEZERO": 0.0,
                       "TIMEUNIT": "d", "TIMEDEL": 1.0 / 86400.0, "TIMEPIXR": 0.0, "INSTRUME": "JMX1"})
    path = tmp_path / "lc.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    lc = read_ogip_lightcurve(path, t0="2023-02-25T12:00:00Z")
    np.testing.assert_allclose(lc.time_s, [0.5, 1.5, 2.5], atol=1e-6)
    np.testing.assert_array_equal(lc.counts, [5, 7, 9])
    assert lc.bin_s == pytest.approx(1.0)
    assert lc.instrument == "JMX1"


@pytest.mark.parametrize("name, content", [
    ("not_fits.csv", None),
    ("no_time.fits", "no_time"),
])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        path.write_text("time,rate\n1,2\n")
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column("RATE", "D", array=np.ones(3))])]).writeto(path)
    with pytest.raises(LightCurveError) as info:
        read_ogip_lightcurve(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_lightcurve_rejects_mismatched_shapes():
    with pytest.raises(LightCurveError):
        LightCurve("2023-03-07T15:44:06.67Z", np.arange(3.0), 0.1, np.ones(4))


def test_error_column_scaled_like_rate_and_kept_by_slicing(raw):
    header, _, rate = raw
    with fits.open(LC_PATH) as hdul:
        error_cps = np.array(hdul["RATE"].data["ERROR"])
    lc = read_ogip_lightcurve(LC_PATH, t0=GBM_T0)
    assert lc.meta["error_column"] == "ERROR"
    np.testing.assert_allclose(lc.error, error_cps * header["TIMEDEL"], rtol=1e-12)
    # The SPI-ACS file's ERROR is (on almost every row) the Poisson error of the counts.
    assert np.median(lc.error ** 2 / lc.counts) == pytest.approx(1.0, abs=1e-9)
    part = lc.between(-10.0, 10.0).relative_to("2023-03-07T15:44:00Z")
    keep = (lc.time_s >= -10.0) & (lc.time_s < 10.0)
    np.testing.assert_array_equal(part.error, lc.error[keep])
    assert lc.with_counts(lc.counts * 0).error is lc.error


def _isgri_like_file(path, error_cps, column="ERROR"):
    cols = [fits.Column("TIME", "D", array=np.arange(4.0) * 10.0),
            fits.Column("RATE", "D", array=np.array([0.5, -0.2, 0.1, 0.3])),
            fits.Column(column, "D", array=np.asarray(error_cps, dtype=float))]
    hdu = fits.BinTableHDU.from_columns(cols, name="ISGR-SRC.-LCR")
    hdu.header.update({"TIMESYS": "TT", "MJDREF": 51544.0, "TIMEZERO": 0.0, "TIMEUNIT": "s", "TIMEDEL": 10.0,
                       "INSTRUME": "IBIS"})
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_rate_err_column_and_no_error_column(tmp_path):
    lc = read_ogip_lightcurve(_isgri_like_file(tmp_path / "a.fits", [0.1, 0.2, 0.3, 0.4], "RATE_ERR"))
    np.testing.assert_allclose(lc.error, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(lc.counts, [5.0, -2.0, 1.0, 3.0])
    cols = [fits.Column("TIME", "D", array=np.arange(3.0)), fits.Column("COUNTS", "J", array=[1, 2, 3])]
    hdu = fits.BinTableHDU.from_columns(cols)
    hdu.header["MJDREF"] = 51544.0
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "b.fits")
    assert read_ogip_lightcurve(tmp_path / "b.fits").error is None


@pytest.mark.parametrize("bad, row", [([0.1, np.nan, 0.3, 0.4], 2), ([0.1, 0.2, 0.3, -0.4], 4)])
def test_bad_errors_name_the_column_and_row(tmp_path, bad, row):
    path = _isgri_like_file(tmp_path / "bad.fits", bad)
    with pytest.raises(LightCurveError, match=rf"ERROR row {row} "):
        read_ogip_lightcurve(path)
    with pytest.raises(LightCurveError, match=r"error row 2 "):
        LightCurve(GBM_T0, np.arange(3.0), 1.0, np.ones(3), error=np.array([1.0, -1.0, 1.0]))


def test_stamp_position_without_timepixr_or_tstart_is_the_bin_centre(raw):
    header, time_col, rate = raw
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column("TIME", "D", array=time_col), fits.Column("RATE", "D", array=rate)], header=header.copy())
    del hdu.header["TSTART"]
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    lc = read_ogip_lightcurve(buf.getvalue())
    assert lc.meta["timepixr_from"] == "default (bin centre)"
    np.testing.assert_allclose(lc.time_s, time_col, atol=1e-5)
