"""Sky-map and point cross-match against ligo.skymap on real maps and real catalogs.

Maps: the O4 BAYESTAR map of the gwcelery sample MS220722v, the LVK user guide's
MS181101ab map (GW170817-like, 40 Mpc) and the fink-mm MS230518e alert (both decoded
from the alert JSON, as ``mma-broker crossmatch`` does), the Swift multi-order map and
the Fermi GBM flat RING map of tests/data/gcn/skymaps, and a flat RING map made by
rasterizing the user guide's map with ligo.skymap (so that many sibling pixels are
equal and the flat-map merge matters). Catalogs: 50MGC, gwemopt's GLADE subset (out to
2,716 Mpc: the distance grid grows to reach it), skyportal's GLADE+ and CLU, plus the
centres of each map's densest pixels at their DISTMU (targets in the densest voxels,
where the 3D sum is smallest). Tolerances are those of issue 9: 1e-6 relative, 1e-4
for the 3D integrals.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.table import Table

from broker.enrich.crossmatch import crossmatch_skymap, merge_equal_siblings, prepare
from broker.enrich.inputs import read_alert_or_map
from broker.enrich.points import SourceErrors, crossmatch_point, rayleigh_factor
from broker.errors import DecodeError
from broker.event import PointLocalization
from broker.skymap import read_skymap
from tests.conftest import DATA, ROOT

CATALOGS = DATA / "catalogs"
MAPS = {
    "MS220722v-O4": DATA / "igwn" / "gwcelery" / "MS220722v_bayestar.multiorder.fits",
    "MS181101ab-initial.json": DATA / "igwn" / "userguide" / "MS181101ab-initial.json",
    "MS230518e-initial.json": DATA / "igwn" / "fink-mm" / "MS230518e-initial.json",
    "swift-multiorder": DATA / "gcn" / "skymaps" / "swift_skymap.multiorder.fits",
    "fermi-gbm-flat-ring": DATA / "gcn" / "skymaps" / "fermi_gbm_skymap.fits.gz",
}


def _catalog() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RA, Dec (deg) and distance (Mpc) of the real galaxy catalogs, concatenated."""
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgc = Table.read(CATALOGS / "50MGC_catalog_short.fits")
        parts.append((mgc["ra"], mgc["dec"], mgc["bestdist"]))
        glade = Table.read(CATALOGS / "gwemopt_catalog_glade.csv")
        parts.append((glade["ra"], glade["dec"], glade["distmpc"]))
        plus = Table.read(CATALOGS / "GLADE.csv")
        parts.append((plus["RA"], plus["DEC"], plus["d_L"]))
        clu = Table.read(CATALOGS / "CLU_mini.csv")
        parts.append((clu["ra"], clu["dec"], clu["distmpc"]))
    ra, dec, dist = (np.concatenate([np.ma.filled(np.ma.asarray(p[i], dtype=float), np.nan) for p in parts])
                     for i in range(3))
    keep = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(dist)
    return ra[keep], dec[keep], dist[keep]


def _densest_targets(sky, n: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres of the ``n`` densest pixels, at DISTMU and DISTMU ± DISTSIGMA (or 100 Mpc)."""
    from astropy_healpix import healpix_to_lonlat, uniq_to_level_ipix

    top = np.argsort(sky.probdensity)[::-1][:n]
    level, ipix = uniq_to_level_ipix(sky.uniq[top])
    lon, lat = healpix_to_lonlat(ipix, 1 << level, order="nested")
    if "DISTMU" in sky.distance:
        mu, sg = sky.distance["DISTMU"][top], sky.distance["DISTSIGMA"][top]
        ok = np.isfinite(mu) & np.isfinite(sg)
        mu, sg = np.where(ok, mu, 100.0), np.where(ok, sg, 10.0)
    else:
        mu, sg = np.full(n, 100.0), np.full(n, 10.0)
    ra, dec = np.tile(lon.deg, 3), np.tile(lat.deg, 3)
    return ra, dec, np.concatenate([mu, mu - 0.7 * sg, mu + 1.3 * sg]).clip(0.5)


def _ligo(sky, ra, dec, dist):
    """ligo.skymap's crossmatch on the map as ``read_sky_map(..., moc=True)`` gives it."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from ligo.skymap.postprocess.crossmatch import crossmatch

    coords = SkyCoord(ra * u.deg, dec * u.deg) if dist is None else SkyCoord(ra * u.deg, dec * u.deg, dist * u.Mpc)
    return crossmatch(sky, coords)


def _ligo_table(data: bytes):
    import tempfile

    from ligo.skymap.io.fits import read_sky_map

    with tempfile.NamedTemporaryFile(suffix=".fits.gz" if data[:2] == b"\x1f\x8b" else ".fits") as f:
        f.write(data)
        f.flush()
        return read_sky_map(f.name, moc=True)


def _map_bytes(path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".json":
        import base64

        return base64.b64decode(json.loads(data)["event"]["skymap"])
    return data


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=float)
    return float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-300)))


