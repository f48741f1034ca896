"""PNG plot of a light curve with the excess-search result.

Uses Matplotlib's object API with the Agg canvas directly (no pyplot, no global
backend switch, no display), so it is safe in workers and tests.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from followup.lightcurve import LightCurve
from followup.spiacs import SpiAcsResult

logger = logging.getLogger(__name__)

__all__ = ["plot_lightcurve"]


def _rebin(time_s: np.ndarray, counts: np.ndarray, bin_s: float, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``factor`` consecutive bins; returns centres (s) and rates (counts/s)."""
    n = (counts.size // factor) * factor
    if factor <= 1 or n == 0:
        return time_s, counts / bin_s
    centres_s = time_s[:n].reshape(-1, factor).mean(axis=1)
    rates_cps = counts[:n].reshape(-1, factor).sum(axis=1) / (factor * bin_s)
    return centres_s, rates_cps


def plot_lightcurve(lc: LightCurve, result: SpiAcsResult, path: str | os.PathLike, display_bin_s: float = 1.0) -> None:
    """Write a PNG of the light curve, background model, search window, best excess and T0.

    Parameters
    ----------
    lc : LightCurve
        The light curve analysed (any reference time; it is shown relative to ``result.t0_utc``).
    result : SpiAcsResult
        Output of :func:`followup.spiacs.run_spiacs_analysis` for ``lc``.
    path : str or os.PathLike
        Output PNG path.
    display_bin_s : float
        Bin width used for display, seconds (the data are summed to it; default 1 s).

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    lc = lc.relative_to(result.t0_utc)
    excess = result.excess
    factor = max(1, int(round(display_bin_s / lc.bin_s)))
    centres_s, rates_cps = _rebin(lc.time_s, lc.counts, lc.bin_s, factor)

    figure = Figure(figsize=(10, 5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.step(centres_s, rates_cps, where="mid", color="0.25", lw=0.8, zorder=3,
              label=f"{lc.instrument} ({factor * lc.bin_s:g} s bins)")
    model_t_s = np.linspace(lc.time_s[0], lc.time_s[-1], 600)
    axes.plot(model_t_s, excess.background.rate_cps(model_t_s), color="tab:blue", lw=1.5,
              label=f"background (polynomial order {excess.background.order})")
    lo_s, hi_s = excess.search_window_s
    axes.axvspan(lo_s, hi_s, color="tab:orange", alpha=0.12, label=f"search window {lo_s:+.0f} .. {hi_s:+.0f} s")
    axes.axvline(0.0, color="tab:red", lw=1.2, ls="--", label=f"T0 = {result.t0_utc}")
    half_s = 0.5 * excess.best_timescale_s
    status = "detected" if excess.detected else "not significant"
    axes.axvspan(excess.best_offset_s - half_s, excess.best_offset_s + half_s, color="tab:green", alpha=0.45,
                 label=(f"best excess {excess.best_offset_s:+.2f} s, {excess.best_timescale_s:g} s, "
                        f"S/N {excess.best_snr:.1f}, FAP {excess.fap:.2g} ({status})"))
    axes.set_xlabel(f"time since T0 (s), T0 = {result.t0_utc}")
    axes.set_ylabel("count rate (counts/s)")
    axes.set_title(f"INTEGRAL {lc.instrument}: excess search around T0")
    axes.set_xlim(lc.time_s[0], lc.time_s[-1])
    axes.legend(loc="upper right", fontsize=8, framealpha=0.85)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
    logger.debug("wrote light-curve plot %s", path)
