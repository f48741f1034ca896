"""NUNIQ pixel operations (broker/enrich/moc.py) and partial-sky maps through the three callers:
the cross-match, the coincidences and the localization store.

The partial-sky map is a real one cut: the O4 BAYESTAR map of MS220722v (3D) keeping only
its 90 % credible region, as a MOC of an error region would be. Inside it the cross-match
must equal ligo.skymap's on the same cut map; outside it ligo.skymap (which assumes the
whole sky) reads a neighbouring pixel, while a position in no pixel must have density 0
and lie outside every credible region.
"""

from __future__ import annotations

import math
import tempfile
import warnings

import numpy as np
import pytest

from broker.enrich.coinc import PointSource, credible_level_at, density_at, overlap_integral
from broker.enrich.crossmatch import crossmatch_skymap, prepare
from broker.enrich.moc import (
    ORDER29, PixelIndex, level_ipix, nested_ranges, pixel_area_sr, product_integral, uniq_of_ranges,
)
from broker.enrich.store import _ranges, _uniq_of_ranges
from broker.skymap import FULL_SKY_DEG2, SQDEG_PER_SR, MultiOrderSkyMap, read_skymap
from tests.conftest import DATA

MS220722V = DATA / "igwn" / "gwcelery" / "MS220722v_bayestar.multiorder.fits"
SWIFT = DATA / "gcn" / "skymaps" / "swift_skymap.multiorder.fits"


# ------------------------------------------------------------------ pure pixel arithmetic
def test_nuniq_ranges_and_lookup_on_a_hand_made_moc():
    """Order-1 pixel 0 (uniq 16), order-2 pixels 4..7 (uniq 68..71, inside order-1 pixel 1)
    and order-0 pixel 11 (uniq 15): a partial map; NUNIQ = 4·4**k + ipix (MOC 2.0 §4.3)."""
    uniq = np.array([15, 71, 16, 68, 69, 70])
    level, ipix = level_ipix(uniq)
    assert level.tolist() == [0, 2, 1, 2, 2, 2] and ipix.tolist() == [11, 7, 0, 4, 5, 6]
    start, end, _ = nested_ranges(uniq, 2)
    assert start.tolist() == [176, 7, 0, 4, 5, 6] and end.tolist() == [192, 8, 4, 5, 6, 7]
    lo, hi, lv = nested_ranges(uniq)
    assert np.all(hi - lo == 4 ** (ORDER29 - lv)) and np.array_equal(uniq_of_ranges(lo, hi), uniq)
    index = PixelIndex.of(uniq)
    assert index.order == 2 and index.disjoint and not index.full_sky
    pixel, inside = index.find(np.array([0, 3, 4, 7, 8, 100, 176, 191, 175]))
    assert pixel.tolist() == [2, 2, 3, 1, -1, -1, 0, 0, -1]
    assert inside.tolist() == [True, True, True, True, False, False, True, True, False]
    assert not PixelIndex.of(np.array([16, 64])).disjoint  # order-2 pixel 0 inside order-1 pixel 0
    assert PixelIndex.of(np.arange(4, 16)).full_sky
    with pytest.raises(ValueError, match="NUNIQ index outside"):
        level_ipix(np.array([3]))
    assert pixel_area_sr(np.array([0, 29])).tolist() == [math.pi / 3, math.pi / 3 / 4.0**29]


def test_store_tile_ranges_are_the_moc_ranges():
    sky = read_skymap(SWIFT.read_bytes())
    lo, hi, level = _ranges(sky.uniq)
    assert [a.tolist() for a in (lo, hi, level)] == [a.tolist() for a in nested_ranges(sky.uniq)]
    assert np.array_equal(_uniq_of_ranges(lo, hi), sky.uniq)


def test_product_integral_against_a_brute_force_refinement():
    """Random nested partial maps (seeded) against the product summed on a common order-6
    grid, each pixel spread over its descendants."""
    rng = np.random.default_rng(20261130)

    def random_map():
        uniq = list(range(4, 16))
        for _ in range(int(rng.integers(0, 80))):
            u = uniq.pop(int(rng.integers(len(uniq))))
            uniq += [4 * u + k for k in range(4)]
        uniq = np.array(uniq)
        level, _ = level_ipix(uniq)
        uniq = uniq[(rng.random(uniq.size) < 0.7) & (level <= 6)]
        return uniq, rng.random(uniq.size)

    def on_grid(uniq, rho):
        grid = np.zeros(12 * 4**6)
        start, end, _ = nested_ranges(uniq, 6)
        for s, e, r in zip(start, end, rho):
            grid[s:e] = r
        return grid

    for _ in range(60):
        (ua, ra), (ub, rb) = random_map(), random_map()
        expected = float(np.sum(on_grid(ua, ra) * on_grid(ub, rb))) * pixel_area_sr(np.array([6]))[0]
        assert product_integral(ua, ra, ub, rb) == pytest.approx(expected, rel=1e-12, abs=1e-300)
        assert product_integral(ub, rb, ua, ra) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    with pytest.raises(ValueError, match="second sky map: its pixels overlap"):
        product_integral(np.arange(4, 16), np.ones(12), np.array([16, 64]), np.ones(2))


