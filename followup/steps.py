"""The cached steps of :func:`followup.service.run_followup` and its text summary.

Each function takes the step runner (``service._Steps``, passed in: this module never
imports :mod:`followup.service`, which imports it), runs one lineage-keyed
step and returns plain JSON values (the form stored in the cache), so a cache hit and
a fresh computation give the same thing. "No data" values are ``NoData.to_dict()``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from typing import Any

import astropy_healpix as ah
import numpy as np

from broker.event import Event
from broker.skymap import pixel_area_sr
from followup.attitude import Pointing, to_spacecraft_frame
from followup.availability import NoData
from followup.cache import StepOutput, code_version, source_identity
from followup.datasources import checked_lightcurve, fits_bytes_of
from followup.excess import ExcessSearchError, ExcessSearchParams, search_excess
from followup.isgri import ISGRI_PRODUCTS, isgri_followup
from followup.lightcurve import LightCurve, read_ogip_lightcurve
from followup.plot import plot_lightcurve
from followup.report import fap_text, spiacs_summary_text
from followup.spiacs import SkyDirection, SpiAcsParams, run_spiacs_analysis
from followup.visibility import IbisVisibility, ibis_visibility, not_visible

logger = logging.getLogger(__name__)


def _no_data(value: Any) -> bool:
    return isinstance(value, dict) and value.get("no_data") is True


def _transient(value: Any) -> bool:
    return isinstance(value, dict) and value.get("kind") == "service_unavailable"


def pointing(run: Any, attitude: Any, t0: str) -> Any:
    """INTEGRAL attitude at T0: a :class:`followup.attitude.Pointing`, or a no-data dict."""
    if attitude is None:
        return NoData("no INTEGRAL orbit/attitude source is configured", "data_gap").to_dict()

    def fn() -> StepOutput:
        found = attitude.pointing_at(t0)
        return StepOutput(found.to_dict() if isinstance(found, NoData) else asdict(found))

    value, _ = run.run("attitude.pointing", {"t0": t0, "source": source_identity(attitude)}, {},
                       code_version(Pointing), fn, keep=lambda v: not _transient(v))
    return value if _no_data(value) else Pointing(**value)


def sky_directions(pointing: Any, localization: Any, skymap: tuple[np.ndarray, np.ndarray] | None,
                   max_samples: int) -> tuple[list[SkyDirection], dict[str, Any]]:
    """Source directions in the spacecraft frame with probabilities.

    Parameters
    ----------
    pointing : followup.attitude.Pointing
    localization : PointLocalization, HealpixLocalization or None
    skymap : (uniq, probdensity) or None
        The full multi-order map; its ``max_samples`` most probable pixels (probability
        = density × area) become the samples.
    max_samples : int

    Returns
    -------
    directions : list of SkyDirection
    info : dict
        ``method`` and, for maps, ``n_pixels`` and ``covered_probability``.
    """
    if skymap is not None:
        uniq, density = skymap
        prob = density * pixel_area_sr(uniq)
        top = np.argsort(prob)[::-1][:max_samples]
        level, ipix = ah.uniq_to_level_ipix(uniq[top])
        lon, lat = ah.healpix_to_lonlat(ipix, 2 ** np.asarray(level), order="nested")
        theta, phi = to_spacecraft_frame(pointing, lon.to_value("deg"), lat.to_value("deg"))
        dirs = [SkyDirection(float(t), float(p), float(w)) for t, p, w in zip(theta, phi, prob[top])]
        return dirs, {"method": "skymap", "n_pixels": int(top.size),
                      "covered_probability": float(prob[top].sum() / prob.sum())}
    if localization is None:
        return [], {"method": "none"}
    ra, dec = (localization.ra, localization.dec) if localization.type == "point" else (
        localization.ra_max, localization.dec_max)
    theta, phi = to_spacecraft_frame(pointing, ra, dec)
    method = "point" if localization.type == "point" else "skymap-maximum (map not available)"
    return [SkyDirection(float(theta[()]), float(phi[()]), 1.0)], {"method": method}


def _plot_png(lc: Any, result: Any, name: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mma-plot-") as tmp:
        path = os.path.join(tmp, "lightcurve.png")
        plot_lightcurve(lc, result, path, event_name=name)
        with open(path, "rb") as fh:
            return fh.read()


def event_name(event: Event) -> str:
    """How the text names the event, e.g. ``"S230518h"``, ``"Fermi/GBM trigger 680782656"``."""
    if event.source == "igwn":
        return event.upstream_id
    instrument = f"/{event.instrument}" if event.instrument else ""
    return f"{event.mission}{instrument} trigger {event.upstream_id}"


def search_params(window_s: float) -> ExcessSearchParams:
    """Excess-search parameters for a search over T0 ± ``window_s``."""
    return ExcessSearchParams(search_half_window_s=window_s)


def required_half_span_s(window_s: float) -> float:
    """Half-width of the light curve to fetch, s: the search window plus the background
    stretch the search needs beyond it (``ExcessSearchParams.required_half_span_s``)."""
    params = search_params(window_s)
    return float(getattr(params, "required_half_span_s",
                         window_s + getattr(params, "background_s", 250.0)))


def _coverage_fields(ex: Any) -> dict[str, Any]:
    """Coverage, flags and noise model of an excess search, for the JSON value."""
    lo_s, hi_s = ex.search_window_s
    requested = getattr(ex, "requested_search_window_s", None)
    coverage = getattr(ex, "coverage", None)
    if coverage is None and requested is not None:
        coverage = "full" if (lo_s, hi_s) == tuple(requested) else "partial"
    return {"coverage": coverage, "search_window_s": [lo_s, hi_s],
            "requested_search_window_s": None if requested is None else list(requested),
            "flags": list(getattr(ex, "flags", ()) or ()), "noise_model": getattr(ex, "noise_model", None)}


def spiacs(run: Any, source: Any, event: Event, attitude: Any, skymap: Any, params: Any,
           coverage: dict[str, Any] | None = None) -> tuple[Any, bytes | None]:
    """Light curve fetch, then the SPI-ACS analysis with plot and text; (value, PNG or None).

    The light curve is fetched over T0 ± :func:`required_half_span_s` so that the whole
    T0 ± ``params.window_s`` is searched with the background beyond it; a shorter curve
    is still analysed and the result says the coverage is partial. ``coverage`` (the
    ``integral.coverage`` value) puts the perigee-check state into the text.
    """
    t0, window_s = event.time, params.window_s
    span_s = required_half_span_s(window_s)

    def fetch() -> StepOutput:
        body = source.fetch_fits(t0, span_s, "spi_acs")
        if isinstance(body, NoData):
            return StepOutput(body.to_dict())
        lc = checked_lightcurve(body, t0, window_s)
        if isinstance(lc, NoData):
            return StepOutput(lc.to_dict())
        return StepOutput({"instrument": lc.instrument, "bin_s": lc.bin_s, "n_bins": int(lc.time_s.size),
                           "span_s": [float(lc.time_s[0] - 0.5 * lc.bin_s), float(lc.time_s[-1] + 0.5 * lc.bin_s)]},
                          {"lightcurve.fits": body})

    fetched, products = run.run("lightcurve.fetch", {"t0": t0, "source": source_identity(source)},
                                {"window_s": window_s, "span_s": span_s, "instrument": "spi_acs"},
                                code_version(checked_lightcurve), fetch, keep=lambda v: not _transient(v))
    if _no_data(fetched):
        return fetched, None
    body = products["lightcurve.fits"]
    if _no_data(attitude):
        directions, info = [], {"method": "none: no attitude at T0"}
    else:
        directions, info = sky_directions(attitude, event.localization, skymap, params.max_sky_samples)
    name = event_name(event)
    perigee = (coverage or {}).get("perigee_check")

    def analyse() -> StepOutput:
        lc = read_ogip_lightcurve(body, t0)
        spi_params = SpiAcsParams(search=search_params(window_s))
        try:
            result = run_spiacs_analysis(lc, t0, directions or None, spi_params)
        except ExcessSearchError as exc:
            return StepOutput(NoData(f"SPI-ACS light curve does not support a search: {exc}", "data_gap").to_dict())
        ex = result.excess
        value = {
            "detected": ex.detected, "best_time": ex.best_time_utc, "best_offset_s": ex.best_offset_s,
            "best_timescale_s": ex.best_timescale_s, "best_snr": ex.best_snr, "fap": ex.fap,
            "n_trials": ex.n_trials, **_coverage_fields(ex), "directions": info,
            "text": spiacs_summary_text(result, name, perigee_check=perigee),
            "result": result.to_dict(),
        }
        return StepOutput(value, {"lightcurve.png": _plot_png(lc, result, name)})

    code = "+".join(code_version(f) for f in (run_spiacs_analysis, plot_lightcurve, spiacs_summary_text))
    value, out = run.run("spiacs.analysis", {"lightcurve": body, "t0": t0, "directions": directions},
                         {"window_s": window_s, "event_name": name, "perigee_check": perigee}, code, analyse)
    return value, out.get("lightcurve.png")


def _position(localization: Any) -> tuple[float, float]:
    if localization.type == "point":
        return localization.ra, localization.dec
    return localization.ra_max, localization.dec_max


def lightcurve_search_value(lc: LightCurve, t0: str, window_s: float) -> dict[str, Any]:
    """Excess search on an IBIS/ISGRI, JEM-X or PICsIT light curve: a JSON value.

    These curves come background-subtracted with a 1-sigma ERROR column (OSA/MMODA
    source light curves), so only the excess search runs, with the Gaussian-error
    noise model :func:`followup.excess.search_excess` picks when ``lc.error`` is given;
    the SPI-ACS response and its fluence limits never apply to them. The limits given
    are 3-sigma source counts per time scale, in the light curve's own band.

    Parameters
    ----------
    lc : LightCurve
        The light curve (any reference time; re-referenced to ``t0``).
    t0 : str
        Event time, ISO UTC.
    window_s : float
        Half-width of the search window, s.

    Returns
    -------
    dict
        ``detected``, ``best_time``, ``best_offset_s``, ``best_timescale_s``,
        ``best_snr``, ``fap``, ``n_trials``, ``coverage``, ``search_window_s``,
        ``requested_search_window_s``, ``flags``, ``noise_model``, ``instrument`` and
        ``upper_limits_counts`` (list of ``{"scale_s", "upper_limit_counts"}``); or a
        no-data dict when the curve does not support a search.
    """
    try:
        ex = search_excess(lc.relative_to(t0), search_params(window_s))
    except ExcessSearchError as exc:
        return NoData(f"{lc.instrument} light curve does not support a search: {exc}", "data_gap").to_dict()
    return {"instrument": lc.instrument, "detected": ex.detected, "best_time": ex.best_time_utc,
            "best_offset_s": ex.best_offset_s, "best_timescale_s": ex.best_timescale_s, "best_snr": ex.best_snr,
            "fap": ex.fap, "n_trials": ex.n_trials, **_coverage_fields(ex),
            "upper_limits_counts": [{"scale_s": row.scale_s, "upper_limit_counts": row.upper_limit_counts}
                                    for row in ex.scales]}


def _isgri_value(found: dict[str, Any], t0: str, window_s: float) -> StepOutput:
    value: dict[str, Any] = {}
    products: dict[str, bytes] = {}
    for name, item in found.items():
        if isinstance(item, NoData):
            value[name] = item.to_dict()
        elif isinstance(item, LightCurve):
            value[name] = lightcurve_search_value(item, t0, window_s)
        else:
            names = [entry["prod_name"] for entry in item.as_list()]
            value[name] = {"received": names}
            for prod in names:
                hdul = getattr(getattr(item, prod, None), "to_fits_hdu_list", None)
                if hdul is not None:
                    products[f"{name}.{prod}.fits"] = fits_bytes_of(hdul())
    reasons = {v.get("reason") for v in value.values() if _no_data(v)}
    if len(reasons) == 1 and all(_no_data(v) for v in value.values()):
        return StepOutput(next(iter(value.values())), products)
    return StepOutput({"products": value}, products)


def ibis_isgri(run: Any, client: Any, event: Event, attitude: Any, localization: Any, skymap: Any,
               params: Any) -> tuple[Any, Any]:
    """IBIS visibility at T0, then ISGRI products when visible; (visibility, isgri) values."""
    if _no_data(attitude):
        return attitude, attitude
    if localization is None:
        missing = NoData("the event has no localization", "not_visible").to_dict()
        return missing, missing
    where = {"uniq": skymap[0], "probdensity": skymap[1]} if skymap is not None else localization
    vis, _ = run.run("ibis.visibility", {"pointing": attitude, "localization": where}, {},
                     code_version(ibis_visibility),
                     lambda: StepOutput(ibis_visibility(attitude, skymap if skymap is not None else localization)
                                        .to_dict()))
    visibility = IbisVisibility(**vis)
    blocked = not_visible(visibility, params.min_ibis_prob)
    if blocked is not None:
        return vis, blocked.to_dict()
    if client is None:
        return vis, NoData("no MMODA client is configured for ISGRI products", "service_unavailable").to_dict()
    ra, dec = _position(localization)
    t0 = event.time
    inputs = {"t0": t0, "ra_deg": ra, "dec_deg": dec, "visibility": vis, "mmoda": source_identity(client.mmoda)}
    span_s = required_half_span_s(params.window_s)
    value, _ = run.run(
        "isgri.products", inputs, {"window_s": params.window_s, "span_s": span_s, "products": list(ISGRI_PRODUCTS)},
        "+".join(code_version(f) for f in (isgri_followup, lightcurve_search_value)),
        lambda: _isgri_value(isgri_followup(client, t0, ra, dec, visibility, window_s=span_s,
                                            min_prob=params.min_ibis_prob), t0, params.window_s),
        keep=lambda v: not _transient(v) and not any(_transient(p) for p in v.get("products", {}).values()))
    return vis, value


def _isgri_product_text(name: str, value: dict[str, Any]) -> str:
    if _no_data(value):
        return f"{name}: no data: {value['reason']}"
    if "best_snr" in value:
        verdict = "significant" if value["detected"] else "not significant"
        partial = ", partial coverage" if value.get("coverage") == "partial" else ""
        return (f"{name}: best excess S/N {value['best_snr']:.1f} at T0{value['best_offset_s']:+.2f} s on the "
                f"{value['best_timescale_s']:g} s scale, FAP {fap_text(value['fap'])} ({verdict}{partial})")
    return f"{name}: received"


def summary_text(event: Event, analyses: dict[str, Any]) -> str:
    """Plain-text report of a follow-up: header, SPI-ACS text, IBIS visibility, ISGRI status."""
    parts = [f"INTEGRAL follow-up of {event_name(event)} ({event.alert_type}), T0 = {event.time}."]
    coverage = analyses.get("coverage")
    spi = analyses.get("spiacs")
    if spi is not None:
        parts.append(f"SPI-ACS: no data: {spi['reason']}" if _no_data(spi) else spi["text"].strip())
    if coverage is not None and (spi is None or _no_data(spi)):
        parts.append(f"Radiation-belt (perigee) check: {coverage['perigee_check']}.")
    vis = analyses.get("ibis_visibility")
    if vis is not None:
        if _no_data(vis):
            parts.append(f"IBIS field of view: no data: {vis['reason']}")
        else:
            parts.append(f"IBIS field of view at T0: {100 * vis['partially_coded_prob']:.1f}% of the localization "
                         f"probability in the coded field (29x29 deg), {100 * vis['fully_coded_prob']:.1f}% in the "
                         f"fully coded field (9x9 deg).")
    isgri = analyses.get("isgri")
    if isgri is not None and not (vis is not None and _no_data(vis) and isgri == vis):
        if _no_data(isgri):
            parts.append(f"ISGRI: no data: {isgri['reason']}")
        else:
            status = "; ".join(_isgri_product_text(k, v) for k, v in isgri["products"].items())
            parts.append(f"ISGRI products from MMODA: {status}.")
    return "\n\n".join(parts) + "\n"
