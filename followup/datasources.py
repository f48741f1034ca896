"""Where light curves come from: local OGIP files, MMODA (oda-api) or the ISDC web service.

One interface, :class:`LightCurveSource`: ``fetch(t0, window_s, instrument)`` returns a
``followup.lightcurve.LightCurve`` or a :class:`~followup.availability.NoData`. Every
source first produces the OGIP light-curve FITS bytes (``fetch_fits``), checks that they
cover T0 (:func:`followup.availability.lightcurve_coverage`) and reads them with
``followup.lightcurve.read_ogip_lightcurve``, so every source yields the same object
and the bytes can be hashed for the provenance cache.

Services are configuration: every URL is a constructor argument with a documented
default. Transient failures (timeouts, refused connections, HTTP 5xx) are retried with
exponential backoff (:class:`RetryPolicy`); when they persist, the result is
``NoData(kind="service_unavailable", reason="... after N attempts: <error>")`` — never an
exception. Tokens never appear in logs or reasons.
"""

from __future__ import annotations

import abc
import io
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import astropy.units as u
import httpx
import numpy as np
from astropy.io import fits
from astropy.time import Time

from followup.bundled import folder_label
from followup.availability import (
    NoData,
    TimeLike,
    as_time,
    check_integral_coverage,
    iso_utc,
    lightcurve_coverage,
    RetryPolicy,
    TransientServiceError,
    http_get_bytes,
    redact,
    with_retries,
)
from followup.lightcurve import LightCurveError, read_ogip_lightcurve

logger = logging.getLogger(__name__)

#: MMODA dispatcher (University of Geneva), the URL oda-api itself defaults to.
DEFAULT_MMODA_URL = "https://www.astro.unige.ch/mmoda/dispatch-data"
#: ISDC SPI-ACS web service (legacy IPN interface, Savchenko; operational since 2011).
DEFAULT_ISDC_SPIACS_URL = "https://www.isdc.unige.ch/~savchenk/spiacs-online/spiacs.pl"

def read_lightcurve(fits_bytes: bytes, t0: TimeLike) -> Any:
    """:func:`followup.lightcurve.read_ogip_lightcurve` relative to ``t0``."""
    return read_ogip_lightcurve(fits_bytes, t0=as_time(t0))


def checked_lightcurve(fits_bytes: bytes, t0: TimeLike, window_s: float) -> Any:
    """Read a light curve; NoData(kind="data_gap") if it has no data at T0 (or unreadable)."""
    try:
        lc = read_lightcurve(fits_bytes, t0)
    except LightCurveError as exc:
        return NoData(f"light curve unusable: {exc}", "data_gap")
    gap = lightcurve_coverage(lc, window_s)
    return lc if gap is None else gap


class LightCurveSource(abc.ABC):
    """A source of light curves around an event time."""

    #: Name used in provenance records.
    name: str = "source"

    @abc.abstractmethod
    def fetch_fits(self, t0: TimeLike, window_s: float, instrument: str = "spi_acs") -> bytes | NoData:
        """The OGIP light-curve FITS covering T0 ± window_s, or NoData saying why not."""

    def fetch(self, t0: TimeLike, window_s: float, instrument: str = "spi_acs") -> Any:
        """Light curve around T0.

        Parameters
        ----------
        t0 : Time, datetime, str or float
            Event time (UTC).
        window_s : float
            Half-width of the requested window, s.
        instrument : str
            ``"spi_acs"`` (default), ``"isgri"``, ``"jemx"``, ``"picsit"``.

        Returns
        -------
        followup.lightcurve.LightCurve or NoData
            NoData when T0 is outside the mission, in a data gap, or the service is
            unreachable.
        """
        outside = check_integral_coverage(t0)
        if outside is not None:
            return outside
        body = self.fetch_fits(t0, window_s, instrument)
        if isinstance(body, NoData):
            return body
        return checked_lightcurve(body, t0, window_s)


#: IJD 0 = MJD 51544.0 (TT), the INTEGRAL time reference.
IJD_MJDREF = 51544.0


