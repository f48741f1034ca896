"""Cross-match a HEALPix sky map with a catalog of positions (and distances).

The quantities are those of ``ligo.skymap.postprocess.crossmatch`` (Singer et al.
2016, ApJS 226, 10, §4; Singer & Price 2016, PRD 93, 024013; the 3D ones from
Singer et al. 2016, ApJL 829, L15), for each catalog source:

* ``searched_prob``: probability inside the smallest credible region that holds the
  source (pixels taken by descending probability density);
* ``searched_area_deg2``: the area of that region;
* ``probdensity_per_deg2``: the 2D probability density at the source (ligo.skymap's
  ``probdensity`` is per steradian; here it is divided by ``(180/π)²``);
* with distance layers and a source distance: ``searched_prob_vol``, the probability
  inside the smallest 3D credible region that holds it, and
  ``probdensity_vol_per_mpc3``, the 3D density there (:mod:`broker.enrich.volume`).

The 2D part is ligo.skymap's own method on the same arrays (same sort, same
cumulative sums, ties between equal densities broken the same way: by descending
NUNIQ index), so its numbers are bit for bit ligo.skymap's; the 3D part avoids
sorting 19 million voxels and agrees to rounding. Flat (single-order) maps are first
merged into multi-order form the way ``ligo.skymap.io.read_sky_map(..., moc=True)``
does (:func:`merge_equal_siblings`), because that merge changes which pixels tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.enrich.moc import PixelIndex, level_ipix, pixel_area_sr
from broker.errors import DecodeError
from broker.skymap import FULL_SKY_DEG2, SQDEG_PER_SR, MultiOrderSkyMap

_DISTANCE = ("DISTMU", "DISTSIGMA", "DISTNORM")


def merge_equal_siblings(sky: MultiOrderSkyMap) -> MultiOrderSkyMap:
    """Merge every block of sibling pixels whose values are all equal into their parent.

    The vectorized equivalent of ``ligo.skymap.bayestar.derasterize`` (its
    ``healpix_tree.reconstruct_nested``), which ``read_sky_map(..., moc=True)``
    applies to flat maps: going from order 0 down, a block of ``4**k`` pixels becomes
    one pixel when all of its pixels carry the same values in every column
    (``PROBDENSITY`` and the distance layers; NaN equal to NaN) and it is not part of a
    larger merged block. Pixels come back sorted by NUNIQ index.

    Parameters
    ----------
    sky : broker.skymap.MultiOrderSkyMap
        A flat map as :func:`broker.skymap.read_skymap` returns it: every pixel at one
        order, the whole sky, NESTED order. Anything else is returned unchanged.

    Returns
    -------
    broker.skymap.MultiOrderSkyMap
    """
    level, ipix = level_ipix(sky.uniq)
    order = int(level[0]) if level.size else 0
    npix = 12 << (2 * order)
    if level.size != npix or np.any(level != order) or np.any(ipix != np.arange(npix)):
        return sky
    columns = [sky.probdensity, *(sky.distance[c] for c in _DISTANCE if c in sky.distance)]
    # uniform[k]: whether each order-k block of 4**(order-k) pixels holds one value per
    # column. Uniform blocks have uniform sub-blocks, so a block is uniform when its 4
    # children are and their first pixels agree.
    uniform = {order: np.ones(npix, dtype=bool)}
    for k in range(order - 1, -1, -1):
        size = 1 << (2 * (order - k))
        block = uniform[k + 1].reshape(-1, 4).all(axis=1)
        for col in columns:
            if not block.any():
                break
            heads = col.reshape(-1, size)[:, :: size // 4]
            first = heads[:, :1]
            block &= ((heads == first) | (np.isnan(heads) & np.isnan(first))).all(axis=1)
        uniform[k] = block
    # a leaf: uniform, and its parent is not (then no ancestor is)
    uniq_parts, first_parts = [], []
    for k in range(order + 1):
        leaf = uniform[k] if k == 0 else uniform[k] & ~np.repeat(uniform[k - 1], 4)
        idx = np.flatnonzero(leaf).astype(np.int64)
        uniq_parts.append(4 * (1 << (2 * k)) + idx)
        first_parts.append(idx << (2 * (order - k)))
    uniq = np.concatenate(uniq_parts)
    first_pixel = np.concatenate(first_parts)
    srt = np.argsort(uniq, kind="stable")
    uniq, first_pixel = uniq[srt], first_pixel[srt]
    distance = {c: v[first_pixel] for c, v in sky.distance.items()}
    return MultiOrderSkyMap(uniq=uniq, probdensity=sky.probdensity[first_pixel], distance=distance, meta=sky.meta)


@dataclass(frozen=True)
class PreparedSkyMap:
    """A sky map sorted for cross-matching (pixels by descending probability density).

    Attributes
    ----------
    uniq : numpy.ndarray, shape (n,), int64
        NUNIQ indices, densest first (ties: higher NUNIQ first, as ligo.skymap).
    probdensity : numpy.ndarray, shape (n,)
        sr⁻¹.
    area_sr : numpy.ndarray, shape (n,)
        Pixel areas, sr.
    cum_prob : numpy.ndarray, shape (n,)
        Cumulative probability in that order.
    cum_area_deg2 : numpy.ndarray, shape (n,)
        Cumulative area, deg².
    distance : dict of str to numpy.ndarray, shape (n,)
        ``DISTMU``, ``DISTSIGMA``, ``DISTNORM`` in the same order (empty for 2D maps).
    max_order : int
        Deepest HEALPix order of the map.
    meta : dict
        The FITS header keywords of the map.
    pixels : broker.enrich.moc.PixelIndex
        Which pixel (index into the arrays above) holds a position.
    """

    uniq: np.ndarray
    probdensity: np.ndarray
    area_sr: np.ndarray
    cum_prob: np.ndarray
    cum_area_deg2: np.ndarray
    distance: dict[str, np.ndarray]
    max_order: int
    meta: dict[str, Any]
    pixels: PixelIndex

    @property
    def has_distance(self) -> bool:
        """Whether the map has all three distance layers."""
        return all(c in self.distance for c in _DISTANCE)

    def credible_areas_deg2(self, levels=(0.5, 0.9)) -> np.ndarray:
        """Areas of the smallest credible regions, deg² (ligo.skymap's ``contour_areas``).

        Parameters
        ----------
        levels : sequence of float, shape (k,)
            Credible levels, 0..1.
        """
        return np.interp(np.asarray(levels, dtype=float), np.pad(self.cum_prob, (1, 0)),
                         np.pad(self.cum_area_deg2, (1, 0)), right=FULL_SKY_DEG2)

    def locate(self, ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
        """Index (into the sorted arrays) of the pixel holding each position, and whether one does.

        ligo.skymap's look-up (the position's pixel at the map's deepest order, then the
        map pixel whose first deepest-order sub-pixel is the last one at or before it),
        checked against that pixel's end (:meth:`broker.enrich.moc.PixelIndex.locate`).

        Parameters
        ----------
        ra_deg, dec_deg : array_like, shape (m,)
            ICRS positions, deg (finite, |dec| ≤ 90).

        Returns
        -------
        pixel : numpy.ndarray, shape (m,), int64
            −1 where ``inside`` is False.
        inside : numpy.ndarray, shape (m,), bool
            False only for a position in no pixel of a partial-sky map.
        """
        return self.pixels.locate(ra_deg, dec_deg)

    def searched_prob_at(self, ra_deg, dec_deg) -> np.ndarray:
        """ligo.skymap's ``searched_prob`` at each position: :attr:`cum_prob` of its pixel.

        Parameters
        ----------
        ra_deg, dec_deg : array_like, shape (m,)
            As :meth:`locate`.

        Returns
        -------
        numpy.ndarray, shape (m,)
            Probability of the smallest credible region holding the position (not
            renormalized); 1.0 in no pixel of a partial-sky map (outside every region).
        """
        pixel, inside = self.locate(ra_deg, dec_deg)
        return np.where(inside, self.cum_prob[pixel], 1.0)


def prepare(sky: MultiOrderSkyMap) -> PreparedSkyMap:
    """Sort a sky map for cross-matching and accumulate its credible regions.

    Parameters
    ----------
    sky : broker.skymap.MultiOrderSkyMap
        From :func:`broker.skymap.read_skymap`; flat maps are merged first
        (:func:`merge_equal_siblings`).

    Returns
    -------
    PreparedSkyMap

    Raises
    ------
    DecodeError
        When the map's total probability is zero or not finite, a NUNIQ index is
        invalid, or its pixels overlap (or cover more than the sky).
    """
    if str(sky.meta.get("ORDERING", "")).strip().upper() in ("RING", "NESTED", "NEST"):
        sky = merge_equal_siblings(sky)
    # ligo.skymap: np.flipud(np.sort(table, order="PROBDENSITY")) -- ties by UNIQ
    order = np.lexsort((sky.uniq, sky.probdensity))[::-1]
    uniq = sky.uniq[order]
    probdensity = sky.probdensity[order]
    try:
        level, _ = level_ipix(uniq)
    except ValueError as exc:
        raise DecodeError(f"sky map: {exc}") from None
    area_sr = pixel_area_sr(level)
    with np.errstate(over="ignore", invalid="ignore"):
        cum_prob = np.cumsum(probdensity * area_sr)
    cum_area = np.cumsum(area_sr) * SQDEG_PER_SR
    if not (math.isfinite(cum_prob[-1]) and cum_prob[-1] > 0):
        raise DecodeError(f"sky map: total probability is {cum_prob[-1]:g}, cannot cross-match")
    if cum_area[-1] > FULL_SKY_DEG2 * (1 + 1e-9):
        raise DecodeError(f"sky map: its pixels cover {cum_area[-1]:,.1f} deg², more than the whole sky: they overlap")
    pixels = PixelIndex.of(uniq)
    if not pixels.disjoint:
        raise DecodeError("sky map: its pixels overlap (a NUNIQ pixel inside another)")
    return PreparedSkyMap(uniq=uniq, probdensity=probdensity, area_sr=area_sr, cum_prob=cum_prob,
                          cum_area_deg2=cum_area, distance={c: v[order] for c, v in sky.distance.items()},
                          max_order=pixels.order, meta=dict(sky.meta), pixels=pixels)


@dataclass(frozen=True)
class SkyMapMatch:
    """Cross-match of one sky map with a catalog, one value per catalog row.

    Rows without a usable position (or distance, for the 3D values) hold NaN.

    Attributes
    ----------
    searched_prob : numpy.ndarray, shape (m,)
        Probability of the smallest credible region holding the source, 0..1.
    searched_area_deg2 : numpy.ndarray, shape (m,)
        Area of that region, deg².
    probdensity_per_deg2 : numpy.ndarray, shape (m,)
        2D probability density at the source, deg⁻².
    searched_prob_vol : numpy.ndarray, shape (m,) or None
        Probability of the smallest 3D credible region holding the source; None when
        the map has no distance layers or no distances were given.
    probdensity_vol_per_mpc3 : numpy.ndarray, shape (m,) or None
        3D probability density at the source, Mpc⁻³.
    area_50_deg2, area_90_deg2 : float
        Areas of the 50 % and 90 % credible regions, deg².
    """

    searched_prob: np.ndarray
    searched_area_deg2: np.ndarray
    probdensity_per_deg2: np.ndarray
    searched_prob_vol: np.ndarray | None
    probdensity_vol_per_mpc3: np.ndarray | None
    area_50_deg2: float
    area_90_deg2: float

    def __len__(self) -> int:
        return int(self.searched_prob.size)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per catalog row, in row order (NaN as None).

        Keys ``row`` (0-based), ``searched_prob``, ``searched_area_deg2``,
        ``probdensity_per_deg2`` and, for 3D matches, ``searched_prob_vol`` and
        ``probdensity_vol_per_mpc3``.
        """
        names = ["searched_prob", "searched_area_deg2", "probdensity_per_deg2"]
        columns = [self.searched_prob, self.searched_area_deg2, self.probdensity_per_deg2]
        if self.searched_prob_vol is not None:
            names += ["searched_prob_vol", "probdensity_vol_per_mpc3"]
            columns += [self.searched_prob_vol, self.probdensity_vol_per_mpc3]
        lists = [c.tolist() for c in columns]
        return [{"row": i, **{n: (v[i] if v[i] == v[i] else None) for n, v in zip(names, lists)}}
                for i in range(len(self))]

    def ranked(self, level: float = 0.9) -> np.ndarray:
        """Row indices of the sources inside the ``level`` credible region, best first.

        Inside means ``searched_prob_vol <= level`` for 3D matches (else
        ``searched_prob <= level``); ranked by ascending searched probability (the
        3D one when there is one).
        """
        key = self.searched_prob_vol if self.searched_prob_vol is not None else self.searched_prob
        inside = np.flatnonzero(key <= level)
        return inside[np.argsort(key[inside], kind="stable")]


