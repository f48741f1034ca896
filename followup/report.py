"""Plain-text summary of an SPI-ACS result, in the manner of the INTEGRAL LVK circulars.

The text keeps the circulars' order: what was searched (instrument, T0, window, time
scales, background, noise), the most significant excess with its trials-corrected
false-alarm probability and whether it passes the detection threshold, then the limits
and the response used with its systematic uncertainty. The wording is our own.

What the limits mean, said in the text: the 3-sigma upper limit is the fluence of a
burst *at a given time* whose counts would be 3 sigma above the background. A blind
search over the whole window, which must beat the trials-corrected threshold, finds a
1 s burst at that fluence only a few per cent of the time (injections, issue 8: 1.7 %);
so each limit comes with the fluences at which 50 % and 90 % of bursts injected at
random times are detected, when the analysis measured them. The text also states
partial coverage of the requested window, the search's flags, and whether the
radiation-belt (perigee) check ran.
"""

from __future__ import annotations

import math
from typing import Any

from followup.spiacs import MapLimit, SpiAcsResult

__all__ = ["fap_text", "spiacs_summary_text"]


def fap_text(fap: float) -> str:
    """A false-alarm probability as printed: 2 significant digits, or ``< 1e-15``.

    Below 1e-15 the Gaussian tail is far beyond what the noise model is tested to, so
    no smaller number is printed.
    """
    return "< 1e-15" if fap < 1e-15 else f"{fap:.2g}"


def _limit_text(limit: MapLimit, unit: str) -> str:
    if limit.n_directions == 1:
        return f"{limit.best:.2g} {unit}"
    return (f"{limit.containment_50:.2g} {unit} over 50% of the localization probability "
            f"({limit.containment_90:.2g} over 90%, {limit.best:.2g} at the most favourable direction)")


def _headline(limit: MapLimit) -> float:
    """The value quoted for a map: 50 % containment (the single value for one direction)."""
    return limit.best if limit.n_directions == 1 else limit.containment_50


def _detection_fluences(row: Any, search_row: Any) -> tuple[float, float] | None:
    """(50 %, 90 %) detection fluences of the short-GRB spectrum at one scale, erg/cm^2.

    Taken from the limit row when the analysis gives them; otherwise scaled from the
    3-sigma fluence limit by the ratio of detection counts to limit counts (the
    counts-to-fluence conversion is linear). None when neither is available.
    """
    for f50, f90 in (("short_grb_fluence_50pct_detection_erg_cm2", "short_grb_fluence_90pct_detection_erg_cm2"),):
        a, b = getattr(row, f50, None), getattr(row, f90, None)
        if a is not None and b is not None:
            a = _headline(a) if isinstance(a, MapLimit) else float(a)
            b = _headline(b) if isinstance(b, MapLimit) else float(b)
            return a, b
    c50 = getattr(row, "detection_50_counts", None) or getattr(search_row, "detection_50_counts", None)
    c90 = getattr(row, "detection_90_counts", None) or getattr(search_row, "detection_90_counts", None)
    limit = row.short_grb_fluence_erg_cm2
    if c50 is None or c90 is None or limit is None or not row.upper_limit_counts > 0:
        return None
    per_count = _headline(limit) / row.upper_limit_counts
    return c50 * per_count, c90 * per_count


def _noise_sentence(ex: Any) -> str:
    model = getattr(ex, "noise_model", None)
    if model == "gaussian-error":
        return "the noise of each window is the sum of the 1-sigma errors given with the light curve"
    factors = [(row.scale_s, row.excess_variance_factor,
                bool(getattr(row, "excess_variance_floored", row.excess_variance_factor <= 1.0)))
               for row in ex.scales]
    above = [(s, f) for s, f, floored in factors if not floored and f > 1.0]
    floored = [s for s, _, fl in factors if fl]
    text = "the noise at each scale is the variance measured on the background"
    if above:
        lo, hi = min(above, key=lambda p: p[1]), max(above, key=lambda p: p[1])
        text += (f", {lo[1]:.2f} times the Poisson value" + (f" on the {lo[0]:g} s scale" if len(above) > 1 else "")
                 + (f" to {hi[1]:.2f} on the {hi[0]:g} s scale" if len(above) > 1 and hi is not lo else ""))
        if len(above) == 1:
            text += f" on the {above[0][0]:g} s scale"
    if floored:
        text += (f"{'; on the ' if above else ', which on the '}{', '.join(f'{s:g}' for s in floored)} s "
                 f"scale{'s' if len(floored) > 1 else ''} is not above the Poisson value, so Poisson noise is used")
    return text + " (Savchenko et al. 2012, A&A 541, A122)"


def _window_sentence(ex: Any) -> str:
    lo_s, hi_s = ex.search_window_s
    requested = getattr(ex, "requested_search_window_s", None)
    coverage = getattr(ex, "coverage", None)
    if coverage is None and requested is not None:
        coverage = "full" if (lo_s, hi_s) == tuple(requested) else "partial"
    text = f"The search covered T0{lo_s:+.1f} s to T0{hi_s:+.1f} s"
    if coverage == "partial" and requested is not None:
        text += (f", only part of the requested T0{requested[0]:+.0f} s to T0{requested[1]:+.0f} s "
                 f"(partial coverage: the light curve is shorter)")
    elif coverage == "partial":
        text += " (partial coverage: the light curve is shorter than requested)"
    return text


