"""IBIS/ISGRI products from MMODA when the event was in the IBIS field of view.

Requests follow the MMODA/oda-api ISGRI interface (oda-api documentation and the
INTEGRAL online analysis examples): ``instrument="isgri"``, ``product`` one of
``"isgri_image"``, ``"isgri_lc"``, ``"isgri_spectrum"``; energy band ``E1_keV``/
``E2_keV``; ``osa_version`` (e.g. ``"OSA11.2"``); the data either by time (``T1``/``T2``
with ``T_format="isot"``) or by science windows (``scw_list``); the sky position
``RA``/``DEC`` and the image ``radius`` (deg); light curves also take ``time_bin`` with
``time_bin_format="sec"`` and ``src_name``; images ``detection_threshold``.

A request is a frozen, hashable :class:`MmodaRequest`, so the provenance cache
(:mod:`followup.cache`) can key its result. Submission goes through
:class:`followup.datasources.MmodaSource` (retries, NoData on unreachable service, an
injected dispatcher in tests). A returned light curve becomes a
``followup.lightcurve.LightCurve`` so the same excess search applies as to SPI-ACS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import astropy.units as u

from followup.availability import NoData, TimeLike, as_time, check_integral_coverage
from followup.datasources import MmodaSource, checked_lightcurve, lightcurve_fits_from_collection
from followup.visibility import DEFAULT_MIN_PROB, IbisVisibility, not_visible

logger = logging.getLogger(__name__)

ISGRI_PRODUCTS = ("isgri_image", "isgri_lc", "isgri_spectrum")
#: Latest OSA release for ISGRI at the end of the mission.
DEFAULT_OSA_VERSION = "OSA11.2"
#: Default ISGRI band for GRB/GW counterparts, keV (hard X-rays where ISGRI is most sensitive).
DEFAULT_E1_KEV = 30.0
DEFAULT_E2_KEV = 200.0


@dataclass(frozen=True)
class MmodaRequest:
    """One MMODA product request; hashable so it can key a cache.

    Attributes
    ----------
    instrument : str
        MMODA instrument, e.g. ``"isgri"``.
    product : str
        MMODA product, e.g. ``"isgri_lc"``.
    params : tuple of (str, value) pairs
        Other dispatcher parameters, sorted by name; values are str, int, float or
        tuples of str (``scw_list``).
    """

    instrument: str
    product: str
    params: tuple[tuple[str, Any], ...]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DispatcherAPI.get_product`` (tuples become lists)."""
        out: dict[str, Any] = {"instrument": self.instrument, "product": self.product}
        for name, value in self.params:
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def param(self, name: str, default: Any = None) -> Any:
        """The value of one parameter."""
        return dict(self.params).get(name, default)


def isgri_request(
    product: str,
    ra_deg: float,
    dec_deg: float,
    *,
    t0: TimeLike | None = None,
    window_s: float = 300.0,
    scw_list: Iterable[str] | None = None,
    e1_kev: float = DEFAULT_E1_KEV,
    e2_kev: float = DEFAULT_E2_KEV,
    osa_version: str = DEFAULT_OSA_VERSION,
    radius_deg: float = 15.0,
    time_bin_s: float = 1.0,
    src_name: str = "event",
    detection_threshold: float = 5.0,
    product_type: str = "Real",
) -> MmodaRequest:
    """Build an ISGRI product request.

    Parameters
    ----------
    product : {"isgri_image", "isgri_lc", "isgri_spectrum"}
    ra_deg, dec_deg : float
        Position of the event (J2000), deg.
    t0 : Time, datetime, str or float, optional
        Event time; the data span is T0 ± window_s unless ``scw_list`` is given.
    window_s : float
        Half-width of the time span, s.
    scw_list : iterable of str, optional
        Science windows (``"RRRRPPPPSSSF.001"``) instead of a time span.
    e1_kev, e2_kev : float
        Energy band, keV.
    osa_version : str
        OSA release, e.g. ``"OSA11.2"``.
    radius_deg : float
        Radius of the region around RA/DEC, deg.
    time_bin_s : float
        Light-curve bin, s (``isgri_lc``).
    src_name : str
        Source name for the light curve and spectrum.
    detection_threshold : float
        Image source-detection threshold, σ (``isgri_image``).
    product_type : str
        ``"Real"`` (data) or ``"Dummy"``.

    Raises
    ------
    ValueError
        Unknown product, empty band, or neither ``t0`` nor ``scw_list``.
    """
    if product not in ISGRI_PRODUCTS:
        raise ValueError(f"isgri_request: unknown product {product!r} (one of {', '.join(ISGRI_PRODUCTS)})")
    if not e2_kev > e1_kev > 0:
        raise ValueError(f"isgri_request: bad energy band {e1_kev}-{e2_kev} keV")
    params: dict[str, Any] = {
        "E1_keV": float(e1_kev), "E2_keV": float(e2_kev), "osa_version": osa_version,
        "RA": float(ra_deg), "DEC": float(dec_deg), "radius": float(radius_deg), "product_type": product_type,
    }
    if scw_list is not None:
        params["scw_list"] = tuple(str(s) for s in scw_list)
    elif t0 is not None:
        t = as_time(t0)
        params.update(T1=(t - window_s * u.s).utc.isot, T2=(t + window_s * u.s).utc.isot, T_format="isot")
    else:
        raise ValueError("isgri_request: give t0 or scw_list")
    if product == "isgri_lc":
        params.update(time_bin=float(time_bin_s), time_bin_format="sec", src_name=src_name)
    elif product == "isgri_spectrum":
        params["src_name"] = src_name
    else:
        params["detection_threshold"] = float(detection_threshold)
    return MmodaRequest("isgri", product, tuple(sorted(params.items())))