def _compare(ours, ref, three: bool) -> None:
    assert _rel(ours.searched_prob, ref.searched_prob) <= 1e-6
    assert _rel(ours.searched_area_deg2, ref.searched_area) <= 1e-6
    assert _rel(ours.probdensity_per_deg2 * (180 / math.pi) ** 2, ref.probdensity) <= 1e-6
    if three:
        assert _rel(ours.searched_prob_vol, ref.searched_prob_vol) <= 1e-4
        assert _rel(ours.probdensity_vol_per_mpc3, ref.probdensity_vol) <= 1e-4
    else:
        assert ours.searched_prob_vol is None


@pytest.mark.parametrize("name", list(MAPS))
def test_equals_ligo_skymap_on_real_maps(name):
    path = MAPS[name]
    alert = read_alert_or_map(path.read_bytes())
    sky = alert.skymap
    ra, dec, dist = _catalog()
    tr, td, tdist = _densest_targets(sky)
    ra, dec, dist = np.concatenate([ra, tr]), np.concatenate([dec, td]), np.concatenate([dist, tdist])
    ours = crossmatch_skymap(sky, ra, dec, dist)
    ref_map = _ligo_table(_map_bytes(path))
    three = "DISTMU" in ref_map.colnames
    ref = _ligo(ref_map, ra, dec, dist if three else None)
    _compare(ours, ref, three)
    # the greedy credible areas (ligo.skymap's contour_areas)
    from ligo.skymap.postprocess.crossmatch import crossmatch

    two_d = ref_map[[c for c in ref_map.colnames if not c.startswith("DIST")]]
    assert np.allclose([ours.area_50_deg2, ours.area_90_deg2], crossmatch(two_d, contours=(0.5, 0.9)).contour_areas,
                       rtol=1e-9)
    if three:  # targets in the densest voxels have small, exactly summed 3D probabilities
        assert np.nanmin(ours.searched_prob_vol) < 0.05


def test_flat_map_is_merged_as_ligo_skymap_merges_it(tmp_path):
    """A real 3D map rasterized to a flat RING map (NSIDE 64): equal sibling pixels are
    merged exactly as read_sky_map(moc=True) merges them, and the numbers follow."""
    from ligo.skymap.bayestar import rasterize
    from ligo.skymap.io.fits import read_sky_map, write_sky_map

    moc = read_sky_map(str(MAPS["MS220722v-O4"]), moc=True)
    flat = rasterize(moc, order=6)
    from astropy_healpix.core import ring_to_nested

    nside = 64
    ring = flat[ring_to_nested(np.arange(12 * nside**2), nside)]  # row k: RING pixel k (LALInference, GBM layout)
    write_sky_map(str(tmp_path / "ring.fits"), ring, nest=False)
    data = (tmp_path / "ring.fits").read_bytes()
    sky = read_skymap(data)
    merged = merge_equal_siblings(sky)
    ref_map = _ligo_table(data)
    assert len(merged.uniq) < len(sky.uniq) // 2  # the rasterized map has many equal siblings
    assert np.array_equal(merged.uniq, np.asarray(ref_map["UNIQ"]))
    assert _rel(merged.probdensity, np.asarray(ref_map["PROBDENSITY"])) <= 1e-12
    for col in ("DISTMU", "DISTSIGMA", "DISTNORM"):
        assert np.array_equal(merged.distance[col], np.asarray(ref_map[col]), equal_nan=True)
    ra, dec, dist = _catalog()
    tr, td, tdist = _densest_targets(merged, 60)
    ra, dec, dist = np.concatenate([ra, tr]), np.concatenate([dec, td]), np.concatenate([dist, tdist])
    _compare(crossmatch_skymap(sky, ra, dec, dist), _ligo(ref_map, ra, dec, dist), True)


