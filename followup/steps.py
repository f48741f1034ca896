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
from followup.excess import ExcessSearchError, ExcessSearchParams
from followup.isgri import ISGRI_PRODUCTS, isgri_followup
from followup.lightcurve import LightCurve, read_ogip_lightcurve
from followup.plot import plot_lightcurve
from followup.report import spiacs_summary_text
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


def _plot_png(lc: Any, result: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mma-plot-") as tmp:
        path = os.path.join(tmp, "lightcurve.png")
        plot_lightcurve(lc, result, path)
        with open(path, "rb") as fh:
            return fh.read()


def event_name(event: Event) -> str:
    """How the text names the event, e.g. ``"S230518h"``, ``"Fermi/GBM trigger 680782656"``."""
    if event.source == "igwn":
        return event.upstream_id
    instrument = f"/{event.instrument}" if event.instrument else ""
    return f"{event.mission}{instrument} trigger {event.upstream_id}"


def spiacs(run: Any, source: Any, event: Event, attitude: Any, skymap: Any, params: Any) -> tuple[Any, bytes | None]:
    """Light curve fetch, then the SPI-ACS analysis with plot and text; (value, PNG or None)."""
    t0, window_s = event.time, params.window_s

    def fetch() -> StepOutput:
        body = source.fetch_fits(t0, window_s, "spi_acs")
        if isinstance(body, NoData):
            return StepOutput(body.to_dict())
        lc = checked_lightcurve(body, t0, window_s)
        if isinstance(lc, NoData):
            return StepOutput(lc.to_dict())
        return StepOutput({"instrument": lc.instrument, "bin_s": lc.bin_s, "n_bins": int(lc.time_s.size)},
                          {"lightcurve.fits": body})

    fetched, products = run.run("lightcurve.fetch", {"t0": t0, "source": source_identity(source)},
                                {"window_s": window_s, "instrument": "spi_acs"}, code_version(checked_lightcurve),
                                fetch, keep=lambda v: not _transient(v))
    if _no_data(fetched):
        return fetched, None
    body = products["lightcurve.fits"]
    if _no_data(attitude):
        directions, info = [], {"method": "none: no attitude at T0"}
    else:
        directions, info = sky_directions(attitude, event.localization, skymap, params.max_sky_samples)

    def analyse() -> StepOutput:
        lc = read_ogip_lightcurve(body, t0)
        spi_params = SpiAcsParams(search=ExcessSearchParams(search_half_window_s=window_s))
        try:
            result = run_spiacs_analysis(lc, t0, directions or None, spi_params)
        except ExcessSearchError as exc:
            return StepOutput(NoData(f"SPI-ACS light curve does not support a search: {exc}", "data_gap").to_dict())
        ex = result.excess
        value = {
            "detected": ex.detected, "best_time": ex.best_time_utc, "best_offset_s": ex.best_offset_s,
            "best_timescale_s": ex.best_timescale_s, "best_snr": ex.best_snr, "fap": ex.fap,
            "n_trials": ex.n_trials, "directions": info, "text": spiacs_summary_text(result, event_name(event)),
            "result": result.to_dict(),
        }
        return StepOutput(value, {"lightcurve.png": _plot_png(lc, result)})

    code = "+".join(code_version(f) for f in (run_spiacs_analysis, plot_lightcurve, spiacs_summary_text))
    value, out = run.run("spiacs.analysis", {"lightcurve": body, "t0": t0, "directions": directions},
                         {"window_s": window_s}, code, analyse)
    return value, out.get("lightcurve.png")


def _position(localization: Any) -> tuple[float, float]:
    if localization.type == "point":
        return localization.ra, localization.dec
    return localization.ra_max, localization.dec_max


def _isgri_value(found: dict[str, Any], t0: str) -> StepOutput:
    value: dict[str, Any] = {}
    products: dict[str, bytes] = {}
    for name, item in found.items():
        if isinstance(item, NoData):
            value[name] = item.to_dict()
        elif isinstance(item, LightCurve):
            ex = run_spiacs_analysis(item, t0).excess
            value[name] = {"detected": ex.detected, "best_offset_s": ex.best_offset_s,
                           "best_timescale_s": ex.best_timescale_s, "best_snr": ex.best_snr, "fap": ex.fap}
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
    value, _ = run.run(
        "isgri.products", inputs, {"window_s": params.window_s, "products": list(ISGRI_PRODUCTS)},
        code_version(isgri_followup),
        lambda: _isgri_value(isgri_followup(client, t0, ra, dec, visibility, window_s=params.window_s,
                                            min_prob=params.min_ibis_prob), t0),
        keep=lambda v: not _transient(v) and not any(_transient(p) for p in v.get("products", {}).values()))
    return vis, value


def summary_text(event: Event, analyses: dict[str, Any]) -> str:
    """Plain-text report of a follow-up: header, SPI-ACS text, IBIS visibility, ISGRI status."""
    parts = [f"INTEGRAL follow-up of {event_name(event)} ({event.alert_type}), T0 = {event.time}."]
    spi = analyses.get("spiacs")
    if spi is not None:
        parts.append(f"SPI-ACS: no data: {spi['reason']}" if _no_data(spi) else spi["text"].strip())
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
            status = ", ".join(f"{k}: {'no data: ' + v['reason'] if _no_data(v) else 'received'}"
                               for k, v in isgri["products"].items())
            parts.append(f"ISGRI products from MMODA: {status}.")
    return "\n\n".join(parts) + "\n"
