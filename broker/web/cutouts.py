"""Optical candidates' images for the web pages: cutout stamps and light curves as PNG.

A ZTF alert packet carries three cutouts (``cutoutScience``, ``cutoutTemplate``,
``cutoutDifference``), each a gzip-compressed FITS file of a 63 × 63 pixel stamp centred
on the candidate (Masci et al. 2019, PASP 131, 018003, §6; ZTF Avro alert schema,
https://zwickytransientfacility.github.io/ztf-avro-alert/schema.html), and its
photometric history ``prv_candidates`` (detections with ``magpsf ± sigmapsf``, and
non-detections with the 5-sigma limiting magnitude ``diffmaglim``) over the last 30 days.
Rubin (LSST) alerts carry the same three stamps as plain FITS and a history of
difference-image fluxes in nJy (:mod:`broker.sources.lsst`).

Functions here turn those into PNG bytes; they do no I/O and know nothing of the
archive (:mod:`broker.web.group_extra` reads the packets).

Hostile stamps
--------------
A stamp comes from upstream bytes: it is decoded with bounded sizes. The gzip stream is
inflated at most :data:`MAX_STAMP_BYTES` (a 1 GB "gzip bomb" stops after that many bytes
and is refused, never inflated in memory), the FITS header is parsed from those bytes
only, the image must be 2-D with at most :data:`MAX_STAMP_SIDE` pixels a side, and every
failure is a :class:`StampError` with a one-line reason (no traceback, no path).

Images
------
Stamps are drawn with IRAF's zscale interval (astropy ``ZScaleInterval``, the display
convention of ZTF's own alert viewers and of Fink and Lasair), grey, as stored (ZTF
stamps are in the detector frame, not rotated north up). ZTF light curves are magnitude
(axis inverted) against MJD per band g/r/i: detections as points with 1-sigma error bars,
non-detections as open downward triangles at their limiting magnitude, forced photometry
with S/N ≥ 3 as faint squares. Rubin light curves are difference flux (nJy) against MJD
per band u/g/r/i/z/y. Rendering uses matplotlib's Agg canvas on a
:class:`~matplotlib.figure.Figure` (no pyplot state), under one lock, with PNG metadata
carrying no host path.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from broker.errors import BrokerError

__all__ = ["StampError", "LightPoint", "MAX_STAMP_BYTES", "MAX_STAMP_SIDE", "CUTOUT_KINDS", "inflate_stamp",
           "stamp_image", "stamp_png", "lightcurve_png", "ztf_points", "lsst_points", "PNG_METADATA"]

MAX_STAMP_BYTES = 4 * 1024 * 1024
"""Largest decompressed stamp, bytes (4 MiB). A ZTF stamp is ~20 kB decompressed (63 × 63
float32 plus a 2,880-byte header block); a Rubin stamp a few tens of kB."""
MAX_STAMP_SIDE = 1024
"""Largest stamp side, pixels."""
CUTOUT_KINDS = ("science", "template", "difference")
"""The three stamps of an alert, in the order the pages show them."""
STAMP_PX = 300
"""Side of a cutout PNG, pixels."""
LIGHTCURVE_SIZE_PX = (720, 460)
"""(width, height) of a light-curve PNG, pixels."""
PNG_METADATA = {"Software": "mma-broker"}
"""PNG text chunks of every image (matplotlib's own would name its version; never a path)."""

_BAND_COLOURS = {"g": "#2ca02c", "r": "#d62728", "i": "#ff7f0e", "u": "#6a3d9a", "z": "#8c564b", "y": "#4d4d4d"}
_BAND_ORDER = ("u", "g", "r", "i", "z", "y")
_GZIP_MAGIC = b"\x1f\x8b"
_MJD_JD = 2400000.5
#: AB zero point of a flux in nJy: m = 31.4 − 2.5 log10(f / nJy) (Rubin's convention, 3631 Jy = 0 mag).
NJY_AB_ZP = 31.4
_render_lock = threading.Lock()


class StampError(BrokerError):
    """A cutout stamp cannot be shown: too large, not gzip, not FITS, not a 2-D image (one line)."""


# ------------------------------------------------------------------ stamps
def inflate_stamp(data: Any, max_bytes: int = MAX_STAMP_BYTES) -> bytes:
    """The FITS bytes of a stamp: gunzipped when gzip, else as they are, at most ``max_bytes``.

    Parameters
    ----------
    data : bytes
        ``stampData`` of a cutout: gzip-compressed FITS (ZTF) or FITS (Rubin).
    max_bytes : int
        Cap on the decompressed size, bytes.

    Returns
    -------
    bytes

    Raises
    ------
    StampError
        Not bytes, empty, a corrupt gzip stream, or more than ``max_bytes`` once
        inflated (only ``max_bytes + 1`` bytes are ever inflated).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise StampError("no stamp bytes")
    data = bytes(data)
    if not data.startswith(_GZIP_MAGIC):
        if len(data) > max_bytes:
            raise StampError(f"stamp larger than {max_bytes} bytes")
        return data
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise StampError(f"corrupt gzip stream ({exc})") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise StampError(f"stamp inflates beyond {max_bytes} bytes (refused)")
    if not d.eof:
        raise StampError("truncated gzip stream")
    return out


def stamp_image(data: Any, max_bytes: int = MAX_STAMP_BYTES) -> np.ndarray:
    """The 2-D image of a cutout stamp.

    Parameters
    ----------
    data : bytes
        ``stampData`` (gzip-compressed FITS or FITS).
    max_bytes : int
        Cap on the decompressed size (:func:`inflate_stamp`).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float64
        The first HDU holding a 2-D image, as stored (FITS row 0 at index 0); non-finite
        pixels (ZTF's masked ones) as NaN.

    Raises
    ------
    StampError
        See :func:`inflate_stamp`; not FITS, no 2-D image, a side above
        :data:`MAX_STAMP_SIDE`, or data shorter than its header says.
    """
    from astropy.io import fits

    raw = inflate_stamp(data, max_bytes)
    if not raw.startswith(b"SIMPLE  ="):
        raise StampError("not a FITS file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's VerifyWarning on ZTF's SIMPLE card layout, and the like
            return _first_image(fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=True))
    except StampError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds on hostile bytes
        raise StampError(f"not a readable FITS image ({type(exc).__name__})") from None


def _first_image(hdul: Any) -> np.ndarray:
    with hdul:
        for hdu in hdul:
            h = hdu.header
            naxis = h.get("NAXIS", 0)
            if naxis == 0:
                continue
            shape = [h.get(f"NAXIS{i}", 0) for i in range(1, naxis + 1)]
            if naxis != 2 and not (naxis == 3 and shape[2] == 1):
                raise StampError(f"not a 2-D image (NAXIS = {naxis})")
            nx, ny = shape[0], shape[1]
            if not all(isinstance(n, int) and 0 < n <= MAX_STAMP_SIDE for n in (nx, ny)):
                raise StampError(f"image side outside 1..{MAX_STAMP_SIDE} pixels")
            img = np.asarray(hdu.data, dtype=np.float64).reshape(ny, nx)
            img[~np.isfinite(img)] = np.nan
            return img
    raise StampError("no image in the FITS file")


def _inches(px: int) -> float:
    """Figure inches at 100 dpi for ``px`` pixels (a quarter pixel more: Agg truncates
    ``4.6 in × 100`` = 459.99... to 459)."""
    return (px + 0.25) / 100


def _zscale(img: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(finite)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def stamp_png(img: np.ndarray, label: str = "", side_px: int = STAMP_PX) -> bytes:
    """A cutout as a grey PNG, zscale interval, ``side_px`` × ``side_px`` pixels.

    Parameters
    ----------
    img : numpy.ndarray, shape (ny, nx)
        From :func:`stamp_image`; NaN pixels are drawn in blue-grey.
    label : str
        Written in the top-left corner (e.g. ``"difference"``).
    side_px : int

    Returns
    -------
    bytes
        PNG (8-bit RGBA), FITS row 0 at the bottom (``origin="lower"``).
    """
    from matplotlib.figure import Figure

    lo, hi = _zscale(img)
    with _render_lock:
        fig = Figure(figsize=(_inches(side_px), _inches(side_px)), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        cmap = _grey()
        ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_axis_off()
        if label:
            ax.text(0.03, 0.97, label, transform=ax.transAxes, va="top", ha="left", color="#ffd54a", fontsize=10,
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"})
        return _png(fig)


def _grey() -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["gray"].copy()
    cmap.set_bad("#3b4a63")
    return cmap


# ------------------------------------------------------------------ light curves
@dataclass(frozen=True)
class LightPoint:
    """One light-curve point.

    Attributes
    ----------
    mjd : float
        Modified Julian Date of the exposure (UTC; ZTF's ``jd − 2400000.5``), days.
    band : str
        ``g``, ``r``, ``i`` (ZTF ``fid`` 1, 2, 3) or a Rubin band.
    mag : float
        AB magnitude of a detection (``magpsf``), or the limiting magnitude of a
        non-detection (``diffmaglim``).
    mag_err : float or None
        1-sigma (``sigmapsf``); None for a limit.
    upper_limit : bool
        A non-detection: the source was fainter than ``mag``.
    negative : bool
        A detection in the negative difference (``isdiffpos`` false: the source faded
        with respect to the template).
    current : bool
        The alert's own candidate (drawn larger).
    forced : bool
        Forced photometry at the object's position (ZTF ``fp_hists``), not an alert
        detection.
    """

    mjd: float
    band: str
    mag: float
    mag_err: float | None = None
    upper_limit: bool = False
    negative: bool = False
    current: bool = False
    forced: bool = False


_ZTF_BANDS = {1: "g", 2: "r", 3: "i"}


def _f(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


#: Forced-photometry S/N at or above which a flux is a detection (ZTF Forced Photometry
#: Service guide, Masci et al. 2019, "SNT" = 3).
FORCED_SNT = 3.0


def ztf_points(prv_candidates: Iterable[dict], candidate: dict | None = None,
               fp_hists: Iterable[dict] = ()) -> list[LightPoint]:
    """Light-curve points of a ZTF alert: its history, its own candidate, its forced photometry.

    Parameters
    ----------
    prv_candidates : iterable of dict
        ``prv_candidates`` (ZTF field names): an entry with a ``magpsf`` is a detection,
        one without but with ``diffmaglim`` a non-detection (upper limit).
    candidate : dict, optional
        The alert's candidate (``jd``, ``fid``, ``magpsf``, ``sigmapsf``, ``isdiffpos``;
        as in Event ``properties``, where ``isdiffpos`` is a bool).
    fp_hists : iterable of dict
        Forced photometry (schema ≥ 4.0): ``forcediffimflux ± forcediffimfluxunc`` (DN)
        with ``magzpsci``; a flux with S/N ≥ :data:`FORCED_SNT` becomes the magnitude
        ``magzpsci − 2.5 log10(flux)``, ``σ = 1.0857 unc / flux`` (``forced=True``).
        Fainter forced measurements are not drawn (the alert history's limits say as much
        at ZTF's cadence), nor those with ZTF's −99999 "none" or a ``procstatus`` other
        than ``"0"`` (processing not clean).

    Returns
    -------
    list of LightPoint
        By MJD. Entries without a finite ``jd``, a known ``fid``, or a magnitude within
        [5, 30] are left out (ZTF writes −999 for "none"); duplicates of the candidate's
        ``candid`` in the history are dropped.
    """
    out: list[LightPoint] = []
    own = candidate.get("candid") if candidate else None
    rows = [(p, False) for p in prv_candidates if isinstance(p, dict)]
    if candidate:
        rows.append((candidate, True))
    for p, current in rows:
        if not current and own is not None and p.get("candid") == own:
            continue
        jd, band = _f(p.get("jd")), _ZTF_BANDS.get(p.get("fid"))
        if jd is None or band is None:
            continue
        mag, err, lim = _f(p.get("magpsf")), _f(p.get("sigmapsf")), _f(p.get("diffmaglim"))
        diffpos = p.get("isdiffpos")
        negative = diffpos is False or diffpos in ("f", "0")
        if mag is not None and 5.0 <= mag <= 30.0:
            out.append(LightPoint(jd - _MJD_JD, band, mag, err if err is not None and 0 <= err < 5 else None,
                                  False, negative, current))
        elif lim is not None and 5.0 <= lim <= 30.0:
            out.append(LightPoint(jd - _MJD_JD, band, lim, None, True, False, current))
    for p in fp_hists:
        if not isinstance(p, dict) or str(p.get("procstatus", "0")).strip() != "0":
            continue
        jd, band = _f(p.get("jd")), _ZTF_BANDS.get(p.get("fid"))
        flux, unc, zp = _f(p.get("forcediffimflux")), _f(p.get("forcediffimfluxunc")), _f(p.get("magzpsci"))
        if jd is None or band is None or None in (flux, unc, zp) or flux <= -99999 or unc <= 0:
            continue
        if flux / unc >= FORCED_SNT:
            mag = zp - 2.5 * math.log10(flux)
            if 5.0 <= mag <= 30.0:
                out.append(LightPoint(jd - _MJD_JD, band, mag, 1.0857 * unc / flux, forced=True))
    return sorted(out, key=lambda q: q.mjd)


def lsst_points(prv_dia_sources: Iterable[dict], current: dict | None = None) -> list[LightPoint]:
    """Light-curve points of a Rubin alert from its DIASources: difference-image PSF fluxes.

    Parameters
    ----------
    prv_dia_sources : iterable of dict
        ``prvDiaSources`` (``midpointMjdTai``, ``band``, ``psfFlux``, ``psfFluxErr`` in nJy).
    current : dict, optional
        The alert's ``diaSource`` fields in the same names.

    Returns
    -------
    list of LightPoint
        By MJD (TAI, 37 s from UTC: invisible on the plot), each with ``mag`` holding the
        **difference flux in nJy** and ``mag_err`` its 1-sigma error: Rubin's difference
        fluxes are often negative (a source fainter than in the template), which no
        magnitude can show, so :func:`lightcurve_png` draws them with ``flux=True``.
        ``negative`` marks a flux below 0.
    """
    out: list[LightPoint] = []
    rows = [(p, False) for p in prv_dia_sources if isinstance(p, dict)]
    if current:
        rows.append((current, True))
    for p, cur in rows:
        mjd, band = _f(p.get("midpointMjdTai")), p.get("band")
        flux, ferr = _f(p.get("psfFlux")), _f(p.get("psfFluxErr"))
        if mjd is None or band not in _BAND_COLOURS or flux is None:
            continue
        out.append(LightPoint(mjd, band, flux, ferr if ferr is not None and ferr >= 0 else None, False, flux < 0,
                              current=cur))
    return sorted(out, key=lambda q: q.mjd)


def lightcurve_png(points: Sequence[LightPoint], title: str = "", t0_mjd: float | None = None,
                   size_px: tuple[int, int] = LIGHTCURVE_SIZE_PX, flux: bool = False) -> bytes:
    """A light curve as a PNG: magnitude (inverted axis), or difference flux, against MJD, per band.

    Parameters
    ----------
    points : sequence of LightPoint
    title : str
        Above the plot (the object id).
    t0_mjd : float, optional
        A vertical dashed line (the trigger's T0), MJD.
    size_px : (int, int)
        Width and height, pixels.
    flux : bool
        The points' ``mag`` are difference fluxes in nJy (:func:`lsst_points`): a linear
        axis, not inverted, with a line at zero flux.

    Returns
    -------
    bytes
        PNG. Detections: filled circles with 1-sigma error bars (open circles for a
        negative difference), the alert's own candidate larger with a black edge;
        non-detections: open downward triangles at the limiting magnitude. With no
        point at all the axes say so.
    """
    from matplotlib.figure import Figure

    w, h = size_px
    with _render_lock:
        fig = Figure(figsize=(_inches(w), _inches(h)), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        bands = sorted({p.band for p in points}, key=lambda b: _BAND_ORDER.index(b) if b in _BAND_ORDER else 99)
        for b in bands:
            c = _BAND_COLOURS.get(b, "k")
            mine = [p for p in points if p.band == b]
            det = [p for p in mine if not p.upper_limit and not p.forced and not p.current]
            split = ((det, c, f"{b}"),) if flux else (([p for p in det if not p.negative], c, f"{b}"),
                                                      ([p for p in det if p.negative], "none", f"{b} (negative difference)"))
            for group, face, label in split:
                if group:
                    ax.errorbar([p.mjd for p in group], [p.mag for p in group],
                                yerr=[p.mag_err if p.mag_err is not None else 0.0 for p in group],
                                fmt="o", ms=5, color=c, mfc=face, ecolor=c, elinewidth=1, capsize=2, label=label)
            forced = [p for p in mine if p.forced]
            if forced:
                ax.errorbar([p.mjd for p in forced], [p.mag for p in forced], yerr=[p.mag_err or 0.0 for p in forced],
                            fmt="s", ms=3.5, color=c, alpha=0.45, elinewidth=0.8, label=f"{b} forced photometry")
            lim = [p for p in mine if p.upper_limit]
            if lim:
                ax.scatter([p.mjd for p in lim], [p.mag for p in lim], marker="v", s=30, facecolors="none",
                           edgecolors=c, linewidths=1, label=f"{b} upper limit")
            cur = [p for p in mine if p.current and not p.upper_limit]
            if cur:
                ax.errorbar([p.mjd for p in cur], [p.mag for p in cur], yerr=[p.mag_err or 0.0 for p in cur],
                            fmt="o", ms=10, color=c, mfc=c if flux or not cur[0].negative else "none", mec="k", mew=1.2,
                            ecolor=c, elinewidth=1, capsize=2, zorder=5, label=f"{b}: this alert")
        if t0_mjd is not None and math.isfinite(t0_mjd):
            ax.axvline(t0_mjd, color="#555", ls="--", lw=1, label="trigger T0")
        if flux:
            ax.axhline(0.0, color="#888", lw=0.8)
        if points:
            if not flux:
                ax.invert_yaxis()
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=4, frameon=False)
        else:
            ax.text(0.5, 0.5, "no photometry in this alert", transform=ax.transAxes, ha="center", va="center")
        ax.set_xlabel("MJD (UTC)")
        ax.set_ylabel("difference flux (nJy)" if flux else "magnitude (AB)")
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(title, fontsize=11)
        # fixed margins (room for the legend below the axes): tight_layout would draw the
        # figure once more to measure it, ~40 % of the drawing time
        fig.subplots_adjust(left=0.13 if flux else 0.095, right=0.985, top=0.93, bottom=0.25)
        return _png(fig)
