"""INTEGRAL attitude from the real INTL-ORBI-SCP file of revolution 789."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.time import Time
import astropy.units as u

from followup.attitude import (
    HttpOrbitSource,
    LocalOrbitFiles,
    OrbitTable,
    Pointing,
    pointing_at,
    to_spacecraft_frame,
)
from followup.availability import NoData
from followup.bundled import bundled_data_dir
from followup.datasources import RetryPolicy

DATA = bundled_data_dir()
ORBIT = DATA / "sc_orbit_param.fits.gz"


def _rows():
    """Independent read of the file: row UTC times from OBT anchored on the header."""
    with fits.open(ORBIT) as hdul:
        hdu = hdul["INTL-ORBI-SCP"]
        d, h = hdu.data, hdu.header
        words = np.array(d["OB_TIME"], dtype=np.int64)
        obt = words[:, 1] * 2**32 + words[:, 2] * 2**16 + words[:, 3] + words[:, 0] * 2**48
        t = Time(h["ERTFIRST"], scale="utc") + (obt - int(h["OBTSTART"])) / 2**20 * u.s
        return t, {k: np.array(d[k], dtype=float) for k in ("RA_SCX", "DEC_SCX", "RA_SCZ", "DEC_SCZ")}


def test_pointing_at_a_sample_time_is_the_row_value():
    times, cols = _rows()
    i = 120
    p = pointing_at(times[i], ORBIT)
    assert isinstance(p, Pointing)
    assert SkyCoord(p.ra_scx, p.dec_scx, unit="deg").separation(
        SkyCoord(cols["RA_SCX"][i], cols["DEC_SCX"][i], unit="deg")).arcsec < 1.0
    assert SkyCoord(p.ra_scz, p.dec_scz, unit="deg").separation(
        SkyCoord(cols["RA_SCZ"][i], cols["DEC_SCZ"][i], unit="deg")).arcsec < 60.0


def test_sample_file_spans_its_science_window():
    table = OrbitTable.read(ORBIT)
    # the file header says science window 078900560010, ERT 02:11:24 - 02:43:57 on 2009-04-01
    assert abs((table.start - Time("2009-04-01T02:11:24")).to_value("s")) < 10
    assert abs((table.stop - Time("2009-04-01T02:43:57")).to_value("s")) < 10
    assert set(table.revol) == {789}


def test_pointing_interpolates_during_the_initial_slew():
    times, cols = _rows()
    mid = times[0] + 0.5 * (times[1] - times[0])
    p = pointing_at(mid, ORBIT)
    lo, hi = sorted(cols["RA_SCX"][:2])
    assert lo < p.ra_scx < hi


@pytest.mark.parametrize("t", ["2009-04-01T02:00:00", "2009-04-01T03:00:00", "2023-03-07T15:44:06"])
def test_outside_the_file_is_no_data(t):
    result = pointing_at(t, ORBIT)
    assert isinstance(result, NoData) and result.kind == "data_gap"
    assert "no attitude" in result.reason


def test_spacecraft_frame_matches_gdt_integral():
    from gdt.missions.integral.orbit import IntegralOrbit

    times, _ = _rows()
    i = 200
    frame = IntegralOrbit.open(str(ORBIT)).get_spacecraft_frame()[i]
    rng = np.random.default_rng(7)
    ra = rng.uniform(0, 360, 500)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 500)))
    sc = SkyCoord(ra, dec, unit="deg").transform_to(frame)
    az, el = sc.az.rad, sc.el.rad
    xp, yp, zp = np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)
    theta_ref = np.degrees(np.arccos(np.clip(xp, -1, 1)))
    phi_ref = np.degrees(np.arctan2(yp, zp)) % 360

    theta, phi = to_spacecraft_frame(pointing_at(times[i], ORBIT), ra, dec)
    assert np.allclose(theta, theta_ref, atol=0.01)
    dphi = (phi - phi_ref + 180) % 360 - 180
    assert np.all(np.abs(dphi[(theta_ref > 1) & (theta_ref < 179)]) < 0.05)


def test_axes_themselves_and_vectorized_shape():
    p = pointing_at("2009-04-01T02:30:00", ORBIT)
    theta, phi = to_spacecraft_frame(p, [p.ra_scx, p.ra_scz], [p.dec_scx, p.dec_scz])
    assert theta[0] < 1e-4 and abs(theta[1] - 90) < 1e-6 and (phi[1] < 1e-6 or phi[1] > 360 - 1e-6)
    n = 1_000_000
    theta, phi = to_spacecraft_frame(p, np.linspace(0, 360, n), np.linspace(-89, 89, n))
    assert theta.shape == (n,) and phi.shape == (n,)
    assert np.all((phi >= 0) & (phi < 360))


def test_local_directory_source(tmp_path):
    shutil.copy(ORBIT, tmp_path / "sc_orbit_param.fits.gz")
    shutil.copy(DATA / "spiacs_lc_GRB230307A.fits", tmp_path)  # not an orbit file: skipped
    source = LocalOrbitFiles(tmp_path)
    assert isinstance(source.pointing_at("2009-04-01T02:30:00"), Pointing)
    missing = source.pointing_at("2010-01-01T00:00:00")
    assert isinstance(missing, NoData) and missing.kind == "data_gap"


class _Handler(BaseHTTPRequestHandler):
    body = b""
    failures_left = 0

    def do_GET(self):  # noqa: N802 (http.server API)
        cls = type(self)
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def orbit_server():
    _Handler.body = ORBIT.read_bytes()
    _Handler.failures_left = 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_orbit_source_retries_then_reads(orbit_server):
    source = HttpOrbitSource(orbit_server + "/orbit?utc={utc}", retry=RetryPolicy(attempts=3, base_delay_s=0.01))
    p = source.pointing_at("2009-04-01T02:30:00")
    assert isinstance(p, Pointing)
    assert abs(p.ra_scx - 300.979) < 0.01


def test_http_orbit_source_unreachable_is_no_data():
    source = HttpOrbitSource("http://127.0.0.1:9/orbit?utc={utc}", retry=RetryPolicy(attempts=2, base_delay_s=0.01))
    result = source.pointing_at("2009-04-01T02:30:00")
    assert isinstance(result, NoData) and result.kind == "service_unavailable"
    assert "after 2 attempts" in result.reason