# ------------------------------------------------------------------ a real partial-sky map
@pytest.fixture(scope="module")
def cut():
    """MS220722v, full, and its 90 % credible region alone (a partial-sky map)."""
    full = read_skymap(MS220722V.read_bytes())
    prep = prepare(full)
    keep = prep.uniq[prep.cum_prob <= 0.9]
    mask = np.isin(full.uniq, keep)
    part = MultiOrderSkyMap(uniq=full.uniq[mask], probdensity=full.probdensity[mask],
                            distance={k: v[mask] for k, v in full.distance.items()}, meta=full.meta)
    return full, part, mask


def _positions(full, mask, n_each: int = 300):
    """Centres of pixels kept and pixels cut (seeded draw), and their DISTMU."""
    from astropy_healpix.core import healpix_to_lonlat

    rng = np.random.default_rng(7)
    pick = np.concatenate([rng.choice(np.flatnonzero(mask), n_each), rng.choice(np.flatnonzero(~mask), n_each)])
    level, ipix = level_ipix(full.uniq[pick])
    lon, lat = healpix_to_lonlat(ipix, np.left_shift(1, level), order="nested")
    mu = full.distance["DISTMU"][pick]
    dist = np.clip(np.where(np.isfinite(mu), mu, 100.0), 1.0, None)  # low-probability pixels have DISTMU = inf
    return lon.deg, lat.deg, dist, np.arange(pick.size) < n_each


def test_partial_sky_crossmatch_inside_equals_ligo_skymap_outside_is_outside(cut):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from ligo.skymap.io.fits import read_sky_map
    from ligo.skymap.postprocess.crossmatch import crossmatch

    full, part, mask = cut
    assert 0.2 < part.uniq.size / full.uniq.size < 0.9 and not PixelIndex.of(part.uniq).full_sky
    ra, dec, dist, held = _positions(full, mask)
    ours = crossmatch_skymap(part, ra, dec, dist)
    with tempfile.NamedTemporaryFile(suffix=".fits") as f:
        f.write(MS220722V.read_bytes())
        f.flush()
        table = read_sky_map(f.name, moc=True)
    table = table[np.isin(np.asarray(table["UNIQ"]), part.uniq)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = crossmatch(table, SkyCoord(ra * u.deg, dec * u.deg, dist * u.Mpc))
    # inside the cut map: ligo.skymap's numbers (2D to rounding, 3D to issue 9's 1e-4)
    assert np.allclose(ours.searched_prob[held], ref.searched_prob[held], rtol=1e-12, atol=0)
    assert np.allclose(ours.searched_area_deg2[held], ref.searched_area[held], rtol=1e-12, atol=0)
    assert np.allclose(ours.probdensity_per_deg2[held] * SQDEG_PER_SR, ref.probdensity[held], rtol=1e-12, atol=0)
    assert np.allclose(ours.searched_prob_vol[held], ref.searched_prob_vol[held], rtol=1e-4, atol=0)
    assert np.allclose(ours.probdensity_vol_per_mpc3[held], ref.probdensity_vol[held], rtol=1e-4, atol=0)
    # outside: density 0, outside every credible region; ligo.skymap reads a neighbour's pixel
    out = ~held
    assert np.all(ours.searched_prob[out] == 1.0) and np.all(ours.searched_area_deg2[out] == FULL_SKY_DEG2)
    assert np.all(ours.probdensity_per_deg2[out] == 0.0) and np.all(ours.probdensity_vol_per_mpc3[out] == 0.0)
    assert np.all(ours.searched_prob_vol[out] == 1.0)
    assert np.all(np.asarray(ref.probdensity)[out] > 0) and np.all(np.asarray(ref.searched_prob)[out] <= 0.9)
    # nothing outside is ranked inside the 90 % region; everything held is
    assert set(ours.ranked(0.9).tolist()) == set(np.flatnonzero(held & (ours.searched_prob_vol <= 0.9)).tolist())


def test_partial_sky_coincidence_functions(cut):
    """credible_level_at, density_at and the overlap integral on the cut map: the full
    map's values inside (the cut keeps the densest pixels, so their cumulative
    probabilities are the full map's), 1 and 0 outside; the exact overlap integral equals
    that of the full map with the cut pixels set to zero density."""
    full, part, mask = cut
    ra, dec, _, held = _positions(full, mask)
    level_full, level_part = credible_level_at(full, ra, dec), credible_level_at(part, ra, dec)
    assert np.array_equal(level_part[held], level_full[held]) and np.all(level_part[~held] == 1.0)
    assert np.all(level_full[~held] > 0.9)
    dens_part = density_at(part, ra, dec)
    assert np.array_equal(dens_part[held], density_at(full, ra, dec)[held]) and np.all(dens_part[~held] == 0.0)
    zeroed = MultiOrderSkyMap(uniq=full.uniq, probdensity=np.where(mask, full.probdensity, 0.0), meta=full.meta)
    swift = read_skymap(SWIFT.read_bytes())
    for method in ("raven", "exact"):  # ligo-raven takes no partial-sky map: "raven" is the exact integral here
        assert overlap_integral(part, swift, method) == pytest.approx(overlap_integral(zeroed, swift, "exact"),
                                                                      rel=1e-12)
    assert overlap_integral(part, PointSource(float(ra[-1]), float(dec[-1]))) == 0.0
    total = float(np.sum(part.probdensity * pixel_area_sr(level_ipix(part.uniq)[0])))
    assert overlap_integral(part, PointSource(float(ra[0]), float(dec[0]))) == pytest.approx(
        4 * math.pi * dens_part[0] / total, rel=1e-12)