def test_json_rows_keys_order_and_nulls():
    sky = read_skymap(MAPS["MS220722v-O4"].read_bytes())
    ra = np.array([10.0, np.nan, 200.0, 5.0])
    dec = np.array([-20.0, 0.0, 95.0, 5.0])
    dist = np.array([100.0, 50.0, 60.0, -3.0])
    rows = crossmatch_skymap(sky, ra, dec, dist).rows()
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert list(rows[0]) == ["row", "searched_prob", "searched_area_deg2", "probdensity_per_deg2",
                             "searched_prob_vol", "probdensity_vol_per_mpc3"]
    assert rows[1]["searched_prob"] is None and rows[2]["searched_area_deg2"] is None  # NaN RA, Dec > 90
    assert rows[3]["searched_prob"] is not None and rows[3]["searched_prob_vol"] is None  # negative distance
    two_d = crossmatch_skymap(sky, ra, dec).rows()
    assert "searched_prob_vol" not in two_d[0]
    with pytest.raises(ValueError, match="3 distances for 4 positions"):
        crossmatch_skymap(sky, ra, dec, dist[:3])


def test_prepared_map_reused_and_ranked():
    sky = read_alert_or_map(MAPS["MS181101ab-initial.json"].read_bytes()).skymap
    prep = prepare(sky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgc = Table.read(CATALOGS / "50MGC_catalog_short.fits")
    ra, dec, dist = (np.ma.filled(np.ma.asarray(mgc[c], dtype=float), np.nan) for c in ("ra", "dec", "bestdist"))
    m = crossmatch_skymap(prep, ra, dec, dist)
    ranked = m.ranked(0.9)
    names = [str(mgc["objname"][i]).strip() for i in ranked]
    assert "NGC4993" in names  # the host of GW170817, whose sky map this mock follows
    assert np.all(np.diff(m.searched_prob_vol[ranked]) >= 0)
    assert np.all(m.searched_prob_vol[ranked] <= 0.9)


@pytest.mark.parametrize("path, match", [
    (DATA / "igwn" / "userguide" / "MS181101ab-retraction.json", r"retraction\): no sky map and no position"),
    (DATA / "igwn" / "userguide" / "MS181101ab-3-Initial.xml", "only a sky-map URL"),
    (ROOT / "README.md", "unknown format"),
])
def test_alert_files_without_a_localization_are_clear_errors(path, match):
    with pytest.raises(DecodeError, match=match):
        read_alert_or_map(path.read_bytes())


def test_avro_alert_gives_the_same_map_as_json():
    avro = read_alert_or_map((DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro").read_bytes())
    js = read_alert_or_map((DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json").read_bytes())
    assert avro.name == js.name == "MS181101ab"
    assert np.array_equal(avro.skymap.uniq, js.skymap.uniq)
    assert np.array_equal(avro.skymap.probdensity, js.skymap.probdensity)


@pytest.mark.parametrize("blob", [b"SIMPLE  = T" + b" " * 100, b"\x1f\x8b" + b"\0" * 30])
def test_bad_fits_is_a_decode_error(blob):
    with pytest.raises(DecodeError, match="sky map"):
        read_alert_or_map(blob)


# ---------------------------------------------------------------- points
def _fermi_lat():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(CATALOGS / "4FGL-DR4_gll_psc_v35_positions.fits")


def test_point_match_with_4fgl_ellipses_against_an_independent_computation():
    """The GBM flight position of trigger 336801278 (17.4° at 68 %) against 4FGL-DR4's
    95 % ellipses, combined at 90 %: the matched rows are exactly those within
    sqrt(r_alert² + r_ellipse(φ)²), computed here with astropy SkyCoord."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    alert = read_alert_or_map((DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml").read_bytes())
    p = alert.point
    t = _fermi_lat()
    errors = SourceErrors(np.asarray(t["Conf_95_SemiMajor"], float), np.asarray(t["Conf_95_SemiMinor"], float),
                          np.asarray(t["Conf_95_PosAng"], float), containment=0.95)
    m = crossmatch_point(p, t["RAJ2000"], t["DEJ2000"], errors, containment=0.9)
    src = SkyCoord(np.asarray(t["RAJ2000"], float), np.asarray(t["DEJ2000"], float), unit="deg")
    centre = SkyCoord(p.ra, p.dec, unit="deg")
    sep = src.separation(centre).deg
    phi = src.position_angle(centre).rad - np.radians(np.nan_to_num(np.asarray(t["Conf_95_PosAng"], float)))
    scale = math.sqrt(-2 * math.log(0.1)) / math.sqrt(-2 * math.log(0.05))
    a = np.nan_to_num(np.asarray(t["Conf_95_SemiMajor"], float)) * scale
    b = np.nan_to_num(np.asarray(t["Conf_95_SemiMinor"], float)) * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        r_src = np.nan_to_num(a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2))
    r_alert = p.error_radius * math.sqrt(-2 * math.log(0.1)) / math.sqrt(-2 * math.log(1 - p.containment))
    expected = np.flatnonzero(sep <= np.hypot(r_alert, r_src))
    assert 50 < len(expected) < len(t)
    assert sorted(m.rows.tolist()) == expected.tolist()
    assert np.all(np.diff(m.separation_deg) >= 0)
    assert m.nearest_row == int(np.argmin(sep)) == m.rows[0]
    assert np.allclose(m.separation_deg, sep[m.rows], rtol=1e-9, atol=1e-12)


def test_ellipse_radius_along_and_across_the_major_axis():
    """A source with a 1° x 0.25° ellipse at PA 0 (north): an alert 0.9° north of it
    matches, the same 0.9° east does not."""
    errors = SourceErrors(np.array([1.0]), np.array([0.25]), np.array([0.0]), containment=0.95)
    north = crossmatch_point(PointLocalization(ra=100.0, dec=0.9), [100.0], [0.0], errors, containment=0.95)
    east = crossmatch_point(PointLocalization(ra=100.9, dec=0.0), [100.0], [0.0], errors, containment=0.95)
    assert north.rows.tolist() == [0] and math.isclose(north.radius_deg[0], 1.0, rel_tol=1e-9)
    assert east.rows.tolist() == [] and east.nearest_row == 0


def test_containment_rescaling_follows_rayleigh():
    assert math.isclose(rayleigh_factor(0.3934693402873666), 1.0)  # 1 - exp(-1/2)
    # a 1° radius at 68 % is sqrt(-2 ln 0.1)/sqrt(-2 ln 0.32) = 1.42° at 90 %
    m = crossmatch_point(PointLocalization(ra=0.0, dec=0.0, error_radius=1.0, containment=0.68),
                         [0.0, 1.41, 1.43], [1.0e-9, 0.0, 0.0], containment=0.9)
    assert m.rows.tolist() == [0, 1]
    with pytest.raises(ValueError, match="containment"):
        rayleigh_factor(1.0)


# ---------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_json_one_object_per_row_equal_to_ligo_skymap():
    catalog = CATALOGS / "gwemopt_catalog_glade.csv"
    alert = MAPS["MS181101ab-initial.json"]
    proc = _cli("crossmatch", str(alert), "--catalog", str(catalog), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    t = Table.read(catalog)
    assert [r["row"] for r in rows] == list(range(len(t)))
    ra, dec = np.asarray(t["ra"], float), np.asarray(t["dec"], float)
    dist = np.ma.filled(np.ma.asarray(t["distmpc"], dtype=float), np.nan)
    ref = _ligo(_ligo_table(_map_bytes(alert)), ra, dec, dist)
    got = {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0] if k != "row"}
    assert _rel(got["searched_prob"], ref.searched_prob) <= 1e-6
    assert _rel(got["searched_area_deg2"], ref.searched_area) <= 1e-6
    assert _rel(got["probdensity_per_deg2"] * (180 / math.pi) ** 2, ref.probdensity) <= 1e-6
    assert _rel(got["searched_prob_vol"], ref.searched_prob_vol) <= 1e-4
    assert _rel(got["probdensity_vol_per_mpc3"], ref.probdensity_vol) <= 1e-4


def test_cli_point_alert_and_errors():
    proc = _cli("crossmatch", str(DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"), "--catalog",
                str(CATALOGS / "4FGL-DR4_gll_psc_v35_positions.fits"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows and rows[0]["nearest"] and all(r["separation_deg"] <= r["radius_deg"] for r in rows)
    bad = _cli("crossmatch", str(MAPS["MS220722v-O4"]), "--catalog", str(ROOT / "README.md"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("mma-broker: error: catalog README.md: ")
    assert str(ROOT) not in bad.stderr
    nomap = _cli("crossmatch", str(DATA / "igwn" / "userguide" / "MS181101ab-retraction.json"), "--catalog",
                 str(CATALOGS / "CLU_mini.csv"))
    assert nomap.returncode == 1 and "no sky map and no position" in nomap.stderr
