"""ISGRI requests to MMODA through an injected fake dispatcher; no network."""

from __future__ import annotations

from pathlib import Path

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
