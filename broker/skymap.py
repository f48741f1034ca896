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

Hostile input (:mod:`broker.limits`): gzip is inflated here in bounded steps and refused
once over ``max_skymap_bytes`` (a 3.6 MB gzip bomb used to inflate to 2.5 GB); the
FITS headers are walked before astropy sees the file, refusing any HDU whose declared
data size (``|BITPIX|/8 · GCOUNT · (PCOUNT + NAXIS1 · NAXIS2 ...)``) is over that limit
or beyond the end of the file; tile-compressed images are never inflated; NSIDE, NUNIQ
and PIXEL values are range-checked before any HEALPix arithmetic; the CPU budget is
checked between steps. Every failure, astropy's included (``VerifyError``, ...), is a
one-line :class:`~broker.errors.DecodeError`.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy_healpix.core import healpix_to_lonlat, level_ipix_to_uniq, ring_to_nested, uniq_to_level_ipix

from broker.errors import DecodeError
from broker.event import HealpixLocalization
from broker.limits import check_cpu, current_limits, over_limit

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
SQDEG_PER_SR = (180.0 / math.pi) ** 2
FULL_SKY_DEG2 = 4.0 * 180.0**2 / math.pi
# Header keywords that describe the table layout, not the sky map (left out of meta).
_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "TTYPE", "TFORM", "TUNIT",
               "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP", "EXTNAME", "COMMENT", "HISTORY")
_PROB_COLUMNS = ("PROB", "PROBABILITY")
_DISTANCE_COLUMNS = ("DISTMU", "DISTSIGMA", "DISTNORM")
_BLOCK = 2880  # FITS block, bytes
_CARD = 80  # FITS header card, bytes
_MAX_HDUS = 64  # real sky maps have 2 (primary + HEALPix table)
_GUNZIP_STEP = 8 * 1024 * 1024  # bytes inflated between limit and CPU checks
_VLA_FORMAT = re.compile(rb"^\s*'\s*\d*\s*[PQ][LXBIJKAEDCM]", re.IGNORECASE)  # TFORMn = '1PE(100)', 'QD'...
_MAX_ORDER = 29  # deepest HEALPix order (nside 2**29), as in astropy-healpix / ligo.skymap


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:199] + "…"
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, (OSError, ValueError)) else text


