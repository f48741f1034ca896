"""Plain-text summary of an SPI-ACS result, in the manner of the INTEGRAL LVK circulars.

The text states what was searched (instrument, T0, window, time scales), the most
significant excess with its trials-corrected false-alarm probability and whether it
passes the detection threshold, the 3-sigma fluence limit for the short-GRB spectrum
at 1 s (with its range over the sky map when one was given), the long-GRB peak-flux
limits at 1 s and 8 s, and the response used with its systematic uncertainty.
The wording is our own.
"""

from __future__ import annotations

from followup.spiacs import MapLimit, SpiAcsResult

__all__ = ["spiacs_summary_text"]


def _limit_text(limit: MapLimit, unit: str) -> str:
    if limit.n_directions == 1:
        return f"{limit.best:.2g} {unit}"
    return (f"{limit.containment_50:.2g} {unit} over 50% of the localization probability "
            f"({limit.containment_90:.2g} over 90%, {limit.best:.2g} at the most favourable direction)")


def spiacs_summary_text(result: SpiAcsResult, event_name: str = "the event") -> str:
    """Return a plain-text summary of ``result`` (several short paragraphs).

    Parameters
    ----------
    result : SpiAcsResult
        Output of :func:`followup.spiacs.run_spiacs_analysis`.
    event_name : str
        Name used in the text, e.g. ``"S230518h"`` or ``"GRB 230307A"``.

    Returns
    -------
    str
    """
    ex = result.excess
    lo_s, hi_s = ex.search_window_s
    scales = ", ".join(f"{row.scale_s:g}" for row in ex.scales)
    paragraphs = [
        (f"We searched the INTEGRAL {result.instrument} light curve for a prompt gamma-ray counterpart of "
         f"{event_name}. T0 = {ex.t0_utc}. The search covered T0{lo_s:+.1f} s to T0{hi_s:+.1f} s on time scales "
         f"of {scales} s, against a polynomial background (order {ex.background.order}) fitted outside this window; "
         f"the noise at each scale is the variance measured on the background, which exceeds the Poisson value "
         f"(Savchenko et al. 2012, A&A 541, A122)."),
    ]
    verdict = "significant" if ex.detected else "not significant"
    fap_text = f"{ex.fap:.2g}" if ex.fap > 0 else "below 1e-300 (beyond double precision)"
    paragraphs.append(
        f"The most significant excess lies at T0{ex.best_offset_s:+.2f} s ({ex.best_time_utc}) on the "
        f"{ex.best_timescale_s:g} s scale, with S/N = {ex.best_snr:.1f} and a false-alarm probability of "
        f"{fap_text} after {ex.n_trials} trials; it is {verdict} at our threshold FAP < {ex.detection_fap:g}."
    )
    one_s = result.limit_at(1.0)
    eight_s = result.limit_at(8.0)
    if one_s is not None and one_s.short_grb_fluence_erg_cm2 is not None:
        text = (f"{'Apart from this excess, w' if ex.detected else 'W'}e set a 3-sigma upper limit on the "
                f"{result.fluence_band_kev[0]:g}-{result.fluence_band_kev[1]:g} keV fluence of "
                f"{_limit_text(one_s.short_grb_fluence_erg_cm2, 'erg/cm^2')} for a burst lasting up to 1 s with "
                f"a typical short-GRB spectrum ({result.short_grb_spectrum}) anywhere in the window.")
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
        paragraphs.append(
            f"Without a source direction only count limits are given: 3-sigma {one_s.upper_limit_counts:.0f} counts "
            f"in 1 s (excess-variance factor {one_s.excess_variance_factor:.2f})."
        )
    paragraphs.append(f"Response: {result.response_source}. Systematic uncertainty: {result.response_systematic}.")
    paragraphs.append("All values are preliminary and computed automatically.")
    return "\n\n".join(paragraphs) + "\n"
