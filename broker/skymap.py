"""HEALPix probability sky maps: read them from FITS bytes and summarize them.

Every HEALPix sky map in the broker (LVK ``igwn.gwalert`` maps, GCN Fermi GBM / Swift
maps, RAVEN joint maps) goes through :func:`read_skymap`, which turns the two layouts
upstream uses into one multi-order representation:

* multi-order (``ORDERING = 'NUNIQ'``): a ``UNIQ`` column (NUNIQ pixel index) and a
  ``PROBDENSITY`` column (sr⁻¹), as written by ``ligo.skymap`` since O3;
* flat single-resolution maps (``ORDERING = 'RING'`` or ``'NESTED'``): a ``PROB``
  column (probability per pixel; ``PROBABILITY`` in some Fermi GBM files), implicitly
  indexed or with an explicit ``PIXEL`` column. They are converted to NUNIQ indices of
  one order and density ``PROB / pixel area``, the conversion ``ligo.skymap``'s
  ``derasterize`` makes (without merging equal sibling pixels, which changes no
  credible-region number: equal densities add area and probability in proportion).

:func:`summarize_multiorder` gives the numbers of the
:class:`~broker.event.HealpixLocalization` with the greedy method of
``ligo.skymap.postprocess.crossmatch`` (Singer & Price 2016, PRD 93, 024013, §IV):
pixels sorted by descending probability density, cumulative probability and area,
credible areas interpolated linearly with the boundary condition that zero
probability takes zero area.

The input may be gzip-compressed. Everything is vectorized numpy; an O4 BAYESTAR map
(~20k rows) summarizes in a few milliseconds, a 322k-row Swift map in tens of ms.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy_healpix.core import healpix_to_lonlat, level_ipix_to_uniq, ring_to_nested, uniq_to_level_ipix

from broker.errors import DecodeError
from broker.event import HealpixLocalization

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
SQDEG_PER_SR = (180.0 / math.pi) ** 2
FULL_SKY_DEG2 = 4.0 * 180.0**2 / math.pi
# Header keywords that describe the table layout, not the sky map (left out of meta).
_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "TTYPE", "TFORM", "TUNIT",
               "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP", "EXTNAME", "COMMENT", "HISTORY")
_PROB_COLUMNS = ("PROB", "PROBABILITY")
_DISTANCE_COLUMNS = ("DISTMU", "DISTSIGMA", "DISTNORM")


@dataclass(frozen=True)
class MultiOrderSkyMap:
    """A HEALPix sky map in multi-order (NUNIQ) form.

    Attributes
    ----------
    uniq : numpy.ndarray, shape (n,), int64
        NUNIQ pixel indices, ``4 * 4**order + ipix_nested``.
    probdensity : numpy.ndarray, shape (n,), float64
        Probability density per steradian in each pixel.
    distance : dict of str to numpy.ndarray, shape (n,), float64
        The distance layers present in the file, by column name: ``DISTMU`` and
        ``DISTSIGMA`` (Mpc), ``DISTNORM`` (Mpc⁻²). Empty for 2D maps.
    meta : dict
        The HEALPix extension's header keywords (structural table keywords left out),
        e.g. ``ORDERING`` as read from the file, ``OBJECT``, ``DISTMEAN``, ``DISTSTD``.
    """

    uniq: np.ndarray
    probdensity: np.ndarray
    distance: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _open_hdul(fits_bytes: bytes) -> fits.HDUList:
    if fits_bytes[:2] == GZIP_MAGIC:
        try:
            fits_bytes = gzip.decompress(fits_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise DecodeError(f"sky map: corrupt gzip stream ({exc})") from None
    if not fits_bytes.startswith(b"SIMPLE  ="):
        raise DecodeError(f"sky map: not a FITS file (starts with {fits_bytes[:16]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(fits_bytes), memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DecodeError(f"sky map: unreadable FITS ({exc})") from None
    return hdul


def _healpix_table(hdul: fits.HDUList) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        names = {n.upper() for n in hdu.columns.names}
        if hdu.header.get("PIXTYPE", "HEALPIX").strip().upper() == "HEALPIX" and (
            "UNIQ" in names or "PROBDENSITY" in names or names & set(_PROB_COLUMNS)
        ):
            return hdu
    raise DecodeError("sky map: no HEALPix binary table with a UNIQ, PROBDENSITY or PROB column")


def _column(data: fits.FITS_rec, names: list[str], name: str, dtype: str) -> np.ndarray:
    actual = names[[n.upper() for n in names].index(name)]
    # ravel(): healpy-style files store 1024 pixels per row in vector columns.
    return np.ascontiguousarray(np.asarray(data[actual]).ravel(), dtype=dtype)


def _nside_of(npix: int, where: str) -> int:
    nside = math.isqrt(npix // 12)
    if 12 * nside * nside != npix or nside & (nside - 1):
        raise DecodeError(f"sky map: {where} has {npix} pixels, not 12 * nside**2 with nside a power of 2")
    return nside


def read_skymap(fits_bytes: bytes) -> MultiOrderSkyMap:
    """Read a HEALPix sky map (multi-order or flat, gzip or not) into NUNIQ form.

    Parameters
    ----------
    fits_bytes : bytes
        The FITS file's bytes, optionally gzip-compressed.

    Returns
    -------
    MultiOrderSkyMap
        Flat maps come back with all pixels at their one order, in NESTED order.

    Raises
    ------
    DecodeError
        If the bytes are not FITS, hold no HEALPix table, have an unknown ``ORDERING``,
        a non-equatorial ``COORDSYS``, a pixel count that is not ``12 nside²``, or
        invalid NUNIQ indices.
    """
    with _open_hdul(fits_bytes) as hdul:
        hdu = _healpix_table(hdul)
        header = hdu.header
        names = list(hdu.columns.names)
        upper = [n.upper() for n in names]
        try:
            data = hdu.data
        except (TypeError, ValueError, OSError) as exc:  # truncated file: too few bytes for NAXIS2 rows
            raise DecodeError(f"sky map: unreadable HEALPix table ({' '.join(str(exc).split())})") from None
        if data is None:
            raise DecodeError("sky map: HEALPix table has no rows")
        meta = {k: v for k, v in header.items() if k and not k.startswith(_STRUCTURAL)}
        coordsys = str(header.get("COORDSYS", "C")).strip().upper()
        if coordsys not in ("C", "CELESTIAL", "EQUATORIAL"):
            raise DecodeError(f"sky map: COORDSYS={coordsys!r}, only equatorial (C) maps are supported")
        ordering = str(header.get("ORDERING", "NUNIQ" if "UNIQ" in upper else "RING")).strip().upper()
        layers = [c for c in _DISTANCE_COLUMNS if c in upper]

        if ordering == "NUNIQ" or "UNIQ" in upper:
            if "UNIQ" not in upper or "PROBDENSITY" not in upper:
                raise DecodeError("sky map: ORDERING='NUNIQ' but no UNIQ and PROBDENSITY columns")
            uniq = _column(data, names, "UNIQ", "int64")
            probdensity = _column(data, names, "PROBDENSITY", "float64")
            if uniq.size and uniq.min() < 4:
                raise DecodeError(f"sky map: invalid NUNIQ index {int(uniq.min())} (must be >= 4)")
            distance = {c: _column(data, names, c, "float64") for c in layers}
        elif ordering in ("RING", "NESTED", "NEST"):
            prob_name = next((c for c in ("PROBDENSITY", *_PROB_COLUMNS) if c in upper), None)
            if prob_name is None:
                raise DecodeError(f"sky map: flat {ordering} map without a PROB column (columns {names})")
            values = _column(data, names, prob_name, "float64")
            if "PIXEL" in upper:  # explicit indexing: partial-sky map
                ipix = _column(data, names, "PIXEL", "int64")
                if "NSIDE" not in header:
                    raise DecodeError("sky map: explicitly indexed (PIXEL column) map without NSIDE keyword")
                nside = int(header["NSIDE"])
                _nside_of(12 * nside * nside, "NSIDE")
            else:
                nside = _nside_of(values.size, f"flat {ordering} map")
                ipix = np.arange(values.size, dtype=np.int64)
            if ordering == "RING":
                ipix = ring_to_nested(ipix, nside).astype(np.int64)
            level = int(nside).bit_length() - 1
            uniq = level_ipix_to_uniq(level, ipix).astype(np.int64)
            pixarea_sr = 4.0 * math.pi / (12 * nside * nside)
            probdensity = values if prob_name == "PROBDENSITY" else values / pixarea_sr
            distance = {c: _column(data, names, c, "float64") for c in layers}
            order = np.argsort(uniq, kind="stable")
            uniq, probdensity = uniq[order], probdensity[order]
            distance = {c: v[order] for c, v in distance.items()}
        else:
            raise DecodeError(f"sky map: ORDERING={ordering!r}, expected NUNIQ, NESTED or RING")

    if uniq.shape != probdensity.shape or not uniq.size:
        raise DecodeError(f"sky map: {uniq.size} pixels / {probdensity.size} densities, expected equal and > 0")
    if not np.all(np.isfinite(probdensity)) or probdensity.min() < 0:
        raise DecodeError("sky map: probability density has negative, NaN or infinite values")
    return MultiOrderSkyMap(uniq=uniq, probdensity=probdensity, distance=distance, meta=meta)


def read_multiorder(fits_bytes: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a HEALPix sky map as NUNIQ indices and probability densities.

    Parameters
    ----------
    fits_bytes : bytes
        Multi-order (NUNIQ) or flat (RING/NESTED) HEALPix FITS, optionally gzipped.

    Returns
    -------
    uniq : numpy.ndarray, shape (n,), int64
        NUNIQ pixel indices.
    probdensity : numpy.ndarray, shape (n,), float64
        Probability density, sr⁻¹.
    meta : dict
        Header keywords of the HEALPix extension (see :class:`MultiOrderSkyMap`).

    Raises
    ------
    DecodeError
        See :func:`read_skymap`.
    """
    sky = read_skymap(fits_bytes)
    return sky.uniq, sky.probdensity, sky.meta


