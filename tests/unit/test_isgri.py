"""ISGRI requests to MMODA through an injected fake dispatcher; no network."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from broker.skymap import read_multiorder
from followup.attitude import Pointing, pointing_at
from followup.availability import NoData, RetryPolicy
from followup.bundled import bundled_data_dir
from followup.cache import DirectoryCache, lineage_key
from followup.datasources import MmodaSource
from followup.isgri import IsgriClient, isgri_followup, isgri_request
from followup.lightcurve import LightCurve
from followup.visibility import ibis_visibility

ROOT = Path(__file__).resolve().parents[1] / "data"
# No real ISGRI light curve is bundled; the MMODA SPI-ACS product stands in as "an OGIP
# light curve returned by the dispatcher" to exercise the same conversion path.
LC_FILE = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
T0 = "2023-03-07T15:44:06.650"


class FakeDispatcher:
    def __init__(self):
        self.calls = []

    def get_product(self, **kwargs):
        from oda_api.api import DataCollection
        from oda_api.data_products import NumpyDataProduct

        self.calls.append(kwargs)
        product = NumpyDataProduct.from_fits_file(str(LC_FILE))
        product.meta_data = {"src_name": kwargs.get("src_name", ""), "product": kwargs["product"]}
        return DataCollection([product], instrument=kwargs["instrument"], product=kwargs["product"])


def _client():
    fake = FakeDispatcher()
    return IsgriClient(MmodaSource(dispatcher=fake, retry=RetryPolicy(1, 0.0))), fake


def test_request_is_hashable_and_carries_the_documented_parameters():
    a = isgri_request("isgri_lc", 194.3, -17.86, t0=T0, window_s=300, e1_kev=28, e2_kev=80, osa_version="OSA11.2")
    b = isgri_request("isgri_lc", 194.3, -17.86, t0=T0, window_s=300, e1_kev=28, e2_kev=80, osa_version="OSA11.2")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    kw = a.kwargs()
    assert (kw["instrument"], kw["product"], kw["E1_keV"], kw["E2_keV"], kw["osa_version"]) == (
        "isgri", "isgri_lc", 28.0, 80.0, "OSA11.2")
    assert (kw["RA"], kw["DEC"], kw["radius"], kw["T_format"], kw["time_bin_format"]) == (194.3, -17.86, 15.0, "isot", "sec")
    assert abs((Time(kw["T2"]) - Time(kw["T1"])).to_value("s") - 600) < 1e-3
    scw = isgri_request("isgri_image", 83.63, 22.01, scw_list=["066500220010.001", "066500230010.001"])
    assert scw.kwargs()["scw_list"] == ["066500220010.001", "066500230010.001"] and "T1" not in scw.kwargs()
    assert scw.param("detection_threshold") == 5.0
    assert lineage_key("isgri", {"request": a}, {}, "v") == lineage_key("isgri", {"request": b}, {}, "v")
    assert lineage_key("isgri", {"request": a}, {}, "v") != lineage_key("isgri", {"request": scw}, {}, "v")


@pytest.mark.parametrize("kwargs", [{"product": "isgri_movie"}, {"e1_kev": 100, "e2_kev": 30}, {"t0": None}])
def test_bad_requests_are_rejected(kwargs):
    args = {"product": "isgri_lc", "t0": T0, **kwargs}
    with pytest.raises(ValueError):
        isgri_request(args.pop("product"), 10.0, 20.0, **args)


def test_light_curve_product_becomes_a_lightcurve():
    client, fake = _client()
    request = isgri_request("isgri_lc", 194.3, -17.86, t0=T0, window_s=200, src_name="GRB230307A")
    lc = client.lightcurve(request, T0, 200.0)
    assert isinstance(lc, LightCurve)
    assert fake.calls[0]["src_name"] == "GRB230307A" and fake.calls[0]["instrument"] == "isgri"
    with fits.open(LC_FILE) as hdul:
        counts = np.asarray(hdul["RATE"].data["RATE"]) * hdul["RATE"].header["TIMEDEL"]
    assert np.allclose(lc.counts, counts)


def _visible_pointing(real: Pointing, ra: float, dec: float) -> Pointing:
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    x = SkyCoord(ra * u.deg, dec * u.deg)
    pa = SkyCoord(real.ra_scx * u.deg, real.dec_scx * u.deg).position_angle(SkyCoord(real.ra_scz * u.deg, real.dec_scz * u.deg))
    z = x.directional_offset_by(pa, 90 * u.deg)
    return Pointing(x.ra.deg, x.dec.deg, z.ra.deg, z.dec.deg, real.time)


def test_followup_requests_nothing_when_not_visible():
    real = pointing_at("2009-04-01T02:30:00", bundled_data_dir() / "sc_orbit_param.fits.gz")
    uniq, dens, _ = read_multiorder((ROOT / "igwn" / "userguide" / "bayestar.multiorder.fits").read_bytes())
    vis = ibis_visibility(real, (uniq, dens))
    client, fake = _client()
    results = isgri_followup(client, "2009-04-01T02:30:00", 194.3, -17.86, vis)
    assert set(results) == {"isgri_image", "isgri_lc", "isgri_spectrum"}
    assert all(isinstance(r, NoData) and r.kind == "not_visible" for r in results.values())
    assert fake.calls == []


def test_followup_requests_all_products_when_visible_and_caches_them(tmp_path):
    real = pointing_at("2009-04-01T02:30:00", bundled_data_dir() / "sc_orbit_param.fits.gz")
    uniq, dens, _ = read_multiorder((ROOT / "igwn" / "userguide" / "bayestar.multiorder.fits").read_bytes())
    vis = ibis_visibility(_visible_pointing(real, 194.3, -17.86), (uniq, dens))
    client, fake = _client()
    results = isgri_followup(client, T0, 194.3, -17.86, vis, products=("isgri_lc", "isgri_image"), window_s=200)
    assert isinstance(results["isgri_lc"], LightCurve)
    assert [c["product"] for c in fake.calls] == ["isgri_lc", "isgri_image"]

    cache = DirectoryCache(tmp_path)
    request = isgri_request("isgri_image", 194.3, -17.86, t0=T0)
    run = lambda: {"n_products": len(client.submit(request).as_list())}  # noqa: E731
    _, hit1, _ = cache.cached("isgri.image", {"request": request}, {}, "v", run)
    _, hit2, lineage = cache.cached("isgri.image", {"request": request}, {}, "v", run)
    assert (hit1, hit2, lineage.hit_count) == (False, True, 1)
    assert len(fake.calls) == 3


def test_outside_mission_requests_nothing():
    client, fake = _client()
    vis_ok = ibis_visibility(Pointing(10.0, 20.0, 190.0, 70.0, "2026-01-01T00:00:00Z"),
                             type("P", (), {"ra": 10.0, "dec": 20.0})())
    results = isgri_followup(client, "2026-01-01T00:00:00", 10.0, 20.0, vis_ok)
    assert all(r.kind == "outside_mission" for r in results.values()) and fake.calls == []


# ----------------------------------------------------------------------------- ISGRI curves: excess search only


def _isgri_like_fits(rate_cps: np.ndarray, error_cps: float) -> bytes:
    """A background-subtracted ISGRI-like OGIP curve (1 s bins, RATE and ERROR in count/s) with the
    timing keywords of the real MMODA SPI-ACS file (TIMEZERO = the GBM trigger of GRB 230307A)."""
    from followup.datasources import fits_bytes_of

    with fits.open(LC_FILE) as hdul:
        header = hdul["RATE"].header
        timing = {k: header[k] for k in ("MJDREF", "TIMESYS", "TIMEUNIT", "TIMEZERO") if k in header}
    time_s = np.arange(rate_cps.size) - rate_cps.size / 2 + 0.5
    hdu = fits.BinTableHDU.from_columns([
        fits.Column(name="TIME", format="D", unit="s", array=time_s),
        fits.Column(name="RATE", format="D", unit="count/s", array=rate_cps),
        fits.Column(name="ERROR", format="D", unit="count/s", array=np.full(rate_cps.size, error_cps)),
    ], name="ISGR-SRC.-LCR")
    hdu.header.update(timing)
    hdu.header.update({"TELESCOP": "INTEGRAL", "INSTRUME": "IBIS", "TIMEDEL": 1.0, "TIMEPIXR": 0.5})
    return fits_bytes_of(fits.HDUList([fits.PrimaryHDU(), hdu]))


def _isgri_t0() -> str:
    with fits.open(LC_FILE) as hdul:
        h = hdul["RATE"].header
    t0 = Time(h["MJDREF"], format="mjd", scale=h["TIMESYS"].lower()) + h["TIMEZERO"] * u.s
    return t0.utc.isot + "Z"


def test_background_subtracted_isgri_curve_gives_no_detection_and_finds_an_injected_burst():
    """Issue 8: mean -0.5 counts, sigma 3 made the SPI-ACS model give NaN noise and a false S/N 15.
    With the ERROR column the Gaussian-error model runs; no SPI-ACS fluence limits are given."""
    from followup.lightcurve import read_ogip_lightcurve
    from followup.steps import lightcurve_search_value

    t0 = _isgri_t0()
    rng = np.random.default_rng(2024)
    quiet = rng.normal(-0.5, 3.0, 1100)  # +/-550 s at 1 s, counts/s (= counts per bin)
    lc = read_ogip_lightcurve(_isgri_like_fits(quiet, 3.0), t0)
    assert lc.error is not None
    value = lightcurve_search_value(lc, t0, 300.0)
    assert value["noise_model"] == "gaussian-error" and value["coverage"] == "full"
    assert not value["detected"] and value["fap"] > 0.01 and np.isfinite(value["best_snr"])
    assert not any("fluence" in key or "flux" in key for key in value)
    assert all(row["upper_limit_counts"] > 0 for row in value["upper_limits_counts"])

    burst = quiet.copy()
    burst[550 + 40:550 + 44] += 15.0  # 60 counts over 4 s at T0+40..44 s: S/N 10 on the 4 s scale
    found = lightcurve_search_value(read_ogip_lightcurve(_isgri_like_fits(burst, 3.0), t0), t0, 300.0)
    assert found["detected"] and found["fap"] < 1e-6
    assert 39.0 <= found["best_offset_s"] <= 45.0


def test_isgri_light_curve_product_goes_through_the_excess_search_only(tmp_path):
    """Through the service: the MMODA curve is requested over T0 +/- 550 s and searched with its errors."""
    from followup.service import FollowupParams
    from followup.steps import ibis_isgri

    t0 = _isgri_t0()
    body = _isgri_like_fits(np.random.default_rng(5).normal(0.2, 3.0, 1100), 3.0)

    class IsgriDispatcher(FakeDispatcher):
        def get_product(self, **kwargs):
            from oda_api.api import DataCollection
            from oda_api.data_products import NumpyDataProduct

            self.calls.append(kwargs)
            path = tmp_path / "isgri_lc.fits"
            path.write_bytes(body)
            product = NumpyDataProduct.from_fits_file(str(path))
            product.meta_data = {"src_name": kwargs.get("src_name", ""), "product": kwargs["product"]}
            return DataCollection([product], instrument=kwargs["instrument"], product=kwargs["product"])

    fake = IsgriDispatcher()
    client = IsgriClient(MmodaSource(dispatcher=fake, retry=RetryPolicy(1, 0.0)))
    real = pointing_at("2009-04-01T02:30:00", bundled_data_dir() / "sc_orbit_param.fits.gz")
    pointing = _visible_pointing(real, 194.3, -17.86)
    from broker.event import Event

    event = Event(id="test:isgri", source="gcn", messenger="em", mission="INTEGRAL", instrument="IBAS",
                  upstream_id="isgri", alert_type="test", time=t0, format="json",
                  localization={"type": "point", "ra": 194.3, "dec": -17.86})
    from followup.service import _Steps

    run = _Steps(DirectoryCache(tmp_path / "cache"))
    vis, isgri = ibis_isgri(run, client, event, pointing, event.localization, None, FollowupParams())
    lc_value = isgri["products"]["isgri_lc"]
    assert lc_value["noise_model"] == "gaussian-error" and not lc_value["detected"]
    assert lc_value["search_window_s"] == [-300.0, 300.0]
    request = [c for c in fake.calls if c["product"] == "isgri_lc"][0]
    assert abs((Time(request["T2"]) - Time(request["T1"])).to_value("s") - 1100.0) < 1e-3
