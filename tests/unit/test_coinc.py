"""Coincidences (broker/enrich/coinc.py, ``mma-broker coinc``): RAVEN's overlap integral and
FARs against ligo-raven 3.3 on the repository's real sky maps, the exact integral against
hpmoc's independent product of multi-order maps and ligo.skymap's point look-up, windows,
hostile maps, GW–neutrino and GW/GRB–optical selection on real alerts."""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broker.enrich.coinc import (
    CoincidenceError, CoincidenceSettings, PointSource, credible_level_at, gw_grb_coincidence,
    gw_neutrino_coincidences, is_flat, is_nu_track_search_for, joint_far_hz, nearest_centre_point_overlap,
    optical_counterparts, optical_verdict, overlap_integral, radius_at_level, temporal_far_hz, track_stream,
)
from broker.skymap import MultiOrderSkyMap, read_skymap
from broker.sources import decode

DATA = Path(__file__).resolve().parents[1] / "data"
GW_FITS = {
    "MS181101ab": DATA / "igwn/userguide/bayestar.multiorder.fits",
    "MS220722v": DATA / "igwn/gwcelery/MS220722v_bayestar.multiorder.fits",
}
GW_JSON = DATA / "igwn/userguide/MS181101ab-preliminary.json"
GW_JSON_2 = DATA / "igwn/fink-mm/MS230518e-initial.json"
SWIFT_MOC = DATA / "gcn/skymaps/swift_skymap.multiorder.fits"
GBM_FLAT = DATA / "gcn/skymaps/fermi_gbm_skymap.fits.gz"
FERMI_JSON = DATA / "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json"
FERMI_VOEVENT = DATA / "voevent/gwcelery/fermi_grb_gcn.xml"
SWIFT_VOEVENT = DATA / "voevent/gwcelery/swift_grb_gcn.xml"
GUANO_JSON = DATA / "gcn/gcn-schema/gcn/notices/swift/bat/guano.loc_map.example.json"
YEAR = 365 * 86400


def _embedded(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_bytes())["event"]["skymap"])


@pytest.fixture(scope="module")
def maps() -> dict[str, MultiOrderSkyMap]:
    out = {name: read_skymap(p.read_bytes()) for name, p in GW_FITS.items()}
    out["MS230518e"] = read_skymap(_embedded(GW_JSON_2))
    out["swift"] = read_skymap(SWIFT_MOC.read_bytes())
    out["gbm"] = read_skymap(GBM_FLAT.read_bytes())
    return out


def _ligo(sky: MultiOrderSkyMap):
    """The map as ligo-raven gets it from ligo.skymap: UNIQ and PROBDENSITY columns in sr⁻¹
    (multi-order), or the flat NESTED probability array (flat)."""
    from astropy import units as u
    from astropy.table import Column

    if is_flat(sky):
        order = np.argsort(sky.uniq)
        area = 4 * np.pi / sky.uniq.size
        return np.asarray(sky.probdensity)[order] * area, []
    return Column(sky.probdensity, unit=u.sr**-1), Column(sky.uniq)


def _raven(gw, ext=None, point=None) -> float:
    from ligo.raven.search import skymap_overlap_integral

    se, se_uniq = _ligo(gw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if point is not None:
            return float(skymap_overlap_integral(se, [], se_uniq, [], ra=point[0], dec=point[1], se_nested=True))
        ex, ex_uniq = _ligo(ext)
        return float(skymap_overlap_integral(se, ex, se_uniq, ex_uniq, se_nested=True, ext_nested=True))


def _hpmoc_exact(a: MultiOrderSkyMap, b: MultiOrderSkyMap) -> float:
    """Ashton et al. 2018 eq. (8), exact, with hpmoc's multi-order product (independent code)."""
    from astropy_healpix import uniq_to_level_ipix
    from hpmoc import PartialUniqSkymap

    def area(u):
        level, _ = uniq_to_level_ipix(np.asarray(u))
        return 4 * np.pi / (12 * 4.0 ** level)

    prod = PartialUniqSkymap(a.probdensity, a.uniq) * PartialUniqSkymap(b.probdensity, b.uniq)
    na, nb = np.sum(a.probdensity * area(a.uniq)), np.sum(b.probdensity * area(b.uniq))
    return float(4 * np.pi * np.sum(np.asarray(prod.s) * area(prod.u)) / na / nb)


# ------------------------------------------------------------------ overlap vs ligo-raven
GW_NAMES = ["MS181101ab", "MS220722v", "MS230518e"]


@pytest.mark.parametrize("gw", GW_NAMES)
@pytest.mark.parametrize("ext", ["swift", "gbm", *GW_NAMES])
def test_overlap_equals_ligo_raven_maps(maps, gw, ext):
    """Multi-order × multi-order (nearest centres) and multi-order × flat, on real maps."""
    ours, theirs = overlap_integral(maps[gw], maps[ext]), _raven(maps[gw], maps[ext])
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-300)