def crossmatch_skymap(sky: MultiOrderSkyMap | PreparedSkyMap, ra_deg, dec_deg, dist_mpc=None) -> SkyMapMatch:
    """Cross-match a sky map with catalog positions (and distances).

    Parameters
    ----------
    sky : broker.skymap.MultiOrderSkyMap or PreparedSkyMap
        The map (prepared once with :func:`prepare` when matched against several
        catalogs).
    ra_deg, dec_deg : array_like, shape (m,)
        ICRS positions, deg. Rows with a non-finite value or a declination outside
        [-90, 90] get NaN.
    dist_mpc : array_like, shape (m,), optional
        Luminosity distances, Mpc. With a 3D map, the 3D values are computed for the
        rows with a finite distance >= 0 (NaN elsewhere).

    Returns
    -------
    SkyMapMatch
        Numbers equal to ``ligo.skymap.postprocess.crossmatch(read_sky_map(f,
        moc=True), SkyCoord(ra, dec, dist))`` (Singer et al. 2016): ``searched_prob``,
        ``searched_area`` and ``probdensity`` (converted to deg⁻²) exactly, the 3D
        values to rounding (:mod:`broker.enrich.volume`). A position in no pixel of a
        partial-sky map (where ligo.skymap, which assumes the whole sky, reads a
        neighbouring pixel) lies outside every credible region: ``searched_prob`` 1,
        ``searched_area_deg2`` the whole sky, densities 0, ``searched_prob_vol`` 1.

    Raises
    ------
    DecodeError
        See :func:`prepare`.
    ValueError
        If the arrays differ in length.
    """
    from broker.enrich.volume import searched_volume

    prep = sky if isinstance(sky, PreparedSkyMap) else prepare(sky)
    ra = np.asarray(ra_deg, dtype=np.float64).ravel()
    dec = np.asarray(dec_deg, dtype=np.float64).ravel()
    if ra.shape != dec.shape:
        raise ValueError(f"{ra.size} right ascensions for {dec.size} declinations")
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    n = ra.size
    nan = np.full(n, np.nan)
    searched_prob, searched_area, density = nan.copy(), nan.copy(), nan.copy()
    idx, held = prep.locate(ra[ok], dec[ok])
    # a position in no pixel of a partial-sky map: density 0, outside every credible region
    searched_prob[ok] = np.where(held, prep.cum_prob[idx], 1.0)
    searched_area[ok] = np.where(held, prep.cum_area_deg2[idx], FULL_SKY_DEG2)
    density[ok] = np.where(held, prep.probdensity[idx] / SQDEG_PER_SR, 0.0)
    prob_vol = density_vol = None
    if dist_mpc is not None and prep.has_distance:
        dist = np.asarray(dist_mpc, dtype=np.float64).ravel()
        if dist.shape != ra.shape:
            raise ValueError(f"{dist.size} distances for {n} positions")
        ok3 = ok & np.isfinite(dist) & (dist >= 0)
        pixel = np.full(n, -1, dtype=np.int64)
        pixel[ok] = idx
        prob_vol, density_vol = nan.copy(), nan.copy()
        out3 = ok3 & (pixel < 0)
        prob_vol[out3], density_vol[out3] = 1.0, 0.0
        ok3 &= pixel >= 0
        if ok3.any():
            d = prep.distance
            prob_vol[ok3], density_vol[ok3] = searched_volume(
                prep.probdensity, prep.area_sr, d["DISTMU"], d["DISTSIGMA"], d["DISTNORM"], pixel[ok3], dist[ok3])
    area_50, area_90 = prep.credible_areas_deg2((0.5, 0.9))
    return SkyMapMatch(searched_prob=searched_prob, searched_area_deg2=searched_area, probdensity_per_deg2=density,
                       searched_prob_vol=prob_vol, probdensity_vol_per_mpc3=density_vol,
                       area_50_deg2=float(area_50), area_90_deg2=float(area_90))