def pixel_area_sr(uniq: np.ndarray) -> np.ndarray:
    """Area of each NUNIQ pixel.

    Parameters
    ----------
    uniq : numpy.ndarray, shape (n,), int
        NUNIQ pixel indices.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        Pixel areas, sr: ``4π / (12 · 4**order)``.
    """
    level, _ = uniq_to_level_ipix(np.asarray(uniq, dtype=np.int64))
    return (math.pi / 3.0) * np.ldexp(1.0, -2 * level.astype(np.int64))


def credible_areas_deg2(uniq: np.ndarray, probdensity: np.ndarray, levels=(0.5, 0.9)) -> np.ndarray:
    """Areas of the smallest credible regions of a multi-order map.

    The greedy method of ``ligo.skymap.postprocess.crossmatch`` (Singer & Price 2016,
    PRD 93, 024013): sort pixels by descending density, accumulate probability
    ``Σ ρ_i ΔΩ_i`` and area ``Σ ΔΩ_i``, and interpolate the area at each level
    linearly, starting from (0, 0); a level above the map's total probability gets
    the whole sky. The map is not renormalized (as in ``crossmatch``).

    Parameters
    ----------
    uniq : numpy.ndarray, shape (n,), int
        NUNIQ pixel indices.
    probdensity : numpy.ndarray, shape (n,), float
        Probability density, sr⁻¹.
    levels : sequence of float, shape (m,)
        Credible levels, 0..1.

    Returns
    -------
    numpy.ndarray, shape (m,), float64
        Areas, deg².
    """
    order = np.argsort(probdensity, kind="stable")[::-1]
    d_area_sr = pixel_area_sr(uniq)[order]
    prob = np.cumsum(probdensity[order] * d_area_sr)
    area_deg2 = np.cumsum(d_area_sr) * SQDEG_PER_SR
    return np.interp(np.asarray(levels, dtype=float), np.pad(prob, (1, 0)), np.pad(area_deg2, (1, 0)),
                     right=FULL_SKY_DEG2)