def _points(maps):
    """Real positions: each map's maximum, the alerts' points, two arbitrary places."""
    pts = [(194.30419921874997, -17.856895095545468), (283.2338965153115, 45.63599562789422)]  # GW maxima
    for path in (FERMI_JSON, FERMI_VOEVENT, SWIFT_VOEVENT, DATA / "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json"):
        loc = decode(path.read_bytes())[0].localization
        pts.append((loc.ra, loc.dec))
    return pts + [(0.0, 90.0), (359.99, -89.9), (10.0, 10.0)]


@pytest.mark.parametrize("gw", [*GW_NAMES, "gbm"])
def test_point_overlap_against_ligo_raven(maps, gw):
    """Flat × point: equal to ligo-raven. Multi-order × point: ligo-raven's branch, run
    as gwcelery runs it (PROBDENSITY in sr⁻¹), equals nearest_centre_point_overlap; the
    overlap integral itself is the published formula (test below), which agrees with
    ligo-raven where the nearest centre is the holding pixel's own, as at a pixel centre."""
    from astropy_healpix.core import healpix_to_lonlat, uniq_to_level_ipix

    for ra, dec in _points(maps):
        theirs = _raven(maps[gw], point=(ra, dec))
        if is_flat(maps[gw]):
            assert overlap_integral(maps[gw], PointSource(ra, dec)) == pytest.approx(theirs, rel=1e-6, abs=1e-300)
        else:
            assert nearest_centre_point_overlap(maps[gw], PointSource(ra, dec)) == pytest.approx(
                theirs, rel=1e-6, abs=1e-300), (ra, dec)
    for i in (int(np.argmax(maps[gw].probdensity)), 0, maps[gw].uniq.size // 2):
        level, ipix = uniq_to_level_ipix(maps[gw].uniq[i : i + 1])
        lon, lat = healpix_to_lonlat(ipix, 1 << int(level[0]), order="nested")
        ra, dec = float(lon.deg[0]), float(lat.deg[0])
        assert overlap_integral(maps[gw], PointSource(ra, dec)) == pytest.approx(
            _raven(maps[gw], point=(ra, dec)), rel=1e-9, abs=1e-300)


def test_ligo_raven_point_branch_unit_error_with_plain_arrays(maps):
    """The ligo-raven 3.3 bug of the multi-order × point branch: plain arrays raise."""
    from astropy.units import UnitConversionError
    from ligo.raven.search import skymap_overlap_integral

    sky = maps["MS181101ab"]
    with pytest.raises(UnitConversionError):
        skymap_overlap_integral(np.asarray(sky.probdensity), [], np.asarray(sky.uniq), [], ra=194.3, dec=-17.86)


def test_flat_by_flat_equals_ligo_raven(maps):
    """Flat × flat: healpy.ud_grade to the finer grid in ligo-raven, the exact integral
    here; the GBM map against itself, and against a different NSIDE-16 map (the GBM map
    weighted by 1 + sin(dec), so the two differ)."""
    from astropy_healpix.core import healpix_to_lonlat, level_ipix_to_uniq

    gbm = maps["gbm"]
    assert overlap_integral(gbm, gbm) == pytest.approx(_raven(gbm, gbm), rel=1e-6)
    _, lat = healpix_to_lonlat(np.arange(12 * 16**2), 16, order="nested")
    rho = np.repeat(gbm.probdensity[np.argsort(gbm.uniq)], 4) * (1 + np.sin(lat.rad))
    fine = MultiOrderSkyMap(uniq=level_ipix_to_uniq(4, np.arange(12 * 16**2)), probdensity=rho,
                            meta={"ORDERING": "NESTED"})
    assert is_flat(fine)
    for a, b in ((gbm, fine), (fine, gbm)):
        assert overlap_integral(a, b) == pytest.approx(_raven(a, b), rel=1e-6)
    assert overlap_integral(gbm, fine) != pytest.approx(overlap_integral(gbm, gbm), rel=1e-3)


# ------------------------------------------------------------------ exact integral vs the formula
@pytest.mark.parametrize("a,b", [("MS181101ab", "swift"), ("MS220722v", "swift"), ("MS220722v", "MS181101ab"),
                                 ("MS230518e", "gbm"), ("gbm", "MS220722v"), ("swift", "swift")])
def test_exact_overlap_equals_hpmoc_product(maps, a, b):
    exact = overlap_integral(maps[a], maps[b], "exact")
    assert exact == pytest.approx(_hpmoc_exact(maps[a], maps[b]), rel=1e-6, abs=1e-300)
    assert exact == pytest.approx(overlap_integral(maps[b], maps[a], "exact"), rel=1e-9, abs=1e-300)


def test_raven_nearest_centre_differs_from_exact_where_pixels_differ(maps):
    """Nearest-centre matching is RAVEN's approximation: 7 % off on MS220722v × Swift."""
    raven, exact = overlap_integral(maps["MS220722v"], maps["swift"]), overlap_integral(
        maps["MS220722v"], maps["swift"], "exact")
    assert abs(raven / exact - 1) > 0.01


@pytest.mark.parametrize("gw", GW_NAMES)
def test_exact_point_is_density_at_point_times_4pi(maps, gw):
    """Ashton et al. 2018 with a Dirac delta: 4π p_gw(Ω) / ∫p_gw, p_gw from ligo.skymap's
    crossmatch (the density of the pixel holding the position)."""
    from astropy.coordinates import SkyCoord
    from astropy.table import Table
    from ligo.skymap.postprocess.crossmatch import crossmatch

    sky = maps[gw]
    table = Table({"UNIQ": sky.uniq, "PROBDENSITY": sky.probdensity})
    pts = _points(maps)
    coords = SkyCoord([p[0] for p in pts], [p[1] for p in pts], unit="deg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = crossmatch(table, coords)
    area = 4 * np.pi / (12 * 4.0 ** (np.floor(np.log2(sky.uniq)) // 2 - 1))
    total = np.sum(sky.probdensity * area)
    for (ra, dec), dens in zip(pts, np.atleast_1d(result.probdensity)):
        assert overlap_integral(sky, PointSource(ra, dec), "exact") == pytest.approx(4 * np.pi * dens / total,
                                                                                      rel=1e-9, abs=1e-300)
    # credible levels equal crossmatch's searched_prob
    levels = credible_level_at(sky, [p[0] for p in pts], [p[1] for p in pts])
    assert levels == pytest.approx(np.atleast_1d(result.searched_prob), rel=1e-9, abs=1e-12)


def _uniform(order: int, mask=None) -> MultiOrderSkyMap:
    from astropy_healpix.core import level_ipix_to_uniq

    n = 12 * 4**order
    rho = np.full(n, 1 / (4 * np.pi)) if mask is None else np.where(mask, 1.0, 0.0)
    return MultiOrderSkyMap(uniq=level_ipix_to_uniq(order, np.arange(n)), probdensity=rho, meta={"ORDERING": "NUNIQ"})


def test_overlap_analytic_cases():
    """Isotropic → 1; two identical uniform caps of solid angle Ω → 4π/Ω (2 for a
    hemisphere); disjoint caps → 0; a point in an isotropic map → 1."""
    from astropy_healpix.core import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.arange(12 * 4**3), 8, order="nested")
    north = lat.deg > 0
    iso = _uniform(2)
    for method in ("raven", "exact"):
        assert overlap_integral(iso, _uniform(3), method) == pytest.approx(1.0, rel=1e-12)
        expected = north.size / north.sum()  # pixels with centres at dec > 0: a little under half the sky
        assert 2.0 < expected < 2.1
        assert overlap_integral(_uniform(3, north), _uniform(3, north), method) == pytest.approx(expected, rel=1e-12)
        assert overlap_integral(_uniform(3, north), _uniform(3, ~north), method) == 0.0
        assert overlap_integral(iso, PointSource(12.3, -45.6), method) == pytest.approx(1.0, rel=1e-12)
        assert overlap_integral(PointSource(12.3, -45.6), iso, method) == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------ hostile maps
def _bad(rho, uniq=None) -> MultiOrderSkyMap:
    from astropy_healpix.core import level_ipix_to_uniq

    return MultiOrderSkyMap(uniq=level_ipix_to_uniq(0, np.arange(12)) if uniq is None else uniq,
                            probdensity=np.asarray(rho, float), meta={})


@pytest.mark.parametrize("sky,match", [
    (_bad([np.nan] + [1.0] * 11), "NaN"),
    (_bad([-1.0] + [1.0] * 11), "negative"),
    (_bad([np.inf] + [1.0] * 11), "infinite"),
    (_bad([0.0] * 12), "total probability"),
    (_bad([1.0] * 13, np.array([4, 16, 17, 18, 19, *range(5, 13)])), "overlap"),
])
def test_bad_maps_are_clear_errors(sky, match):
    with pytest.raises(CoincidenceError, match=match):
        overlap_integral(sky, _uniform(1), "exact")
    if match != "overlap":  # ligo-raven's nearest-centre match cannot see overlapping pixels
        with pytest.raises(CoincidenceError, match=match):
            overlap_integral(_uniform(1), sky)


def test_two_points_are_refused():
    with pytest.raises(CoincidenceError, match="two points"):
        overlap_integral(PointSource(1, 2), PointSource(1, 2))


# ------------------------------------------------------------------ FARs and windows
def _gw():
    return decode(GW_JSON.read_bytes())[0]


def _at(event, dt_s: float, **update):
    from datetime import datetime, timedelta

    from broker.event import format_time

    t = datetime.fromisoformat(_gw().time[:-1]) + timedelta(seconds=dt_s)
    return event.model_copy(update={"time": format_time(t), **update})


def test_fars_follow_ligo_raven_coinc_far(maps):
    """temporal = FAR_gw · R · (th − tl); joint = temporal / I_Ω (ligo-raven's coinc_far with
    em_rate; its default gcn_rate is 310 / yr)."""
    gw, fermi = _gw(), decode(FERMI_JSON.read_bytes())[0]
    point = PointSource(gw.localization.ra_max, gw.localization.dec_max)
    c = gw_grb_coincidence(gw, _at(fermi, 2.02), maps["MS181101ab"], point)
    far = gw.properties["far_hz"]
    assert c.coincident and c.dt_s == pytest.approx(2.02, abs=1e-3) and c.window_s == (-1.0, 5.0)
    assert c.temporal_far_hz == pytest.approx(far * 310 / YEAR * 6, rel=1e-12)
    assert c.overlap_integral == pytest.approx(_raven(maps["MS181101ab"], point=(point.ra_deg, point.dec_deg)),
                                               rel=1e-6)
    assert c.joint_far_hz == pytest.approx(c.temporal_far_hz / c.overlap_integral, rel=1e-12)
    assert c.joint_far_hz < c.temporal_far_hz  # the GRB sits at the GW maximum: I_Ω >> 1
    assert temporal_far_hz(1e-7, (-600, 60), 305 / YEAR) == pytest.approx(1e-7 * 305 / YEAR * 660)
    assert joint_far_hz(1.0, 0.0) is None and joint_far_hz(1.0, None) is None


@pytest.mark.parametrize("dt,search,expected", [
    (-1.0, "cbc", True), (5.0, "cbc", True), (-1.001, "cbc", False), (5.001, "cbc", False),
    (-60.0, "burst", True), (600.0, "burst", True), (-60.5, "burst", False), (601.0, "burst", False),
    (2.0, "burst", True), (100.0, "cbc", False),
])
def test_windows_ends_included(maps, dt, search, expected):
    fermi = decode(FERMI_VOEVENT.read_bytes())[0]
    c = gw_grb_coincidence(_gw(), _at(fermi, dt), None, None, search=search)
    assert c.coincident is expected and c.window_s == {"cbc": (-1.0, 5.0), "burst": (-60.0, 600.0)}[search]
    assert (c.temporal_far_hz is not None) is expected and c.overlap_integral is None and c.joint_far_hz is None


def test_search_from_group_and_configurable_window():
    gw = _gw()
    burst = gw.model_copy(update={"properties": {**gw.properties, "group": "Burst"}})
    fermi = _at(decode(FERMI_VOEVENT.read_bytes())[0], 300.0)
    assert gw_grb_coincidence(burst, fermi, None, None).coincident
    assert not gw_grb_coincidence(gw, fermi, None, None).coincident
    s = CoincidenceSettings(cbc_window_s=(-10, 400), grb_rate_per_yr=305)
    c = gw_grb_coincidence(gw, fermi, None, None, settings=s)
    assert c.coincident and c.temporal_far_hz == pytest.approx(gw.properties["far_hz"] * 305 / YEAR * 410)
    with pytest.raises(ValueError):
        CoincidenceSettings(cbc_window_s=(5, -1))


def test_different_epochs_and_retraction_are_not_coincident():
    gw, fermi = _gw(), decode(FERMI_VOEVENT.read_bytes())[0]
    assert not gw_grb_coincidence(gw, fermi, None, None).coincident  # 2018-11 vs 2018-05
    retraction = decode((DATA / "igwn/userguide/MS181101ab-retraction.json").read_bytes())[0]
    c = gw_grb_coincidence(retraction, _at(fermi, 1.0), None, None)
    assert not c.coincident and c.temporal_far_hz is None
    with pytest.raises(CoincidenceError, match="not a gravitational-wave"):
        gw_grb_coincidence(fermi, gw, None, None)


# ------------------------------------------------------------------ the command
def _run(*args):
    from broker.enrich.cli_coinc import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_json_coincident_with_real_alerts(tmp_path, maps):
    """The Fermi GBM ground notice moved to 2.02 s after MS181101ab, at the GW maximum."""
    gw = _gw()
    obj = json.loads(FERMI_JSON.read_bytes())
    from datetime import datetime, timedelta

    t = datetime.fromisoformat(gw.time[:-1]) + timedelta(seconds=2.02)
    obj.update(trigger_time=t.isoformat(timespec="milliseconds") + "Z", ra=194.30419921874997, dec=-17.856895095545468)
    ext = tmp_path / "fermi.json"
    ext.write_text(json.dumps(obj))
    r = _run(GW_JSON, ext, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"coincident", "dt_s", "window_s", "overlap_integral", "temporal_far_hz", "joint_far_hz"} <= out.keys()
    assert out["coincident"] and out["dt_s"] == pytest.approx(2.02, abs=1e-3) and out["window_s"] == [-1.0, 5.0]
    expected_overlap = _raven(maps["MS181101ab"], point=(194.30419921874997, -17.856895095545468))
    assert out["overlap_integral"] == pytest.approx(expected_overlap, rel=1e-6)
    temporal = gw.properties["far_hz"] * 310 / YEAR * 6
    assert out["temporal_far_hz"] == pytest.approx(temporal, rel=1e-12)
    assert out["joint_far_hz"] == pytest.approx(temporal / expected_overlap, rel=1e-6)
    # the GBM flat map given by hand: multi-order × flat
    r = _run(GW_JSON, ext, "--json", "--ext-skymap", GBM_FLAT, "--search", "burst")
    out = json.loads(r.output)
    assert out["window_s"] == [-60.0, 600.0] and out["ext_localization"] == "flat"
    assert out["overlap_integral"] == pytest.approx(_raven(maps["MS181101ab"], maps["gbm"]), rel=1e-6)


def test_cli_embedded_swift_moc_map(tmp_path, maps):
    """A GCN JSON notice carrying the real Swift multi-order map as healpix_file."""
    obj = json.loads(GUANO_JSON.read_bytes())
    obj["healpix_file"] = base64.b64encode(SWIFT_MOC.read_bytes()).decode()
    ext = tmp_path / "guano.json"
    ext.write_text(json.dumps(obj))
    out = json.loads(_run(GW_JSON_2, ext, "--json").output)
    assert out["ext_localization"] == "multiorder" and not out["coincident"]
    assert out["overlap_integral"] == pytest.approx(_raven(maps["MS230518e"], maps["swift"]), rel=1e-6)
    exact = json.loads(_run(GW_JSON_2, ext, "--json", "--overlap", "exact").output)["overlap_integral"]
    assert exact == pytest.approx(_hpmoc_exact(maps["MS230518e"], maps["swift"]), rel=1e-6)


def test_cli_without_localization_gives_null_overlap(tmp_path):
    r = _run(DATA / "igwn/userguide/MS181101ab-3-Initial.xml", SWIFT_VOEVENT, "--json")  # VOEvent: map URL only
    out = json.loads(r.output)
    assert r.exit_code == 0 and out["overlap_integral"] is None and out["joint_far_hz"] is None
    assert out["gw_localization"] is None and not out["coincident"]


def _nan_fits() -> bytes:
    from astropy.io import fits

    with fits.open(GW_FITS["MS181101ab"]) as hdul:
        hdul[1].data["PROBDENSITY"][5] = np.nan
        buf = io.BytesIO()
        hdul.writeto(buf)
    return buf.getvalue()


def test_cli_nan_maps_are_clear_errors(tmp_path):
    obj = json.loads(GW_JSON.read_bytes())
    obj["event"]["skymap"] = base64.b64encode(_nan_fits()).decode()
    bad_gw = tmp_path / "nan-gw.json"
    bad_gw.write_text(json.dumps(obj))
    r = _run(bad_gw, FERMI_VOEVENT)
    assert r.exit_code == 1 and "GW_ALERT" in str(r.exception) and "NaN" in str(r.exception)
    ext = json.loads(GUANO_JSON.read_bytes())
    ext["healpix_file"] = base64.b64encode(_nan_fits()).decode()
    bad_ext = tmp_path / "nan-ext.json"
    bad_ext.write_text(json.dumps(ext))
    r = _run(GW_JSON, bad_ext)
    assert r.exit_code == 1 and "EXT_ALERT" in str(r.exception) and "NaN" in str(r.exception)
    (tmp_path / "nan.fits").write_bytes(_nan_fits())
    r = _run(GW_JSON, FERMI_VOEVENT, "--ext-skymap", tmp_path / "nan.fits")
    assert r.exit_code == 1 and "NaN" in str(r.exception)


def test_cli_refuses_reversed_roles_and_bad_options():
    assert "not a gravitational-wave alert" in str(_run(FERMI_VOEVENT, GW_JSON).exception)
    assert "expected cbc or burst" in str(_run(GW_JSON, FERMI_VOEVENT, "--search", "bns").exception)


def test_mounted_as_mma_broker_coinc():
    from broker import plugins

    assert plugins.available(plugins.CLI)["coinc"].value == "broker.enrich.cli_coinc:app"


# ------------------------------------------------------------------ GW–neutrino
def _nu(name):
    return decode((DATA / name).read_bytes())[0]


def test_track_streams_on_real_icecube_alerts():
    assert track_stream(_nu("gcn/gwcelery-kafka/kafka_alert_icecube_gold.json")) == "gold"
    assert track_stream(_nu("gcn/gwcelery-kafka/kafka_alert_icecube_bronze.json")) == "bronze"
    assert track_stream(_nu("voevent/fink-mm/icecube/voevent_number=3028.xml")) == "bronze"
    assert track_stream(_nu("gcn/gcn-schema-pr161-classic/gcn/notices/classic/amon/astrotrack_alert.example.json")) \
        == "bronze"
    assert track_stream(_nu("voevent/fink-mm/icecube/voevent_number=825.xml")) is None  # cascade
    assert track_stream(_nu("gcn/gwcelery-kafka/kafka_alert_icecube_retraction.json")) is None
    assert track_stream(_gw()) is None


def test_gw_neutrino_window_and_sky(maps):
    gw = _gw()
    gold = _nu("gcn/gwcelery-kafka/kafka_alert_icecube_gold.json")
    bronze = _nu("voevent/fink-mm/icecube/voevent_number=3028.xml")
    cascade = _nu("voevent/fink-mm/icecube/voevent_number=825.xml")
    candidates = [_at(gold, 499.9), _at(bronze, -120.0), _at(cascade, 3.0), _at(gold, 500.5), gold]
    found = gw_neutrino_coincidences(gw, candidates, maps["MS181101ab"])
    assert [(c.stream, round(c.dt_s, 1)) for c in found] == [("bronze", -120.0), ("gold", 499.9)]
    loc = bronze.localization
    assert found[0].overlap_integral == pytest.approx(_raven(maps["MS181101ab"], point=(loc.ra, loc.dec)), rel=1e-6)
    assert 0 <= found[0].credible_level <= 1
    retraction = decode((DATA / "igwn/userguide/MS181101ab-retraction.json").read_bytes())[0]
    assert gw_neutrino_coincidences(retraction, candidates) == []


def test_lvk_nu_track_search_links_to_its_superevent():
    notice = _nu("gcn/gcn-schema/gcn/notices/icecube/lvk_nu_track_search.example.json")
    gw = _gw()
    assert not is_nu_track_search_for(gw, notice)
    assert is_nu_track_search_for(gw.model_copy(update={"upstream_id": "S230914ak"}), notice)


# ------------------------------------------------------------------ GW/GRB–optical
def _ztf(name):
    from broker.sources import avro
    from broker.sources.ztf import decode_history

    data = (DATA / "ztf" / name).read_bytes()
    ev = decode(data)[0]
    return ev, decode_history(data, avro.read_header(data), ev.properties["candid"])["prv_candidates"]


def _trigger_before(candidate, days: float, ra: float, dec: float, radius: float = 0.05, containment=0.9):
    from datetime import datetime, timedelta

    from broker.event import PointLocalization, format_time

    swift = decode(SWIFT_VOEVENT.read_bytes())[0]
    t = datetime.fromisoformat(candidate.time[:-1]) - timedelta(days=days)
    return swift.model_copy(update={"time": format_time(t), "localization": PointLocalization(
        ra=ra, dec=dec, error_radius=radius, containment=containment)})


def test_optical_new_source_after_t0_inside_circle():
    new, prv = _ztf("kowalski/20231012/2475433850015015001.avro")  # ZTF23abjjnqm: first detection
    loc = new.localization
    trig = _trigger_before(new, 0.5, loc.ra + 0.02, loc.dec)
    v = optical_verdict(trig, None, new, prv)
    assert v.accepted and v.history_checked and v.dt_days == pytest.approx(0.5, abs=1e-6)
    assert v.separation_deg == pytest.approx(0.02 * math.cos(math.radians(loc.dec)), rel=1e-3)
    assert optical_verdict(trig, None, new, prv, settings=CoincidenceSettings(optical_days=0.25)).reason == "too_late"
    far = _trigger_before(new, 0.5, loc.ra + 1.0, loc.dec)
    assert optical_verdict(far, None, new, prv).reason == "outside_region"
    after = _trigger_before(new, -0.1, loc.ra, loc.dec)  # the candidate precedes T0
    assert optical_verdict(after, None, new, prv).reason == "detected_before_t0"


def test_optical_earlier_detection_in_history_is_refused():
    old, prv = _ztf("fink-client/ZTF19acxxwrs.avro")  # detected 5 days before this alert
    loc = old.localization
    trig = _trigger_before(old, 1.0, loc.ra, loc.dec)
    assert optical_verdict(trig, None, old, prv).reason == "detected_before_t0"
    no_start = old.model_copy(update={"properties": {k: v for k, v in old.properties.items() if k != "jdstarthist"}})
    assert optical_verdict(trig, None, no_start, prv).reason == "detected_before_t0"  # from prv_candidates alone
    assert optical_verdict(trig, None, no_start, None).accepted  # history not given: not checked, said so
    assert not optical_verdict(trig, None, no_start, None).history_checked


def test_optical_inside_sky_map_credible_region(maps):
    """A real GW map: a new ZTF source moved to the map's maximum is inside the 90 %
    region; at its real place it is not."""
    gw = decode(GW_JSON_2.read_bytes())[0]
    new, prv = _ztf("kowalski/20231012/2475433850015015001.avro")
    at_max = new.model_copy(update={"localization": new.localization.model_copy(
        update={"ra": gw.localization.ra_max, "dec": gw.localization.dec_max})})
    from datetime import datetime, timedelta

    from broker.event import format_time

    t0 = format_time(datetime.fromisoformat(new.time[:-1]) - timedelta(days=1))
    trig = gw.model_copy(update={"time": t0})
    v = optical_verdict(trig, maps["MS230518e"], at_max, prv)
    assert v.accepted and v.credible_level < 0.1
    assert optical_verdict(trig, maps["MS230518e"], new, prv).reason == "outside_region"
    assert [x.object_id for x in optical_counterparts(trig, maps["MS230518e"], [(at_max, prv), (new, prv)])] == [
        new.upstream_id]


def test_radius_at_level():
    assert radius_at_level(1.0, 0.9, 0.9) == pytest.approx(1.0)
    assert radius_at_level(1.0, 0.68, 0.9) == pytest.approx(math.sqrt(math.log(0.1) / math.log(0.32)))
    assert radius_at_level(1.0, None, 0.9) == 1.0
