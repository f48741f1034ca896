"""Multi-order HEALPix (NUNIQ) pixels: index ranges, which pixel holds a position, products.

The one implementation of these pixel operations for the enrichment: the cross-match
(:mod:`broker.enrich.crossmatch`), the coincidences (:mod:`broker.enrich.coinc`) and the
localization store (:mod:`broker.enrich.store`) all use it.

NUNIQ (IVOA MOC 2.0, REC-MOC-2.0-20220727, §4.3 "NUNIQ"; Górski et al. 2005, ApJ 622, 759
for the NESTED scheme): pixel ``ipix`` (NESTED) of order ``k`` (``nside = 2**k``, 0 ≤ k ≤
29) is ``uniq = 4 · 4**k + ipix``, so ``k = floor(log2(uniq) / 2) − 1``. Its area is
``4π / (12 · 4**k)`` sr. Its descendants at a deeper order ``K`` are the NESTED indices
``[ipix · 4**(K−k), (ipix + 1) · 4**(K−k))``; two pixels of any orders are therefore nested
or disjoint, and a map is a set of disjoint integer ranges at order 29 (the form
healpix-alchemy's ``Tile`` stores).

A multi-order map need not cover the sky (a partial-sky map, e.g. a MOC of an error
region): :class:`PixelIndex` says, for each position, which pixel holds it and *whether
any does*. A position in no pixel has probability density 0 there; in the greedy credible
regions (:mod:`broker.enrich.crossmatch`) it lies outside every region. ligo.skymap 2.5.4's
``crossmatch`` assumes a full-sky map: for such a position it takes the pixel whose first
sub-pixel comes last before the position's (or, before every pixel, the last pixel in
NESTED order) — a neighbour's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ORDER29 = 29
"""Deepest HEALPix order (``nside = 2**29``), as in the MOC 2.0 standard and healpix-alchemy."""
_NUNIQ_MIN, _NUNIQ_END = 4, 16 << (2 * ORDER29)  # order 0 pixel 0; one past order 29's last pixel


def level_ipix(uniq) -> tuple[np.ndarray, np.ndarray]:
    """Order and NESTED index of NUNIQ pixels.

    Parameters
    ----------
    uniq : array_like of int, shape (n,)
        NUNIQ indices, ``4 · 4**order + ipix``.

    Returns
    -------
    level, ipix : numpy.ndarray, shape (n,), int64
        HEALPix order (0..29) and NESTED pixel index.

    Raises
    ------
    ValueError
        For an index outside ``4 .. 16 · 4**29 − 1`` (no HEALPix pixel).
    """
    from astropy_healpix.core import uniq_to_level_ipix

    uniq = np.asarray(uniq, dtype=np.int64)
    if uniq.size and (uniq.min() < _NUNIQ_MIN or uniq.max() >= _NUNIQ_END):
        raise ValueError("NUNIQ index outside 4 .. 16·4**29 - 1")
    level, ipix = uniq_to_level_ipix(uniq)
    return level.astype(np.int64, copy=False), ipix.astype(np.int64, copy=False)


def pixel_area_sr(level) -> np.ndarray:
    """Area of HEALPix pixels of the given orders, ``4π / (12 · 4**order)`` sr.

    Parameters
    ----------
    level : array_like of int, shape (n,)
        HEALPix orders (from :func:`level_ipix`).

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        sr; exact powers of two times ``π/3``, so equal to ligo.skymap's ``moc.uniq2pixarea``.
    """
    return (math.pi / 3.0) * np.ldexp(1.0, -2 * np.asarray(level, dtype=np.int64))


def nested_ranges(uniq, order: int = ORDER29) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each NUNIQ pixel as the half-open range of its NESTED descendants at ``order``.

    Parameters
    ----------
    uniq : array_like of int, shape (n,)
        NUNIQ indices, of orders ≤ ``order``.
    order : int
        The order of the ranges (29: healpix-alchemy ``Tile`` ranges).

    Returns
    -------
    start, end : numpy.ndarray, shape (n,), int64
        ``[ipix · 4**(order − k), (ipix + 1) · 4**(order − k))``, in the input's order.
    level : numpy.ndarray, shape (n,), int64
        Each pixel's order ``k``.

    Raises
    ------
    ValueError
        For an invalid NUNIQ index or a pixel deeper than ``order``.
    """
    level, ipix = level_ipix(uniq)
    if level.size and int(level.max()) > order:
        raise ValueError(f"a NUNIQ pixel of order {int(level.max())} is deeper than order {order}")
    start, end = _shifted(level, ipix, order)
    return start, end, level


