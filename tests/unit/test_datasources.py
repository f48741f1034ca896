"""Light-curve sources on the real SPI-ACS light curve of GRB 230307A; no network."""

from __future__ import annotations

import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from followup.availability import NoData, RetryPolicy
from followup.bundled import bundled_data_dir
from followup.datasources import IsdcSpiAcsSource, LocalFitsSource, MmodaSource, parse_ipnlc
from followup.lightcurve import LightCurve

DATA = bundled_data_dir()
LC_FILE = DATA / "spiacs_lc_GRB230307A.fits"
T0 = "2023-03-07T15:44:06.650"  # Fermi-GBM trigger time of GRB 230307A
FAST = RetryPolicy(attempts=3, base_delay_s=0.01)


def _file_bins():
    """Independent read: bin centres as TT seconds since IJD 0, and counts per bin."""
    with fits.open(LC_FILE) as hdul:
        h, d = hdul["RATE"].header, hdul["RATE"].data
        abs_s = np.array(d["TIME"], dtype=float) + h["TIMEZERO"]
        return abs_s, np.array(d["RATE"], dtype=float) * h["TIMEDEL"], float(h["TIMEDEL"])


def _seconds_since_ijd0(t: str) -> float:
    return (Time(t, scale="utc").tt - Time(51544.0, format="mjd", scale="tt")).to_value("s")


# ----------------------------------------------------------------------------- local files


def test_local_source_finds_the_file_covering_t0(tmp_path):
    shutil.copy(LC_FILE, tmp_path)
    shutil.copy(DATA / "sc_orbit_param.fits.gz", tmp_path)
    lc = LocalFitsSource(tmp_path).fetch(T0, 100.0)
    assert isinstance(lc, LightCurve)
    abs_s, counts, _ = _file_bins()
    # bin centres are 25 ms after the MMODA stamps (TSTART is the first bin's start)
    expected_s = abs_s - _seconds_since_ijd0(T0) + 0.025
    assert np.allclose(lc.time_s, expected_s, atol=1e-3)
    assert np.allclose(lc.counts, counts)


@pytest.mark.parametrize("t0,instrument", [("2023-03-07T16:30:00", "spi_acs"), (T0, "isgri")])
def test_local_source_no_file_is_data_gap(tmp_path, t0, instrument):
    shutil.copy(LC_FILE, tmp_path)
    result = LocalFitsSource(tmp_path).fetch(t0, 100.0, instrument=instrument)
    assert isinstance(result, NoData) and result.kind == "data_gap"


def test_outside_mission_is_checked_before_any_search(tmp_path):
    result = LocalFitsSource(tmp_path).fetch("2025-06-01T00:00:00", 300.0)
    assert isinstance(result, NoData) and result.kind == "outside_mission"


# ----------------------------------------------------------------------------- ISDC service


