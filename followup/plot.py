"""PNG plot of a light curve with the excess-search result.

Two panels: the whole light curve (background model, the background intervals the
fit used, background stretches excluded from the fit, the search window, T0 and the
best excess) and a zoom on the best excess at finer bins. The x axis is time at
INTEGRAL minus T0: SPI-ACS time stamps are at the spacecraft, up to ~0.5 light-seconds
from the geocentre, and are not corrected to a geocentric time. The FAP is printed as
a number, or "< 1e-15" below that (:func:`followup.report.fap_text`).

Uses Matplotlib's object API with the Agg canvas directly (no pyplot, no global
backend switch, no display), so it is safe in workers and tests.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from followup.lightcurve import LightCurve
from followup.report import fap_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["lightcurve_figure", "plot_lightcurve"]

_XLABEL = "time at INTEGRAL − T0 (s)"


def _rebin(time_s: np.ndarray, counts: np.ndarray, bin_s: float, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``factor`` consecutive bins; returns centres (s) and rates (counts/s)."""
    n = (counts.size // factor) * factor
    if factor <= 1 or n == 0:
        return time_s, counts / bin_s
    centres_s = time_s[:n].reshape(-1, factor).mean(axis=1)
    rates_cps = counts[:n].reshape(-1, factor).sum(axis=1) / (factor * bin_s)
    return centres_s, rates_cps


def _intervals(value: Any) -> list[tuple[float, float]]:
    """``[(lo, hi), ...]`` from a sequence of pairs (empty for None)."""
    out = []
    for pair in value or ():
        lo, hi = float(pair[0]), float(pair[1])
        if hi > lo:
            out.append((lo, hi))
    return out


def _coverage_note(excess: Any) -> str | None:
    """"partial coverage: ..." when the search window is shorter than requested, else None."""
    lo_s, hi_s = excess.search_window_s
    requested = getattr(excess, "requested_search_window_s", None)
    coverage = getattr(excess, "coverage", None)
    if coverage is None and requested is not None:
        coverage = "full" if (lo_s, hi_s) == tuple(requested) else "partial"
    if coverage != "partial":
        return None
    asked = f" of the requested {requested[0]:+.0f} .. {requested[1]:+.0f} s" if requested is not None else ""
    return f"partial coverage: searched {lo_s:+.1f} .. {hi_s:+.1f} s{asked}"


def _shade_background(axes: Any, excess: Any, label: bool) -> None:
    for k, (lo, hi) in enumerate(_intervals(excess.background.background_intervals_s)):
        axes.axvspan(lo, hi, color="tab:blue", alpha=0.08, lw=0,
                     label="background fit interval" if label and k == 0 else None)
    for k, (lo, hi) in enumerate(_intervals(getattr(excess, "background_excluded_s", None))):
        axes.axvspan(lo, hi, facecolor="none", edgecolor="tab:red", hatch="////", lw=0.0,
                     label="excluded from the background" if label and k == 0 else None)


def plot_lightcurve(lc: LightCurve, result: Any, path: str | os.PathLike, display_bin_s: float = 1.0,
                    event_name: str | None = None) -> None:
    """Write a PNG of the light curve, background model, search window, best excess and T0.

    Parameters are those of :func:`lightcurve_figure`, plus ``path``, the output PNG path.

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    figure = lightcurve_figure(lc, result, display_bin_s, event_name)
    figure.savefig(os.fspath(path), format="png")
    logger.debug("wrote light-curve plot")


def lightcurve_figure(lc: LightCurve, result: Any, display_bin_s: float = 1.0,
                      event_name: str | None = None) -> Figure:
    """The light-curve figure (two panels) as a Matplotlib Figure on an Agg canvas.

    Parameters
    ----------
    lc : LightCurve
        The light curve analysed (any reference time; it is shown relative to ``result.t0_utc``).
    result : followup.spiacs.SpiAcsResult or followup.excess.ExcessSearchResult
        The analysis of ``lc`` (an SPI-ACS result carries its excess search in ``excess``).
    display_bin_s : float
        Bin width of the upper panel, s (the data are summed to it; default 1 s). The
        zoom panel uses bins of about a quarter of the best time scale (at least the
        light curve's own bin).
    event_name : str, optional
        Name in the title (e.g. ``"GRB 230307A"``, ``"S230518h"``).

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 is the whole curve, axes 1 the zoom on the best excess.
    """
    excess = getattr(result, "excess", result)
    t0_utc = excess.t0_utc
    lc = lc.relative_to(t0_utc)
    factor = max(1, int(round(display_bin_s / lc.bin_s)))
    centres_s, rates_cps = _rebin(lc.time_s, lc.counts, lc.bin_s, factor)
    model_t_s = np.linspace(lc.time_s[0], lc.time_s[-1], 1200)
    model_cps = excess.background.rate_cps(model_t_s)
    lo_s, hi_s = excess.search_window_s
    best_s, scale_s = excess.best_offset_s, excess.best_timescale_s
    status = "detected" if excess.detected else "not significant"
    best_label = (f"best excess T0{best_s:+.2f} s, {scale_s:g} s scale, S/N {excess.best_snr:.1f}, "
                  f"FAP {fap_text(excess.fap)} ({status})")

    # here, not at import (and scipy.stats in followup/excess.py): the follow-up stage
    # and the `followup` commands import this module, and the two took 0.54 s of CPU
    # at each start (2.20 -> 1.66 s to import followup.service and followup.worker,
    # mean of 4 runs each, 2026-11-30)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 8.2), dpi=110)
    FigureCanvasAgg(figure)
    top, zoom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})

    _shade_background(top, excess, label=True)
    top.axvspan(lo_s, hi_s, color="tab:orange", alpha=0.10, lw=0, label=f"search window {lo_s:+.0f} .. {hi_s:+.0f} s")
    top.step(centres_s, rates_cps, where="mid", color="0.25", lw=0.7, zorder=3,
             label=f"{lc.instrument} ({factor * lc.bin_s:g} s bins)")
    top.plot(model_t_s, model_cps, color="tab:blue", lw=1.2, zorder=2.5,
             label=f"background model (polynomial order {excess.background.order})")
    top.axvline(0.0, color="tab:red", lw=1.1, ls="--", zorder=5, label="T0")
    top.axvspan(best_s - 0.5 * scale_s, best_s + 0.5 * scale_s, color="tab:green", alpha=0.5, zorder=2,
                label=best_label)
    top.set_xlim(lc.time_s[0] - 0.5 * lc.bin_s, lc.time_s[-1] + 0.5 * lc.bin_s)
    finite = rates_cps[np.isfinite(rates_cps)]
    if finite.size:
        pad = 0.08 * (finite.max() - finite.min() or 1.0)
        top.set_ylim(finite.min() - pad, finite.max() + pad)
    note = _coverage_note(excess)
    if note:
        top.text(0.01, 0.97, note, transform=top.transAxes, va="top", ha="left", fontsize=8, color="tab:red",
                 zorder=6, bbox={"facecolor": "white", "edgecolor": "tab:red", "alpha": 0.9})
    top.set_ylabel("count rate (counts/s)")
    top.set_xlabel(_XLABEL)
    title = f"{event_name}: " if event_name else ""
    figure.suptitle(f"{title}INTEGRAL {lc.instrument} around T0 = {t0_utc}", fontsize=11)
    # legend above the panel, never over the data
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, fontsize=7, frameon=False)
    top.grid(alpha=0.3)

    # Zoom on the best excess: +/- max(20 s, 8 scales), bins ~ scale / 4.
    half_w = max(20.0, 8.0 * scale_s)
    z_lo, z_hi = best_s - half_w, best_s + half_w
    z_factor = max(1, int(round(max(lc.bin_s, scale_s / 4.0) / lc.bin_s)))
    z_centres, z_rates = _rebin(lc.time_s, lc.counts, lc.bin_s, z_factor)
    inside = (z_centres >= z_lo) & (z_centres <= z_hi)
    _shade_background(zoom, excess, label=False)
    zoom.step(z_centres[inside], z_rates[inside], where="mid", color="0.25", lw=0.8, zorder=3,
              label=f"{z_factor * lc.bin_s:g} s bins")
    zt = np.linspace(z_lo, z_hi, 400)
    zoom.plot(zt, excess.background.rate_cps(zt), color="tab:blue", lw=1.2, zorder=2.5)
    zoom.axvspan(best_s - 0.5 * scale_s, best_s + 0.5 * scale_s, color="tab:green", alpha=0.5, zorder=2)
    if z_lo <= 0.0 <= z_hi:
        zoom.axvline(0.0, color="tab:red", lw=1.1, ls="--", zorder=5)
    zoom.set_xlim(z_lo, z_hi)
    zoom.set_xlabel(_XLABEL)
    zoom.set_ylabel("count rate (counts/s)")
    zoom.set_title(f"zoom on the best excess (T0{best_s:+.2f} s, {scale_s:g} s)", fontsize=9)
    zoom.legend(loc="upper right", fontsize=7, framealpha=0.85)
    zoom.grid(alpha=0.3)
    figure.tight_layout()
    return figure