def _shifted(level: np.ndarray, ipix: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    shift = 2 * (order - level)
    return ipix << shift, (ipix + 1) << shift


def uniq_of_ranges(start, end) -> np.ndarray:
    """The NUNIQ pixels whose order-29 ranges are ``[start, end)`` (inverse of :func:`nested_ranges`).

    Parameters
    ----------
    start, end : array_like of int, shape (n,)
        Order-29 NESTED ranges, each exactly one HEALPix pixel: length ``4**(29 − k)``,
        ``start`` a multiple of it.

    Returns
    -------
    numpy.ndarray, shape (n,), int64
        ``4 · 4**k + start / 4**(29 − k)``.
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(end, dtype=np.int64) - start
    shift = np.log2(length.astype(np.float64)).round().astype(np.int64)  # 2·(29 − k); exact for powers of 4
    level = ORDER29 - shift // 2
    return (4 << (2 * level)) + (start >> shift)


def lonlat_to_nested(ra_deg, dec_deg, order: int) -> np.ndarray:
    """NESTED index at ``order`` of the pixel holding each position.

    Parameters
    ----------
    ra_deg, dec_deg : array_like of float, shape (m,)
        ICRS right ascension and declination, deg (finite; |dec| ≤ 90).
    order : int
        HEALPix order, 0..29.

    Returns
    -------
    numpy.ndarray, shape (m,), int64
    """
    import astropy.units as u
    from astropy_healpix.core import lonlat_to_healpix

    return np.asarray(lonlat_to_healpix(np.asarray(ra_deg, dtype=np.float64) * u.deg,
                                        np.asarray(dec_deg, dtype=np.float64) * u.deg, 1 << order, order="nested"),
                      dtype=np.int64)


@dataclass(frozen=True)
class PixelIndex:
    """Which pixel of a multi-order map holds a position, for full- and partial-sky maps.

    ligo.skymap's look-up (``postprocess.crossmatch``): the position's pixel at the map's
    deepest order, then the map pixel whose first deepest-order descendant is the last
    one at or before it — and here also whether that pixel really holds it (a
    partial-sky map may have none).

    Attributes
    ----------
    order : int
        The map's deepest order.
    start, end : numpy.ndarray, shape (n,), int64
        The pixels' NESTED ranges at ``order``, sorted by ``start``.
    index : numpy.ndarray, shape (n,), int64
        Position of each sorted range in the ``uniq`` array the index was built from.
    """

    order: int
    start: np.ndarray
    end: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, uniq) -> "PixelIndex":
        """Index the pixels of ``uniq`` (NUNIQ, shape (n,), any order of pixels).

        Raises
        ------
        ValueError
            For an invalid NUNIQ index (see :func:`level_ipix`).
        """
        level, ipix = level_ipix(uniq)
        order = int(level.max()) if level.size else 0
        start, end = _shifted(level, ipix, order)
        srt = np.argsort(start, kind="stable")  # one pass when already sorted (NUNIQ order of one level)
        return cls(order=order, start=start[srt], end=end[srt], index=srt)

    @property
    def disjoint(self) -> bool:
        """Whether no pixel lies inside another (a valid map; ``uniq`` also unique)."""
        return bool(self.start.size < 2 or np.all(self.end[:-1] <= self.start[1:]))

    @property
    def full_sky(self) -> bool:
        """Whether the (disjoint) pixels cover the whole sky."""
        return bool(self.disjoint and int(np.sum(self.end - self.start)) == 12 << (2 * self.order))

    def find(self, nested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map pixel holding each NESTED index at :attr:`order`.

        Parameters
        ----------
        nested : numpy.ndarray of int, shape (m,)

        Returns
        -------
        pixel : numpy.ndarray, shape (m,), int64
            Position in the indexed ``uniq`` array; −1 where ``inside`` is False.
        inside : numpy.ndarray, shape (m,), bool
            Whether a pixel of the map holds it (always True for a full-sky map).
        """
        nested = np.asarray(nested, dtype=np.int64)
        pos = np.searchsorted(self.start, nested, side="right") - 1  # = np.digitize(nested, start) - 1
        inside = pos >= 0
        inside[inside] = nested[inside] < self.end[pos[inside]]
        return np.where(inside, self.index[np.clip(pos, 0, None)], -1), inside

    def locate(self, ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
        """The map pixel holding each position (:meth:`find` of its deepest-order pixel).

        Parameters
        ----------
        ra_deg, dec_deg : array_like of float, shape (m,)
            ICRS positions, deg (finite; |dec| ≤ 90).

        Returns
        -------
        pixel, inside : numpy.ndarray, shape (m,)
            As :meth:`find`.
        """
        return self.find(lonlat_to_nested(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg), self.order))


def product_integral(uniq_a, rho_a, uniq_b, rho_b, *, names: tuple[str, str] = ("first", "second")) -> float:
    """``∫ ρ_a(Ω) ρ_b(Ω) dΩ`` of two piecewise-constant multi-order maps, exactly.

    Pixels of two maps are nested or disjoint, so every overlapping pair is a pixel of
    one map inside (or equal to) a pixel of the other: for each pixel ``j`` of ``b``,
    either it lies strictly inside a pixel ``c`` of ``a`` (term ``ρ_a,c ρ_b,j ΔΩ_j``), or
    the pixels of ``a`` that start inside it lie inside it (term ``ρ_b,j Σ_i ρ_a,i ΔΩ_i``,
    summed with ``numpy.add.reduceat``: no differences of prefix sums, so no
    cancellation). Sky covered by only one map adds nothing. ``O(n_a + n_b log n_a)``
    after sorting, with ``a`` the larger map; a flat map, already in NESTED order, sorts
    in one pass.

    Parameters
    ----------
    uniq_a, uniq_b : array_like of int, shape (n_a,), (n_b,)
        NUNIQ pixels of each map (any order; full or partial sky).
    rho_a, rho_b : array_like of float, shape (n_a,), (n_b,)
        Their densities, e.g. probability per sr.
    names : (str, str)
        What to call the maps in an error message.

    Returns
    -------
    float
        The integral, in the product of the densities' units times sr (sr⁻¹ for two
        probability densities).

    Raises
    ------
    ValueError
        If a map has an invalid NUNIQ index, or pixels inside one another.
    """
    if np.size(uniq_b) > np.size(uniq_a):  # the larger map is summed in one pass, the smaller one looked up
        uniq_a, rho_a, uniq_b, rho_b, names = uniq_b, rho_b, uniq_a, rho_a, names[::-1]
    sa, ea, la, ia = _sorted_ranges(uniq_a, names[0])
    sb, eb, lb, ib = _sorted_ranges(uniq_b, names[1])
    ra = np.asarray(rho_a, dtype=np.float64)[ia]
    wa = np.append(ra * pixel_area_sr(la), 0.0)  # ρ ΔΩ, and a 0 for reduceat to end on
    rb = np.asarray(rho_b, dtype=np.float64)[ib]
    # the pixel of a with the last start at or before each pixel of b: does it hold b's pixel strictly?
    c = np.searchsorted(sa, sb, side="right") - 1
    cc = np.clip(c, 0, None)
    inside = (c >= 0) & (ea[cc] >= eb) & ((sa[cc] < sb) | (ea[cc] > eb))
    # else: the pixels of a that start in [sb, eb) are inside it
    lo = np.searchsorted(sa, sb, side="left")
    hi = np.searchsorted(sa, eb, side="left")
    bounds = np.empty(2 * lo.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = lo, hi
    sums = np.add.reduceat(wa, bounds)[0::2] if bounds.size else np.zeros(0)
    sums = np.where(inside | (lo == hi), 0.0, sums)
    held = float(np.sum(ra[cc[inside]] * rb[inside] * pixel_area_sr(lb[inside])))
    return float(np.dot(rb, sums)) + held


def _sorted_ranges(uniq, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    start, end, level = nested_ranges(uniq)
    srt = np.argsort(start, kind="stable")
    start, end = start[srt], end[srt]
    if start.size > 1 and np.any(end[:-1] > start[1:]):
        raise ValueError(f"{what} sky map: its pixels overlap (a NUNIQ pixel inside another)")
    return start, end, level[srt], srt