def _card_int(card: bytes, index: int) -> int:
    """The integer value of a fixed-format header card (``KEYWORD = value / comment``)."""
    text = bytes(card[10:]).split(b"/", 1)[0].strip()
    try:
        return int(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        keyword = bytes(card[:8]).decode("ascii", "replace").strip()
        raise DecodeError(
            f"sky map: unreadable FITS (HDU {index}: {keyword} = {text[:20]!r} is not an integer)"
        ) from None


class _Layout:
    """A resumable walk over the HDU headers of a FITS file, made before astropy reads it.

    Each header's layout keywords give the size of the data that follows,
    ``|BITPIX|/8 · GCOUNT · (PCOUNT + NAXIS1 · NAXIS2 ...)``, checked against
    ``max_skymap_bytes`` as soon as the header is complete, and (when the whole file is
    there) against the bytes present. Fed the growing output of the gunzip, it also
    tells where the FITS content ends (bytes after the last HDU that do not start an
    ``XTENSION``, which astropy ignores), so that inflating can stop there.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pos = 0  # where the next HDU header starts
        self.index = 0  # its number (0: primary)
        self.end: int | None = None  # end of the FITS content, once known

    def advance(self, buf: bytes | bytearray, *, complete: bool) -> None:
        """Walk every header complete in ``buf``; ``complete``: ``buf`` is the whole file.

        Raises
        ------
        DecodeError
            An HDU declaring more than the limit, a truncated file (``complete``), a
            layout keyword missing or not a non-negative integer, more than
            ``_MAX_HDUS`` HDUs.
        """
        n = len(buf)
        while self.end is None and self.pos < n:
            if self.index:
                if n - self.pos < 9 and not complete:
                    return
                if buf[self.pos : self.pos + 9] != b"XTENSION=":
                    self.end = self.pos
                    return
            if self.index >= _MAX_HDUS:
                raise DecodeError(f"sky map: unreadable FITS (more than {_MAX_HDUS} HDUs)")
            cards: dict[bytes, bytes] = {}
            p, ended = self.pos, False
            while not ended:
                if p + _BLOCK > n:
                    if complete:
                        raise DecodeError(f"sky map: unreadable FITS (header of HDU {self.index} has no END card: "
                                          "truncated)")
                    return  # wait for more bytes; resume at this header
                for c in range(p, p + _BLOCK, _CARD):
                    key = bytes(buf[c : c + 8]).rstrip()
                    if key == b"END":
                        ended = True
                        break
                    if buf[c + 8 : c + 10] == b"= " and (key in (b"BITPIX", b"PCOUNT", b"GCOUNT", b"TFIELDS")
                                                         or key.startswith(b"NAXIS")):
                        cards.setdefault(key, bytes(buf[c : c + _CARD]))
                    elif key.startswith(b"TFORM") and _VLA_FORMAT.match(bytes(buf[c + 10 : c + _CARD])):
                        # Variable-length arrays: no sky map uses them, and astropy reads them
                        # row by row in Python from descriptors in the data (1.4 s for a
                        # 19,200-row map, minutes for larger, beyond any CPU check).
                        form = bytes(buf[c + 10 : c + 40]).split(b"/")[0].strip().decode("ascii", "replace")
                        raise DecodeError(f"sky map: HDU {self.index} {key.decode('ascii', 'replace')} = {form} "
                                          "is a variable-length array column, not supported")
                p += _BLOCK
                if (p - self.pos) % (256 * _BLOCK) == 0:
                    check_cpu("sky map FITS header")
            size = self._data_size(cards)
            if size > self.limit:
                raise over_limit("max_skymap_bytes", size, f"sky map HDU {self.index} declared data size in bytes")
            if complete and p + size > n:
                table = bytes(buf[self.pos : self.pos + 20]).rstrip().endswith(b"'BINTABLE'")
                what = "HEALPix table" if table else "FITS"
                raise DecodeError(f"sky map: unreadable {what} (HDU {self.index} declares {size:,} bytes of data, "
                                  f"{max(n - p, 0):,} present: truncated file)")
            self.pos = p + -(-size // _BLOCK) * _BLOCK
            self.index += 1

    def _data_size(self, cards: dict[bytes, bytes]) -> int:
        index = self.index
        if b"BITPIX" not in cards or b"NAXIS" not in cards:
            raise DecodeError(f"sky map: unreadable FITS (HDU {index} has no BITPIX or NAXIS)")
        bitpix, naxis = _card_int(cards[b"BITPIX"], index), _card_int(cards[b"NAXIS"], index)
        if bitpix not in (8, 16, 32, 64, -32, -64) or not 0 <= naxis <= 999:
            raise DecodeError(f"sky map: unreadable FITS (HDU {index}: BITPIX = {bitpix}, NAXIS = {naxis})")
        axes = []
        for i in range(1, naxis + 1):
            card = cards.get(b"NAXIS%d" % i)
            value = _card_int(card, index) if card is not None else -1
            if value < 0:
                raise DecodeError(f"sky map: unreadable FITS (HDU {index}: NAXIS{i} missing or negative)")
            axes.append(value)
        pcount = _card_int(cards[b"PCOUNT"], index) if b"PCOUNT" in cards else 0
        gcount = _card_int(cards[b"GCOUNT"], index) if b"GCOUNT" in cards else 1
        if pcount < 0 or gcount < 0:
            raise DecodeError(f"sky map: unreadable FITS (HDU {index}: PCOUNT = {pcount}, GCOUNT = {gcount})")
        tfields = _card_int(cards[b"TFIELDS"], index) if b"TFIELDS" in cards else 0
        if not 0 <= tfields <= 999:  # the FITS standard's bound; astropy allocates per field first
            raise DecodeError(f"sky map: unreadable FITS (HDU {index}: TFIELDS = {tfields}, not in 0 .. 999)")
        if index == 0 and len(axes) > 1 and axes[0] == 0:
            axes = axes[1:]  # random groups: NAXIS1 = 0
        return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes)) if axes else 0


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip stream (one or more members) to at most ``limit`` bytes of FITS.

    Inflates ``_GUNZIP_STEP`` bytes at a time, walking the FITS headers as they come
    (:class:`_Layout`): an HDU declaring more than ``limit`` stops it at its header,
    bytes past the end of the FITS content are not inflated (astropy would ignore
    them), anything else stops once past ``limit``.

    Raises
    ------
    DecodeError
        ``max_skymap_bytes`` exceeded, not FITS inside, or a corrupt / truncated stream.
    """
    out = bytearray()
    layout = _Layout(limit)
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=31)  # gzip header and trailer
            pending = rest
            while True:
                chunk = inflater.decompress(pending, _GUNZIP_STEP)
                out += chunk
                if len(out) >= 9 and not out.startswith(b"SIMPLE  ="):
                    raise DecodeError(f"sky map: not a FITS file inside the gzip (starts with {bytes(out[:16])!r})")
                layout.advance(out, complete=False)
                if layout.end is not None:
                    return bytes(out[: layout.end])
                if len(out) > limit:
                    raise over_limit("max_skymap_bytes", 0, "sky map size after gunzip in bytes")
                check_cpu("sky map gunzip")
                if inflater.eof:
                    break
                pending = inflater.unconsumed_tail
                if not pending and not chunk:
                    raise DecodeError("sky map: corrupt gzip stream (truncated: it ends inside a member)")
            rest = inflater.unused_data.lstrip(b"\0")  # zero padding after a member is allowed
            if rest and rest[:2] != GZIP_MAGIC:
                raise DecodeError(
                    f"sky map: corrupt gzip stream ({len(rest):,} bytes of garbage after the last member)"
                )
    except zlib.error as exc:
        raise DecodeError(f"sky map: corrupt gzip stream ({exc})") from None
    return bytes(out)