def fits_bytes_of(hdul: fits.HDUList) -> bytes:
    """Serialize an HDUList to bytes."""
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def ogip_lightcurve_bytes(
    t_ref: Time, time_s: np.ndarray, counts: np.ndarray, timedel_s: float, instrument: str, origin: str
) -> bytes:
    """Write counts per bin as an OGIP light curve (RATE, ERROR in count/s) like MMODA's.

    Parameters
    ----------
    t_ref : Time
        Reference time; becomes TIMEZERO (s from IJD 0, TT).
    time_s : numpy.ndarray, shape (n,)
        Bin centres relative to ``t_ref``, s.
    counts : numpy.ndarray, shape (n,)
        Counts per bin.
    timedel_s : float
        Bin width, s.
    instrument, origin : str
        INSTRUME and ORIGIN header values.
    """
    counts = np.asarray(counts, dtype=float)
    columns = [
        fits.Column(name="TIME", format="D", unit="s", array=np.asarray(time_s, dtype=float)),
        fits.Column(name="RATE", format="D", unit="count/s", array=counts / timedel_s),
        fits.Column(name="ERROR", format="D", unit="count/s", array=np.sqrt(np.maximum(counts, 1.0)) / timedel_s),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="RATE")
    timezero = (t_ref.tt - Time(IJD_MJDREF, format="mjd", scale="tt")).to_value("s")
    for key, value in (
        ("TELESCOP", "INTEGRAL"), ("INSTRUME", instrument), ("ORIGIN", origin[:68]), ("TIMESYS", "TT"),
        ("TIMEREF", "LOCAL"), ("TIMEUNIT", "s"), ("MJDREF", IJD_MJDREF), ("TIMEZERO", timezero),
        ("TIMEDEL", float(timedel_s)), ("TIMEPIXR", 0.5),
        ("TSTART", timezero + float(np.min(time_s)) - 0.5 * timedel_s),
        ("TSTOP", timezero + float(np.max(time_s)) + 0.5 * timedel_s),
    ):
        hdu.header[key] = value
    return fits_bytes_of(fits.HDUList([fits.PrimaryHDU(), hdu]))


# ----------------------------------------------------------------------------- local files

_INSTRUMENT_ALIASES = {
    "spi_acs": ("SPI-ACS", "SPI_ACS", "ACS"),
    "isgri": ("ISGRI", "IBIS"),
    "jemx": ("JEMX", "JEM-X", "JMX1", "JMX2", "JEMX1", "JEMX2"),
    "picsit": ("PICSIT",),
}


class LocalFitsSource(LightCurveSource):
    """OGIP light-curve FITS files in a directory (offline use and tests).

    A file qualifies when a table HDU has a TIME column and a RATE or COUNTS column;
    its time span is computed from the TIME column with MJDREF/TIMEZERO/TIMESYS
    (read by ``followup.lightcurve``; header TSTART/TSTOP are not trusted: MMODA's
    SPI-ACS files write TSTART as an absolute time while TIME is relative to
    TIMEZERO, and their DATE-END equals DATE-OBS). Among the files covering
    T0, the one covering most of the window wins. ``INSTRUME`` must match the
    instrument when present.

    Parameters
    ----------
    directory : path
        Searched recursively for ``*.fits``, ``*.fit``, ``*.lc`` (optionally ``.gz``).
    """

    name = "local"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def _candidates(self) -> list[Path]:
        suffixes = (".fits", ".fit", ".lc", ".fits.gz", ".fit.gz", ".lc.gz")
        return [p for p in sorted(self.directory.rglob("*")) if p.is_file() and p.name.lower().endswith(suffixes)]

    def fetch_fits(self, t0: TimeLike, window_s: float, instrument: str = "spi_acs") -> bytes | NoData:
        labels = _INSTRUMENT_ALIASES.get(instrument, (instrument.upper(),))
        best: tuple[float, bytes] | None = None
        for path in self._candidates():
            try:
                body = path.read_bytes()
                lc = read_lightcurve(body, t0)
            except (OSError, LightCurveError) as exc:
                logger.debug("skipping %s: %s", path, exc)
                continue
            label = lc.instrument.strip().upper()
            if label not in ("", "UNKNOWN") and label not in labels:
                continue
            half = 0.5 * lc.bin_s
            lo, hi = float(lc.time_s[0]) - half, float(lc.time_s[-1]) + half
            if not lo <= 0.0 <= hi:
                continue
            covered = min(hi, window_s) - max(lo, -window_s)
            if best is None or covered > best[0]:
                best = (covered, body)
        if best is None:
            return NoData(f"no {instrument} light curve in {folder_label(self.directory)} covers {iso_utc(as_time(t0))}", "data_gap")
        return best[1]


# ----------------------------------------------------------------------------- MMODA