def _background_sentence(ex: Any) -> str:
    bkg = ex.background
    intervals = [(float(a), float(b)) for a, b in bkg.background_intervals_s if float(b) > float(a)]
    total_s = sum(b - a for a, b in intervals)
    text = (f"against a polynomial background (order {bkg.order}) fitted on {total_s:.0f} s of data outside "
            f"the search window")
    excluded = [(float(a), float(b)) for a, b in (getattr(ex, "background_excluded_s", None) or ())]
    if excluded:
        text += (f", after excluding {sum(b - a for a, b in excluded):.0f} s of it that deviated from the "
                 f"background (" + ", ".join(f"T0{a:+.0f} s to T0{b:+.0f} s" for a, b in excluded) + ")")
    return text


def spiacs_summary_text(result: SpiAcsResult, event_name: str = "the event", perigee_check: str | None = None) -> str:
    """Return a plain-text summary of ``result`` (several short paragraphs).

    Parameters
    ----------
    result : SpiAcsResult
        Output of :func:`followup.spiacs.run_spiacs_analysis`.
    event_name : str
        Name used in the text, e.g. ``"S230518h"`` or ``"GRB 230307A"``.
    perigee_check : str, optional
        State of the radiation-belt check (``"passed: ..."`` / ``"not run: ..."``), as
        :func:`followup.availability.integral_coverage` gives it.

    Returns
    -------
    str
    """
    ex = result.excess
    scales = ", ".join(f"{row.scale_s:g}" for row in ex.scales)
    paragraphs = [
        (f"We searched the INTEGRAL {result.instrument} light curve for a prompt gamma-ray counterpart of "
         f"{event_name}. T0 = {ex.t0_utc}; times are at INTEGRAL, not corrected to the geocentre. "
         f"{_window_sentence(ex)} on time scales of {scales} s, {_background_sentence(ex)}; "
         f"{_noise_sentence(ex)}."),
    ]
    verdict = "significant" if ex.detected else "not significant"
    n_eff = getattr(ex, "n_effective_trials", None)
    trials = f"{ex.n_trials} trials (windows over all scales and phases"
    trials += (f"; {n_eff:.0f} effective at the detection threshold)" if n_eff is not None and math.isfinite(n_eff)
               and n_eff < 0.95 * ex.n_trials else ")")
    paragraphs.append(
        f"The most significant excess lies at T0{ex.best_offset_s:+.2f} s ({ex.best_time_utc}) on the "
        f"{ex.best_timescale_s:g} s scale, with S/N = {ex.best_snr:.1f} and a false-alarm probability of "
        f"{fap_text(ex.fap)} after {trials}; it is {verdict} at our threshold FAP < {ex.detection_fap:g}."
    )
    one_s = result.limit_at(1.0)
    eight_s = result.limit_at(8.0)
    search_rows = {row.scale_s: row for row in ex.scales}
    if one_s is not None and one_s.short_grb_fluence_erg_cm2 is not None:
        band = f"{result.fluence_band_kev[0]:g}-{result.fluence_band_kev[1]:g} keV"
        text = (f"{'Apart from this excess, t' if ex.detected else 'T'}he 3-sigma upper limit on the {band} fluence "
                f"of a burst lasting up to 1 s at a given time in the window, with a typical short-GRB spectrum "
                f"({result.short_grb_spectrum}), is {_limit_text(one_s.short_grb_fluence_erg_cm2, 'erg/cm^2')}.")
        detect = _detection_fluences(one_s, search_rows.get(one_s.scale_s))
        if detect is not None:
            text += (f" A blind search of the whole window detects such a burst (FAP below the threshold) half of "
                     f"the time at {detect[0]:.2g} erg/cm^2 and 90% of the time at {detect[1]:.2g} erg/cm^2.")
        else:
            text += (" A blind search of the whole window, which must also beat the trials, detects a burst at "
                     "this fluence only rarely; it is not a detection threshold.")
        if eight_s is not None and one_s.long_grb_peak_flux_erg_cm2_s is not None:
            text += (f" For a typical long-GRB spectrum ({result.long_grb_spectrum}) the 3-sigma peak-flux limit "
                     f"is {_limit_text(one_s.long_grb_peak_flux_erg_cm2_s, 'erg/cm^2/s')} on the 1 s scale and "
                     f"{_limit_text(eight_s.long_grb_peak_flux_erg_cm2_s, 'erg/cm^2/s')} on the 8 s scale.")
        calibrated = one_s.short_grb_fluence_erg_cm2.calibrated_probability
        if calibrated < 1.0:
            text += (f" Only {100 * calibrated:.0f}% of the localization probability lies 60-120 deg from the "
                     f"pointing axis, where the response calibration applies; elsewhere it is extrapolated, and "
                     f"within 30 deg of the axis the limits are optimistic.")
        paragraphs.append(text)
    elif one_s is not None:
        row = search_rows.get(one_s.scale_s)
        text = (f"Without a source direction only count limits are given: the 3-sigma upper limit for a 1 s burst "
                f"at a given time is {one_s.upper_limit_counts:.0f} counts")
        c50 = getattr(row, "detection_50_counts", None) if row is not None else None
        c90 = getattr(row, "detection_90_counts", None) if row is not None else None
        if c50 is not None and c90 is not None:
            text += f"; a blind search of the window detects 50% of such bursts at {c50:.0f} and 90% at {c90:.0f} counts"
        paragraphs.append(text + ".")
    notes = []
    # partial coverage is already said with the window
    flags = [f for f in (getattr(ex, "flags", ()) or ()) if not str(f).startswith("partial coverage")]
    if flags:
        notes.append("Flags raised by the search: " + "; ".join(str(f) for f in flags) + ".")
    if perigee_check:
        notes.append(f"Radiation-belt (perigee) check: {perigee_check}.")
    if notes:
        paragraphs.append(" ".join(notes))
    paragraphs.append(f"Response: {result.response_source}. Systematic uncertainty: {result.response_systematic}.")
    paragraphs.append("All values are preliminary and computed automatically.")
    return "\n\n".join(paragraphs) + "\n"
