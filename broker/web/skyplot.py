"""The event group page's sky map PNG (issue 13), drawn with ligo.skymap's plotting.

:func:`render_png` draws one stored localization:

* a **multi-order sky map** (NUNIQ tiles as the enrich stage stored them,
  :meth:`broker.enrich.store.LocalizationStore.load`) rasterized to a nested HEALPix grid
  (``ligo.skymap.bayestar.rasterize``) on an ``astro hours mollweide`` all-sky axis, its
  probability per pixel as the colour scale, with the 50 % and 90 % credible contours
  (greedy credible levels, ``ligo.skymap.postprocess.find_greedy_credible_levels``:
  pixels by descending probability, Singer & Price 2016, PRD 93, 024013);
* a **point** (GCN error circle, ZTF candidate) as a marker with its error circle (an
  ``astropy.visualization.wcsaxes.SphericalCircle``, a true small circle on the sky);
* the **markers** given (coincident counterparts, catalog matches) as labelled symbols.

When the 90 % region (or the error circle) is small — :data:`ZOOM_MAX_AREA_DEG2` — a
second panel zooms on it (ligo.skymap's ``astro zoom`` axes, centred on the map's most
probable pixel or the point), so a 30 deg² GW region or a 1° GRB circle is readable.

The figure is drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot state; callers run it in a worker thread), and the PNG carries no metadata but
its size (no software string, no path).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["PLOT_VERSION", "WIDTH_PX", "HEIGHT_PX", "Marker", "render_png", "ZOOM_MAX_AREA_DEG2"]

PLOT_VERSION = "1"
"""Part of every cached PNG's key: change it when the drawing changes."""
WIDTH_PX, HEIGHT_PX = 1000, 420
"""Size of the PNG, pixels."""
ZOOM_MAX_AREA_DEG2 = 2000.0
"""A region at most this large (90 % area, deg²) gets a zoomed panel."""
MAX_RASTER_ORDER = 9
"""Finest HEALPix order the map is rasterized to (nside 512, 3.1 M pixels; 6.9' pixels)."""
MIN_RASTER_ORDER = 6
_DPI = 100


@dataclass(frozen=True)
class Marker:
    """A position drawn over the localization.

    Attributes
    ----------
    ra_deg, dec_deg : float
        ICRS, deg.
    label : str
        Short text drawn next to it (an object id, a catalog name).
    kind : str
        ``"counterpart"`` (a coincident event: a star) or ``"catalog"`` (a catalog
        source: a small circle).
    radius_deg : float or None
        Error radius of a counterpart, deg (drawn as a circle when given).
    """

    ra_deg: float
    dec_deg: float
    label: str
    kind: str = "counterpart"
    radius_deg: float | None = None


def _raster(sky: Any) -> tuple[np.ndarray, int]:
    """(probability per nested pixel, order) of a multi-order map.

    The order is the map's finest order clipped to [MIN_RASTER_ORDER, MAX_RASTER_ORDER];
    probabilities are normalized to 1 over the sky.
    """
    from astropy.table import Table
    from ligo.skymap.bayestar import rasterize
    from ligo.skymap.moc import uniq2order

    order = int(np.clip(int(np.max(uniq2order(sky.uniq))), MIN_RASTER_ORDER, MAX_RASTER_ORDER))
    flat = rasterize(Table({"UNIQ": np.asarray(sky.uniq, dtype=np.int64),
                            "PROBDENSITY": np.asarray(sky.probdensity, dtype=np.float64)}), order=order)
    prob = np.asarray(flat["PROB"], dtype=np.float64)  # rasterize: density × pixel area
    prob = np.where(np.isfinite(prob) & (prob > 0), prob, 0.0)
    total = prob.sum()
    return (prob / total if total > 0 else prob), order


def _region_extent(prob: np.ndarray, cls: np.ndarray, order: int) -> tuple[float, float, float, float]:
    """(ra, dec, radius, area_90) of the 90 % region (``cls``: each pixel's greedy credible
    level): centre = most probable pixel, radius = the largest separation of a 90 % pixel
    from it (deg), area in deg²."""
    import astropy.units as u
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2 ** order, order="nested")
    inside = np.flatnonzero(cls <= 0.9)
    peak = int(np.argmax(prob))
    lon, lat = hp.healpix_to_lonlat(np.concatenate([[peak], inside]))
    ra, dec = lon.to_value(u.rad), lat.to_value(u.rad)
    sep = np.arccos(np.clip(np.sin(dec[0]) * np.sin(dec[1:]) + np.cos(dec[0]) * np.cos(dec[1:])
                            * np.cos(ra[1:] - ra[0]), -1.0, 1.0))
    radius = math.degrees(float(sep.max())) if sep.size else 1.0
    area = inside.size * hp.pixel_area.to_value(u.deg ** 2)
    return math.degrees(ra[0]), math.degrees(dec[0]), radius, area


def _draw_map(ax: Any, prob: np.ndarray, cls: np.ndarray) -> None:
    ax.imshow_hpx((prob, "ICRS"), nested=True, cmap="cylon", zorder=0)
    ax.contour_hpx((100 * cls, "ICRS"), nested=True, levels=[50, 90], colors=["white", "white"],
                   linewidths=[0.6, 1.0], linestyles=["dashed", "solid"], zorder=1)