def _mmoda_transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, httpx.TransportError]
    try:
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover - requests is an oda-api dependency
        pass
    try:
        from oda_api.api import DispatcherNotAvailable, UnexpectedDispatcherStatusCode

        types += [DispatcherNotAvailable, UnexpectedDispatcherStatusCode]
    except ImportError:  # pragma: no cover - oda-api is a dependency
        pass
    return tuple(types)


def lightcurve_fits_from_collection(collection: Any, src_name: str | None = None) -> bytes | None:
    """First light curve (table with a TIME column) of an oda-api DataCollection, as FITS bytes.

    Parameters
    ----------
    collection : oda_api.api.DataCollection
        What ``DispatcherAPI.get_product`` returned.
    src_name : str, optional
        Prefer the product whose ``meta_data["src_name"]`` equals this.
    """
    products = []
    for entry in collection.as_list():
        product = getattr(collection, entry["prod_name"], None)
        if product is None or not hasattr(product, "to_fits_hdu_list"):
            continue
        meta = getattr(product, "meta_data", {}) or {}
        products.append((0 if src_name and meta.get("src_name") == src_name else 1, product))
    for _, product in sorted(products, key=lambda p: p[0]):
        hdul = product.to_fits_hdu_list()
        if any(isinstance(h, fits.BinTableHDU) and "TIME" in h.columns.names for h in hdul[1:]):
            return fits_bytes_of(hdul)
    return None


class MmodaSource(LightCurveSource):
    """Light curves from MMODA through oda-api's ``DispatcherAPI``.

    The SPI-ACS request is ``get_product(instrument="spi_acs", product="spi_acs_lc",
    T1, T2, T_format="isot", time_bin, time_bin_format="sec", product_type="Real")``
    as in the INTEGRAL SPI-ACS data note (Savchenko, zenodo 7472097); the product is an
    OGIP light curve (``NumpyDataProduct``) turned into FITS bytes with
    ``to_fits_hdu_list``.

    Parameters
    ----------
    url : str
        Dispatcher URL; default :data:`DEFAULT_MMODA_URL`.
    token : str, optional
        MMODA token (needed for some products); never logged.
    time_bin_s : float
        Light-curve bin, s. Default 0.1 s.
    retry : RetryPolicy, optional
        Backoff for transient errors.
    dispatcher : object, optional
        A ready ``DispatcherAPI``-like object (tests inject a fake); by default one is
        built lazily from ``url``.
    """

    name = "mmoda"

    def __init__(
        self,
        url: str = DEFAULT_MMODA_URL,
        token: str | None = None,
        time_bin_s: float = 0.1,
        retry: RetryPolicy | None = None,
        dispatcher: Any = None,
    ) -> None:
        self.url = url
        self._token = token
        self.time_bin_s = time_bin_s
        self.retry = retry or RetryPolicy()
        self._dispatcher = dispatcher

    def __repr__(self) -> str:
        return f"MmodaSource(url={self.url!r}, token={'***' if self._token else None})"

    def dispatcher(self) -> Any:
        """The DispatcherAPI (built on first use; building it contacts no server)."""
        if self._dispatcher is None:
            from oda_api.api import DispatcherAPI  # heavy (requests, ...): only a deployment using MMODA pays it

            self._dispatcher = DispatcherAPI(url=self.url, wait=True)
        return self._dispatcher

    def get_product(self, params: dict[str, Any]) -> Any:
        """Submit one product request with retries; the DataCollection or NoData."""
        transient = _mmoda_transient_types()
        call_params = dict(params)
        if self._token:
            call_params["token"] = self._token

        def attempt() -> Any:
            try:
                return self.dispatcher().get_product(**call_params)
            except transient as exc:
                raise TransientServiceError(f"{type(exc).__name__}: {exc}") from exc

        try:
            result = with_retries(attempt, self.retry, "MMODA", secrets=(self._token or "",))
        except Exception as exc:  # noqa: BLE001 - any dispatcher failure is a result, not a crash
            name = type(exc).__name__
            text = redact(str(exc), (self._token or "",))
            if name == "FailedToFindAnyUsefulResults":
                return NoData(f"MMODA found no data: {text}", "data_gap")
            return NoData(f"MMODA request failed: {name}: {text}", "service_unavailable")
        if result is None:
            return NoData("MMODA query did not complete", "service_unavailable")
        return result

    def fetch_fits(self, t0: TimeLike, window_s: float, instrument: str = "spi_acs") -> bytes | NoData:
        if instrument != "spi_acs":
            raise ValueError(f"MmodaSource.fetch: instrument {instrument!r}; use followup.isgri for IBIS products")
        t = as_time(t0)
        params = {
            "instrument": "spi_acs",
            "product": "spi_acs_lc",
            "T1": (t - window_s * u.s).utc.isot,
            "T2": (t + window_s * u.s).utc.isot,
            "T_format": "isot",
            "time_bin": self.time_bin_s,
            "time_bin_format": "sec",
            "product_type": "Real",
        }
        collection = self.get_product(params)
        if isinstance(collection, NoData):
            return collection
        body = lightcurve_fits_from_collection(collection)
        if body is None:
            return NoData(f"MMODA returned no light curve for {iso_utc(t)}", "data_gap")
        return body