class _IsdcHandler(BaseHTTPRequestHandler):
    """Serves the real light curve in the service's ipnlc layout around the requested UTC."""

    failures_left = 0
    requests = 0
    drop_s: tuple[float, float] | None = None

    def do_GET(self):  # noqa: N802
        cls = type(self)
        cls.requests += 1
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        query = parse_qs(urlparse(self.path).query)
        utc, span = query["requeststring"][0].split()
        assert query["generate"] == ["ipnlc"]
        abs_s, counts, timedel = _file_bins()
        start_s = abs_s - 0.5 * timedel - _seconds_since_ijd0(utc)  # bin starts from the requested UTC
        keep = np.abs(start_s) <= float(span)
        if cls.drop_s is not None:
            keep &= ~((start_s > cls.drop_s[0]) & (start_s < cls.drop_s[1]))
        lines = [f"{utc} {span}", f"{_seconds_since_ijd0(utc) / 86400:.8f} {timedel}"]
        lines += [f"{s:.4f} {c:.4f}" for s, c in zip(start_s[keep], counts[keep])]
        body = ("<html><body>" + "<br>\n".join(lines) + "<br>\n<br>\n</body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def isdc_url():
    _IsdcHandler.failures_left, _IsdcHandler.requests, _IsdcHandler.drop_s = 0, 0, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IsdcHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/~savchenk/spiacs-online/spiacs.pl"
    server.shutdown()
    server.server_close()


def test_isdc_source_retries_a_503_then_reads_the_light_curve(isdc_url):
    _IsdcHandler.failures_left = 1
    lc = IsdcSpiAcsSource(isdc_url, retry=FAST).fetch(T0, 200.0)
    assert _IsdcHandler.requests == 2
    assert isinstance(lc, LightCurve)
    abs_s, counts, _ = _file_bins()
    expected_s = abs_s - _seconds_since_ijd0(T0)
    start_from_request_s = abs_s - 0.05 - _seconds_since_ijd0("2023-03-07T15:44:06")  # whole seconds
    inside = np.abs(start_from_request_s) <= 200.0
    assert lc.time_s.size == inside.sum()
    assert np.allclose(lc.time_s, expected_s[inside], atol=2e-3)
    assert np.allclose(lc.counts, counts[inside], rtol=1e-6)
    # the burst: the brightest bin is seconds after the GBM trigger
    assert 0 < lc.time_s[np.argmax(lc.counts)] < 60


def test_isdc_source_persistent_503_is_service_unavailable(isdc_url):
    _IsdcHandler.failures_left = 10
    result = IsdcSpiAcsSource(isdc_url, retry=FAST).fetch(T0, 200.0)
    assert isinstance(result, NoData) and result.kind == "service_unavailable"
    assert "after 3 attempts" in result.reason and "503" in result.reason
    assert _IsdcHandler.requests == 3


def test_isdc_source_connection_refused_is_service_unavailable():
    result = IsdcSpiAcsSource("http://127.0.0.1:9/spiacs.pl", retry=RetryPolicy(2, 0.01)).fetch(T0, 100.0)
    assert isinstance(result, NoData) and result.kind == "service_unavailable"
    assert "after 2 attempts" in result.reason


def test_isdc_gap_at_t0_is_data_gap_with_its_span(isdc_url):
    _IsdcHandler.drop_s = (-10.0, 20.0)
    result = IsdcSpiAcsSource(isdc_url, retry=FAST).fetch(T0, 100.0)
    assert isinstance(result, NoData) and result.kind == "data_gap"
    t_req = Time("2023-03-07T15:44:06")
    gap_start = Time(result.gap_start_utc[:-1])
    gap_stop = Time(result.gap_stop_utc[:-1])
    assert abs((gap_start - t_req).to_value("s") + 10.0) < 0.2
    assert abs((gap_stop - t_req).to_value("s") - 20.0) < 0.2


def test_parse_ipnlc_rejects_an_answer_without_data():
    with pytest.raises(ValueError):
        parse_ipnlc("<html>No data for this time<br>\nsorry<br>\n</html>")


# ----------------------------------------------------------------------------- MMODA


class FakeDispatcher:
    """Stands in for oda_api.api.DispatcherAPI: returns the real MMODA product."""

    def __init__(self, failures=(), token_in_error=None):
        self.calls = []
        self.failures = list(failures)

    def get_product(self, **kwargs):
        from oda_api.api import DataCollection
        from oda_api.data_products import NumpyDataProduct

        self.calls.append(kwargs)
        if self.failures:
            raise self.failures.pop(0)
        product = NumpyDataProduct.from_fits_file(str(LC_FILE))
        return DataCollection([product], instrument=kwargs["instrument"], product=kwargs["product"])


def test_mmoda_source_request_and_product():
    from oda_api.api import DispatcherNotAvailable

    fake = FakeDispatcher(failures=[DispatcherNotAvailable("dispatcher down")])
    lc = MmodaSource(url="http://127.0.0.1:1/dispatch-data", token="s3cret", dispatcher=fake, retry=FAST).fetch(T0, 250.0)
    assert len(fake.calls) == 2
    call = fake.calls[-1]
    assert (call["instrument"], call["product"], call["T_format"], call["time_bin"]) == ("spi_acs", "spi_acs_lc", "isot", 0.1)
    assert abs((Time(call["T1"]) - Time(T0)).to_value("s") + 250) < 1e-3
    assert abs((Time(call["T2"]) - Time(T0)).to_value("s") - 250) < 1e-3
    assert call["token"] == "s3cret"
    assert isinstance(lc, LightCurve)
    _, counts, _ = _file_bins()
    assert np.allclose(lc.counts, counts)


def test_mmoda_errors_never_show_the_token(caplog):
    from oda_api.api import DispatcherNotAvailable, RemoteException

    caplog.set_level(logging.DEBUG)
    fake = FakeDispatcher(failures=[DispatcherNotAvailable("down, token=s3cret")] * 3)
    result = MmodaSource(token="s3cret", dispatcher=fake, retry=FAST).fetch(T0, 100.0)
    assert isinstance(result, NoData) and result.kind == "service_unavailable"
    assert "after 3 attempts" in result.reason
    assert "s3cret" not in result.reason and "s3cret" not in caplog.text
    assert "s3cret" not in repr(MmodaSource(token="s3cret"))

    fake = FakeDispatcher(failures=[RemoteException("bad request for s3cret")])
    result = MmodaSource(token="s3cret", dispatcher=fake, retry=FAST).fetch(T0, 100.0)
    assert isinstance(result, NoData) and len(fake.calls) == 1  # not transient: no retry
    assert "s3cret" not in result.reason