def _draw_point(ax: Any, ra: float, dec: float, radius: float | None, colour: str = "#d62728") -> None:
    import astropy.units as u
    from astropy.visualization.wcsaxes import SphericalCircle

    t = ax.get_transform("world")
    ax.plot([ra], [dec], marker="+", markersize=10, color=colour, transform=t, zorder=3)
    if radius is not None and radius > 0:
        ax.add_patch(SphericalCircle((ra * u.deg, dec * u.deg), radius * u.deg, edgecolor=colour,
                                     facecolor="none", linewidth=1.2, transform=t, zorder=3))


def _draw_markers(ax: Any, markers: Sequence[Marker], labels: bool) -> None:
    import astropy.units as u
    from astropy.visualization.wcsaxes import SphericalCircle

    t = ax.get_transform("world")
    for m in markers:
        if m.kind == "catalog":
            ax.plot([m.ra_deg], [m.dec_deg], marker="o", markersize=4, markerfacecolor="none",
                    markeredgecolor="#1f77b4", transform=t, zorder=4)
        else:
            ax.plot([m.ra_deg], [m.dec_deg], marker="*", markersize=11, color="#ffbf00",
                    markeredgecolor="black", markeredgewidth=0.5, transform=t, zorder=5)
            if m.radius_deg:
                ax.add_patch(SphericalCircle((m.ra_deg * u.deg, m.dec_deg * u.deg), m.radius_deg * u.deg,
                                             edgecolor="#ffbf00", facecolor="none", linewidth=1.0,
                                             transform=t, zorder=5))
        if labels and m.label and m.kind != "catalog":  # catalog sources: too many to label
            ax.text(m.ra_deg, m.dec_deg, " " + m.label[:24], transform=t, fontsize=7, color="black",
                    zorder=6, clip_on=True)


def render_png(sky: Any, *, markers: Sequence[Marker] = (), title: str = "",
               width_px: int = WIDTH_PX, height_px: int = HEIGHT_PX) -> bytes:
    """The PNG of one localization with its contours and markers.

    Parameters
    ----------
    sky : broker.skymap.MultiOrderSkyMap or broker.enrich.localization.PointRegion or None
        A multi-order map (``uniq``, shape (n,), int64 NUNIQ; ``probdensity``, shape (n,),
        sr⁻¹), a point (``ra_deg``, ``dec_deg``, ``error_radius_deg`` deg or None), or
        None (markers only, on the all-sky axis).
    markers : sequence of Marker
        Counterparts and catalog sources to draw.
    title : str
        Drawn above the all-sky panel (the group key, the revision).
    width_px, height_px : int
        Size of the PNG, pixels.

    Returns
    -------
    bytes
        A PNG of exactly ``width_px`` × ``height_px`` pixels (RGBA), with no text chunks.

    Raises
    ------
    ValueError
        A map with no probability.
    """
    import astropy.units as u
    import ligo.skymap.plot  # noqa: F401  (registers the astro projections)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    prob = cls = None
    zoom = None  # (ra, dec, radius) of the zoomed panel
    if sky is not None and hasattr(sky, "uniq"):
        from ligo.skymap.postprocess import find_greedy_credible_levels

        prob, order = _raster(sky)
        if not prob.any():
            raise ValueError("the sky map holds no probability")
        cls = find_greedy_credible_levels(prob)
        ra0, dec0, radius, area = _region_extent(prob, cls, order)
        if area <= ZOOM_MAX_AREA_DEG2:
            zoom = (ra0, dec0, min(max(1.15 * radius, 1.0), 40.0))
    elif sky is not None:
        r = getattr(sky, "error_radius_deg", None)
        if r is not None and math.pi * r * r <= ZOOM_MAX_AREA_DEG2:
            zoom = (float(sky.ra_deg), float(sky.dec_deg), min(max(2.0 * r, 0.05), 40.0))

    left = [0.02, 0.06, 0.60 if zoom else 0.96, 0.84]
    ax = fig.add_axes(left, projection="astro hours mollweide")
    ax.grid(True, linewidth=0.3, alpha=0.6)
    axes = [ax]
    if zoom:
        from astropy.coordinates import SkyCoord

        zx = fig.add_axes([0.69, 0.12, 0.29, 0.76], projection="astro zoom",
                          center=SkyCoord(zoom[0] * u.deg, zoom[1] * u.deg), radius=zoom[2] * u.deg)
        zx.grid(True, linewidth=0.3, alpha=0.6)
        for coord, name in zip(zx.coords, ("RA", "Dec")):
            coord.set_ticklabel(size=7)
            coord.set_axislabel(name, size=8)
        zx.coords[0].set_format_unit(u.hourangle)
        axes.append(zx)
    for i, a in enumerate(axes):
        if prob is not None:
            _draw_map(a, prob, cls)
        elif sky is not None:
            _draw_point(a, float(sky.ra_deg), float(sky.dec_deg), getattr(sky, "error_radius_deg", None))
        _draw_markers(a, markers, labels=(i == 1 or not zoom))
    for coord in ax.coords:
        coord.set_ticklabel(size=7)
    if title:
        ax.set_title(title[:80], fontsize=9)
    legend = []
    if prob is not None:
        legend.append("contours: 50 % (dashed), 90 % (solid) credible")
    if any(m.kind != "catalog" for m in markers):
        legend.append("★ counterparts")
    if any(m.kind == "catalog" for m in markers):
        legend.append("○ catalog matches")
    if legend:
        fig.text(0.02, 0.02, " · ".join(legend), fontsize=7, color="#444444")
    if zoom:
        axes[1].set_title(f"zoom: radius {zoom[2]:.3g}°", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()