class IsgriClient:
    """Submit ISGRI requests to MMODA and turn light curves into LightCurve objects.

    Parameters
    ----------
    mmoda : followup.datasources.MmodaSource
        Dispatcher access (URL, token, retries; tests pass one with a fake dispatcher).
    """

    def __init__(self, mmoda: MmodaSource) -> None:
        self.mmoda = mmoda

    def submit(self, request: MmodaRequest) -> Any:
        """The oda-api DataCollection for ``request``, or NoData."""
        logger.info("MMODA request %s %s", request.instrument, request.product)
        return self.mmoda.get_product(request.kwargs())

    def lightcurve(self, request: MmodaRequest, t0: TimeLike, window_s: float) -> Any:
        """Submit an ``isgri_lc`` request; a LightCurve relative to ``t0``, or NoData."""
        if request.product != "isgri_lc":
            raise ValueError(f"IsgriClient.lightcurve: request is for {request.product}, not isgri_lc")
        collection = self.submit(request)
        if isinstance(collection, NoData):
            return collection
        body = lightcurve_fits_from_collection(collection, src_name=request.param("src_name"))
        if body is None:
            return NoData("MMODA returned no ISGRI light curve", "data_gap")
        return checked_lightcurve(body, t0, window_s)


def isgri_followup(
    client: IsgriClient,
    t0: TimeLike,
    ra_deg: float,
    dec_deg: float,
    visibility: IbisVisibility,
    products: Iterable[str] = ISGRI_PRODUCTS,
    window_s: float = 300.0,
    min_prob: float = DEFAULT_MIN_PROB,
    **request_options: Any,
) -> dict[str, Any]:
    """Request ISGRI products for an event if IBIS saw it.

    Parameters
    ----------
    client : IsgriClient
    t0 : Time, datetime, str or float
        Event time (UTC).
    ra_deg, dec_deg : float
        Position to analyse (best position or sky-map maximum), deg.
    visibility : IbisVisibility
        From :func:`followup.visibility.ibis_visibility` at T0.
    products : iterable of str
        Subset of :data:`ISGRI_PRODUCTS`.
    window_s : float
        Half-width of the time span, s.
    min_prob : float
        Minimum probability in the coded field of view.
    **request_options
        Passed to :func:`isgri_request` (band, OSA version, ...).

    Returns
    -------
    dict
        Product name → ``LightCurve`` (``isgri_lc``), oda-api DataCollection (image,
        spectrum), or NoData (outside the mission, not visible, service unavailable).
        Nothing is requested when the event is outside the mission or not visible.
    """
    products = tuple(products)
    blocked = check_integral_coverage(t0) or not_visible(visibility, min_prob)
    if blocked is not None:
        return {product: blocked for product in products}
    results: dict[str, Any] = {}
    for product in products:
        request = isgri_request(product, ra_deg, dec_deg, t0=t0, window_s=window_s, **request_options)
        if product == "isgri_lc":
            results[product] = client.lightcurve(request, t0, window_s)
        else:
            results[product] = client.submit(request)
    return results