def _open_hdul(fits_bytes: bytes) -> fits.HDUList:
    """Inflate (bounded) and check the layout, then let astropy parse the headers."""
    limit = current_limits().max_skymap_bytes
    if fits_bytes[:2] == GZIP_MAGIC:
        fits_bytes = _gunzip(fits_bytes, limit)
    elif len(fits_bytes) > limit:
        raise over_limit("max_skymap_bytes", len(fits_bytes), "sky map size in bytes")
    if not fits_bytes.startswith(b"SIMPLE  ="):
        raise DecodeError(f"sky map: not a FITS file (starts with {fits_bytes[:16]!r})")
    _Layout(limit).advance(fits_bytes, complete=True)
    check_cpu("sky map FITS layout")
    try:
        hdul = fits.open(io.BytesIO(fits_bytes), memmap=False, lazy_load_hdus=False,
                         disable_image_compression=True)  # never inflate tile-compressed HDUs
    except Exception as exc:  # astropy raises OSError, VerifyError, KeyError, ... on broken files
        raise DecodeError(f"sky map: unreadable FITS ({_one_line(exc)})") from None
    return hdul


def _healpix_table(hdul: fits.HDUList) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU) or hdu.header.get("ZIMAGE") is True:
            continue
        names = {str(n).upper() for n in hdu.columns.names}
        if str(hdu.header.get("PIXTYPE", "HEALPIX")).strip().upper() == "HEALPIX" and (
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
    if 12 * nside * nside != npix or nside & (nside - 1) or not 1 <= nside <= 1 << _MAX_ORDER:
        raise DecodeError(f"sky map: {where} has {npix} pixels, not 12 * nside**2 with nside a power of 2 "
                          f"up to 2**{_MAX_ORDER}")
    return nside


def _header_nside(header: fits.Header) -> int:
    """``NSIDE`` of an explicitly indexed map: an integer power of 2 up to 2**29."""
    if "NSIDE" not in header:
        raise DecodeError("sky map: explicitly indexed (PIXEL column) map without NSIDE keyword")
    value = header["NSIDE"]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DecodeError(f"sky map: NSIDE = {str(value)[:20]!r} is not an integer")
    nside = int(value)
    if not 1 <= nside <= 1 << _MAX_ORDER or nside & (nside - 1):
        raise DecodeError(f"sky map: NSIDE = {nside} is not a power of 2 in 1 .. 2**{_MAX_ORDER}")
    return nside


def _table_arrays(hdu: fits.BinTableHDU) -> tuple[dict[str, Any], str, list[str], dict[str, np.ndarray]]:
    """Header keywords, ORDERING, column names and the needed columns (as numpy) of the table.

    Everything astropy is asked here (header values, the data, column conversion) is
    wrapped: a malformed file raises anything from ``VerifyError`` to ``KeyError``.
    """
    try:
        header = hdu.header
        names = [str(n) for n in hdu.columns.names]
        upper = [n.upper() for n in names]
        meta = {k: v for k, v in header.items() if k and not k.startswith(_STRUCTURAL)}
        coordsys = str(header.get("COORDSYS", "C")).strip().upper()
        ordering = str(header.get("ORDERING", "NUNIQ" if "UNIQ" in upper else "RING")).strip().upper()
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"sky map: unreadable FITS header ({_one_line(exc)})") from None
    if coordsys not in ("C", "CELESTIAL", "EQUATORIAL"):
        raise DecodeError(f"sky map: COORDSYS={coordsys[:20]!r}, only equatorial (C) maps are supported")
    wanted = [c for c in ("UNIQ", "PROBDENSITY", *_PROB_COLUMNS, "PIXEL", *_DISTANCE_COLUMNS) if c in upper]
    check_cpu("sky map header")
    try:
        data = hdu.data
        if data is None:
            raise DecodeError("sky map: HEALPix table has no rows")
        arrays = {}
        for c in wanted:
            arrays[c] = _column(data, names, c, "int64" if c in ("UNIQ", "PIXEL") else "float64")
            check_cpu("sky map columns")
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("sky map: out of memory reading the HEALPix table") from None
    except Exception as exc:  # truncated data, a text column where numbers are due, ...
        raise DecodeError(f"sky map: unreadable HEALPix table ({_one_line(exc)})") from None
    return meta, ordering, names, arrays


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
        a non-equatorial ``COORDSYS``, a pixel count that is not ``12 nside²``, invalid
        NUNIQ or PIXEL indices, columns of unequal length, or are over a limit
        (``max_skymap_bytes``, ``max_decode_cpu_s``). Never anything else.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's VerifyWarning etc. on odd headers
        with _open_hdul(fits_bytes) as hdul:
            try:
                hdu = _healpix_table(hdul)
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(f"sky map: unreadable FITS ({_one_line(exc)})") from None
            meta, ordering, names, arrays = _table_arrays(hdu)
            try:
                header_nside = _header_nside(hdu.header) if "PIXEL" in arrays and ordering != "NUNIQ" else None
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(f"sky map: unreadable NSIDE keyword ({_one_line(exc)})") from None
    layers = [c for c in _DISTANCE_COLUMNS if c in arrays]

    if ordering == "NUNIQ" or "UNIQ" in arrays:
        if "UNIQ" not in arrays or "PROBDENSITY" not in arrays:
            raise DecodeError("sky map: ORDERING='NUNIQ' but no UNIQ and PROBDENSITY columns")
        uniq, probdensity = arrays["UNIQ"], arrays["PROBDENSITY"]
        if uniq.size and (uniq.min() < 4 or uniq.max() >= 16 << 2 * _MAX_ORDER):
            bad = int(uniq.min()) if uniq.min() < 4 else int(uniq.max())
            raise DecodeError(f"sky map: invalid NUNIQ index {bad} (must be in 4 .. 16 * 4**{_MAX_ORDER} - 1)")
        distance = {c: arrays[c] for c in layers}
    elif ordering in ("RING", "NESTED", "NEST"):
        prob_name = next((c for c in ("PROBDENSITY", *_PROB_COLUMNS) if c in arrays), None)
        if prob_name is None:
            raise DecodeError(f"sky map: flat {ordering} map without a PROB column (columns {names[:10]})")
        values = arrays[prob_name]
        if "PIXEL" in arrays:  # explicit indexing: partial-sky map
            ipix, nside = arrays["PIXEL"], header_nside
            if ipix.size and (ipix.min() < 0 or ipix.max() >= 12 * nside * nside):
                raise DecodeError(f"sky map: PIXEL index outside 0 .. {12 * nside * nside - 1} (NSIDE = {nside})")
            if ipix.size != values.size:
                raise DecodeError(f"sky map: {ipix.size} PIXEL indices for {values.size} {prob_name} values")
        else:
            nside = _nside_of(values.size, f"flat {ordering} map")
            ipix = np.arange(values.size, dtype=np.int64)
        if ordering == "RING":
            ipix = ring_to_nested(ipix, nside).astype(np.int64)
        level = int(nside).bit_length() - 1
        uniq = level_ipix_to_uniq(level, ipix).astype(np.int64)
        pixarea_sr = 4.0 * math.pi / (12 * nside * nside)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN densities are refused below
            probdensity = values if prob_name == "PROBDENSITY" else values / pixarea_sr
        check_cpu("sky map flat to NUNIQ")
        distance = {c: arrays[c] for c in layers}
        order = np.argsort(uniq, kind="stable")
        uniq, probdensity = uniq[order], probdensity[order]
        distance = {c: v[order] if v.size == order.size else v for c, v in distance.items()}
    else:
        raise DecodeError(f"sky map: ORDERING={ordering[:20]!r}, expected NUNIQ, NESTED or RING")

    if uniq.shape != probdensity.shape or not uniq.size:
        raise DecodeError(f"sky map: {uniq.size} pixels / {probdensity.size} densities, expected equal and > 0")
    for c, v in distance.items():
        if v.shape != uniq.shape:
            raise DecodeError(f"sky map: {v.size} {c} values for {uniq.size} pixels")
    if not np.all(np.isfinite(probdensity)) or probdensity.min() < 0:
        raise DecodeError("sky map: probability density has negative, NaN or infinite values")
    check_cpu("sky map read")
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

    Raises
    ------
    DecodeError
        When the total probability is not finite (densities too large to sum) or is
        zero, or when the pixels cover more than the whole sky (overlapping NUNIQ).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        total = float(np.sum(sky.probdensity * pixel_area_sr(sky.uniq)))
    if not math.isfinite(total):
        raise DecodeError(f"sky map: total probability is {total} (densities too large to sum)")
    if not total > 0:
        raise DecodeError("sky map: total probability is 0 (every pixel has zero density): no localization")
    with np.errstate(over="ignore"):
        sky_area = float(np.sum(pixel_area_sr(sky.uniq))) * (180.0 / math.pi) ** 2
    if sky_area > FULL_SKY_DEG2 * (1 + 1e-9):
        raise DecodeError(f"sky map: its pixels cover {sky_area:,.1f} deg², more than the whole sky "
                          f"({FULL_SKY_DEG2:,.1f} deg²): they overlap")
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
        See :func:`read_skymap`; also when the densities are too large to sum.
    """
    return summarize(read_skymap(fits_bytes), skymap_url=skymap_url)