# ----------------------------------------------------------------------------- ISDC


def parse_ipnlc(text: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Parse the ISDC SPI-ACS service's ``generate=ipnlc`` answer.

    The answer is an HTML-ish text, lines separated by ``<br>``: two header lines (the
    second's second field is the bin width in s), then one line per bin with the time
    from the requested UTC (s) and the counts in the bin, then trailer lines. This
    layout is the one read by public clients of the service (e.g. the IPN download
    script ``lines[1].split()[1]`` = bin size, data = ``lines[2:]``).

    Returns
    -------
    offset_s : numpy.ndarray, shape (n,)
        Bin times from the requested UTC, s.
    counts : numpy.ndarray, shape (n,)
        Counts per bin.
    timedel_s : float
        Bin width, s.

    Raises
    ------
    ValueError
        If no data line is found.
    """
    clean = re.sub(r"<br\s*/?>", "\n", text, flags=re.IGNORECASE)
    clean = re.sub(r"<[^>]+>", "", clean)
    lines = [ln.strip() for ln in clean.splitlines() if ln.strip()]
    rows = []
    for ln in lines[2:]:
        parts = ln.split()
        if len(parts) < 2:
            continue
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            continue
    if not rows:
        raise ValueError("ISDC SPI-ACS answer holds no data lines")
    data = np.array(rows)
    timedel = math.nan
    if len(lines) > 1 and len(lines[1].split()) > 1:
        try:
            timedel = float(lines[1].split()[1])
        except ValueError:
            pass
    if not (timedel > 0):
        timedel = float(np.median(np.diff(data[:, 0]))) if len(data) > 1 else 0.05
    return data[:, 0], data[:, 1], timedel


class IsdcSpiAcsSource(LightCurveSource):
    """SPI-ACS 50 ms counts from the ISDC web service (``spiacs.pl``, ``generate=ipnlc``).

    The request is ``requeststring="<UTC> <half-window s>"``; the service answers
    counts per bin around the UTC given to whole seconds (the fraction of T0 is
    applied afterwards). Bin times are read as bin starts. The counts become an OGIP
    light curve (RATE = counts / bin, ERROR = √counts / bin, TIMESYS TT, MJDREF 51544 =
    IJD 0, as MMODA writes them).

    Parameters
    ----------
    url : str
        Service URL; default :data:`DEFAULT_ISDC_SPIACS_URL`.
    retry : RetryPolicy, optional
        Backoff for transient errors.
    timeout_s : float
        Per-request timeout, s. Default 60 s.
    """

    name = "isdc"

    def __init__(self, url: str = DEFAULT_ISDC_SPIACS_URL, retry: RetryPolicy | None = None,
                 timeout_s: float = 60.0) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s

    def fetch_fits(self, t0: TimeLike, window_s: float, instrument: str = "spi_acs") -> bytes | NoData:
        if instrument != "spi_acs":
            raise ValueError(f"IsdcSpiAcsSource serves SPI-ACS only, not {instrument!r}")
        t = as_time(t0)
        t_req = as_time(t.utc.isot[:19])  # whole seconds, as the service takes them
        params = {"requeststring": f"{t_req.utc.isot[:19]} {window_s:g}", "generate": "ipnlc", "submit": "Submit"}
        body = http_get_bytes(self.url, params, self.retry, self.timeout_s, "ISDC SPI-ACS service")
        if isinstance(body, NoData):
            return body
        try:
            offset_s, counts, timedel_s = parse_ipnlc(body.decode("utf-8", errors="replace"))
        except ValueError:
            return NoData(f"ISDC SPI-ACS service has no data around {iso_utc(t)}", "data_gap")
        return ogip_lightcurve_bytes(
            t_req, offset_s + 0.5 * timedel_s, counts, timedel_s, instrument="SPI-ACS", origin=self.url
        )