def _header_float(meta: dict[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def summarize(sky: MultiOrderSkyMap, skymap_url: str | None = None) -> HealpixLocalization:
    """Summarize a read sky map as a :class:`~broker.event.HealpixLocalization`.

    Parameters
    ----------
    sky : MultiOrderSkyMap
        From :func:`read_skymap`.
    skymap_url : str, optional
        Where the full map can be fetched, kept in the result.

    Returns
    -------
    HealpixLocalization
        ``area_50``/``area_90`` in deg² (see :func:`credible_areas_deg2`);
        ``ra_max``/``dec_max``: centre of the pixel of highest density, deg (the
        first such pixel in NUNIQ order if several tie); ``distmean``/``diststd``:
        header ``DISTMEAN``/``DISTSTD``, Mpc, None when absent.
    """
    total = float(np.sum(sky.probdensity * pixel_area_sr(sky.uniq)))
    if abs(total - 1.0) > 1e-3:
        log.warning("sky map %s: total probability %.6g, not 1; areas are computed as is",
                    sky.meta.get("OBJECT", "?"), total)
    area_50, area_90 = credible_areas_deg2(sky.uniq, sky.probdensity, (0.5, 0.9))
    i_max = int(np.argmax(sky.probdensity))
    level, ipix = uniq_to_level_ipix(sky.uniq[i_max : i_max + 1])
    lon, lat = healpix_to_lonlat(ipix, 1 << int(level[0]), order="nested")
    return HealpixLocalization(
        area_50=float(area_50),
        area_90=float(area_90),
        ra_max=float(lon.deg[0]),
        dec_max=float(lat.deg[0]),
        distmean=_header_float(sky.meta, "DISTMEAN"),
        diststd=_header_float(sky.meta, "DISTSTD"),
        skymap_url=skymap_url,
    )


def summarize_multiorder(fits_bytes: bytes, skymap_url: str | None = None) -> HealpixLocalization:
    """Decode a HEALPix FITS sky map and summarize its localization.

    Parameters
    ----------
    fits_bytes : bytes
        Multi-order (NUNIQ) or flat (RING/NESTED) HEALPix FITS, optionally gzipped.
    skymap_url : str, optional
        Where the full map can be fetched, kept in the result.

    Returns
    -------
    HealpixLocalization
        See :func:`summarize`; the credible areas equal
        ``ligo.skymap.postprocess.crossmatch(read_sky_map(f, moc=True),
        contours=(0.5, 0.9)).contour_areas``.

    Raises
    ------
    DecodeError
        See :func:`read_skymap`.
    """
    return summarize(read_skymap(fits_bytes), skymap_url=skymap_url)
