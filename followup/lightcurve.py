"""Binned light curves and an OGIP light-curve FITS reader.

A :class:`LightCurve` is the one shape every light-curve analysis in ``followup``
takes: bin centres relative to a reference time T0 (UTC), a nominal bin width and
the counts per bin. :func:`read_ogip_lightcurve` builds one from any OGIP
light-curve FITS file (OGIP/93-003 timing keywords) with a ``TIME`` column and a
``RATE`` or ``COUNTS`` column, plus the 1-sigma error column when there is one
(``ERROR``, ``RATE_ERR``, ``COUNTS_ERR``, ``FLUX_ERR``, ``ERR``): INTEGRAL SPI-ACS
light curves from MMODA, and IBIS/ISGRI, JEM-X or PICsIT light curves from OSA (the
latter background-subtracted, so their ``ERROR`` column, not the counts, gives the
noise; see :mod:`followup.excess`).

Time handling follows OGIP/93-003: ``TIME`` + ``TIMEZERO`` is a time in
``TIMEUNIT`` since ``MJDREF`` (or ``MJDREFI`` + ``MJDREFF``) in the ``TIMESYS``
scale. INTEGRAL files use ``MJDREF = 51544`` (the INTEGRAL Julian Date epoch,
2000-01-01T00:00:00 **TT**) and ``TIMESYS = 'TT'``; the conversion to UTC goes
through :class:`astropy.time.Time` so that the TT-UTC offset (69.184 s in 2023)
and leap seconds are handled exactly, never by a hard-coded offset.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta

from broker.errors import BrokerError

logger = logging.getLogger(__name__)

__all__ = ["LightCurve", "LightCurveError", "read_ogip_lightcurve", "to_utc_time"]

_TIME_SCALES = {"TT": "tt", "UTC": "utc", "TAI": "tai", "TDB": "tdb", "TCB": "tcb", "TCG": "tcg"}
_TIME_UNITS_S = {"s": 1.0, "d": 86400.0}


class LightCurveError(BrokerError):
    """A light curve could not be read or is unusable (one line: what and where)."""


def to_utc_time(value: Time | str) -> Time:
    """Return ``value`` as a scalar :class:`astropy.time.Time` in the UTC scale.

    Parameters
    ----------
    value : astropy.time.Time or str
        A time; a string is parsed as ISO 8601 in UTC (a trailing ``Z`` is allowed).

    Returns
    -------
    astropy.time.Time
        Scalar time, scale ``utc``.

    Raises
    ------
    ValueError
        If the string is not an ISO 8601 time.
    """
    if isinstance(value, Time):
        return value.utc
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1]
    return Time(text, format="isot", scale="utc")


@dataclass(frozen=True, eq=False)
class LightCurve:
    """A binned light curve on a (nominally) regular time grid.

    Parameters
    ----------
    t0 : astropy.time.Time or str
        Reference time T0 (converted to UTC); ``time_s`` is relative to it.
    time_s : numpy.ndarray, shape (N,)
        Bin centres relative to T0, seconds, increasing.
    bin_s : float
        Nominal bin width, seconds (``TIMEDEL``).
    counts : numpy.ndarray, shape (N,)
        Counts in each bin (``rate * bin_s`` when the file gives rates).
    error : numpy.ndarray, shape (N,), optional
        1-sigma uncertainty of ``counts`` per bin, counts (``error_rate * bin_s`` for a
        rate column); None when the file has no error column. Finite and >= 0.
    instrument : str
        Instrument name as in the file (``INSTRUME``), e.g. ``"SPI-ACS"``.
    meta : Mapping[str, Any]
        Provenance: file name, TIMESYS, TIMEZERO, MJDREF, column used, ...
    """

    t0: Time
    time_s: np.ndarray
    bin_s: float
    counts: np.ndarray
    instrument: str = "unknown"
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "t0", to_utc_time(self.t0))
        time_s = np.asarray(self.time_s, dtype=float)
        counts = np.asarray(self.counts, dtype=float)
        if time_s.ndim != 1 or time_s.shape != counts.shape:
            raise LightCurveError(
                f"light curve time_s {time_s.shape} and counts {counts.shape} must be equal 1-D shapes"
            )
        if not self.bin_s > 0:
            raise LightCurveError(f"light curve bin_s must be positive, got {self.bin_s}")
        if time_s.size > 1 and np.any(np.diff(time_s) <= 0):
            raise LightCurveError("light curve time_s must be strictly increasing")
        if self.error is not None:
            error = np.asarray(self.error, dtype=float)
            if error.shape != counts.shape:
                raise LightCurveError(f"light curve error {error.shape} and counts {counts.shape} must have equal shapes")
            _check_errors(error, "error")
            error.setflags(write=False)
            object.__setattr__(self, "error", error)
        time_s.setflags(write=False)
        counts.setflags(write=False)
        object.__setattr__(self, "time_s", time_s)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "bin_s", float(self.bin_s))

    @property
    def rate_cps(self) -> np.ndarray:
        """Count rate per bin, counts/s, shape (N,)."""
        return self.counts / self.bin_s

    @property
    def duration_s(self) -> float:
        """Time covered from the first bin's start to the last bin's end, seconds."""
        if self.time_s.size == 0:
            return 0.0
        return float(self.time_s[-1] - self.time_s[0] + self.bin_s)

    def relative_to(self, t0: Time | str) -> "LightCurve":
        """Return the same data with times relative to another reference time.

        Parameters
        ----------
        t0 : astropy.time.Time or str
            New reference time (UTC).

        Returns
        -------
        LightCurve
        """
        new_t0 = to_utc_time(t0)
        shift_s = float((self.t0 - new_t0).to_value("s"))
        return LightCurve(new_t0, self.time_s + shift_s, self.bin_s, self.counts, self.instrument, self.meta,
                          self.error)

    def between(self, start_s: float, stop_s: float) -> "LightCurve":
        """Return the bins whose centres lie in ``[start_s, stop_s)`` (seconds from T0)."""
        keep = (self.time_s >= start_s) & (self.time_s < stop_s)
        return self.select(keep)

    def select(self, keep: np.ndarray) -> "LightCurve":
        """Return the bins where the boolean mask (or index array) ``keep`` selects, errors included."""
        error = None if self.error is None else self.error[keep]
        return LightCurve(self.t0, self.time_s[keep], self.bin_s, self.counts[keep], self.instrument, self.meta,
                          error)

    def with_counts(self, counts: np.ndarray) -> "LightCurve":
        """Return the same bins (and errors) with other counts, shape (N,): for simulations and injections."""
        return LightCurve(self.t0, self.time_s, self.bin_s, counts, self.instrument, self.meta, self.error)


_ERROR_COLUMNS = ("ERROR", "RATE_ERR", "COUNTS_ERR", "FLUX_ERR", "ERR")


def _check_errors(error: np.ndarray, column: str, rows: np.ndarray | None = None, where: str = "light curve") -> None:
    """Raise LightCurveError naming the column and first row (1-based FITS row) of a bad error."""
    bad = ~np.isfinite(error) | (error < 0)
    if bad.any():
        k = int(np.argmax(bad))
        row = k if rows is None else int(rows[k])
        raise LightCurveError(
            f"{where}: {column} row {row + 1} is {error[k]!r}; a 1-sigma error must be finite and >= 0"
        )


def _header_float(header: fits.Header, key: str, default: float | None, where: str) -> float:
    if key in header:
        return float(header[key])
    if default is None:
        raise LightCurveError(f"{where}: header keyword {key} is missing")
    return default


def _reference_time(header: fits.Header, where: str) -> Time:
    """MJDREF(I/F) in the TIMESYS scale, as an astropy Time (OGIP/93-003 sect. 4)."""
    timesys = str(header.get("TIMESYS", "TT")).strip().upper()
    scale = _TIME_SCALES.get(timesys)
    if scale is None:
        raise LightCurveError(f"{where}: unsupported TIMESYS {timesys!r}")
    if "MJDREFI" in header:
        mjd_int = float(header["MJDREFI"])
        mjd_frac = float(header.get("MJDREFF", 0.0))
    elif "MJDREF" in header:
        mjd_int, mjd_frac = float(header["MJDREF"]), 0.0
    else:
        raise LightCurveError(f"{where}: neither MJDREF nor MJDREFI is in the header")
    return Time(mjd_int, mjd_frac, format="mjd", scale=scale)


def _find_table(hdul: fits.HDUList, where: str) -> tuple[fits.BinTableHDU, str]:
    for hdu in hdul:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        names = {n.upper() for n in hdu.columns.names}
        if "TIME" in names:
            for column in ("RATE", "COUNTS"):
                if column in names:
                    return hdu, column
    raise LightCurveError(f"{where}: no binary table with TIME and RATE or COUNTS columns")


def _timepixr_from_tstart(tstart: Any, unit_s: float, first_stamp_s: float, bin_s: float) -> float | None:
    """Position of the time stamp in its bin implied by ``TSTART``, or None.

    OGIP/93-003 puts ``TSTART`` at the start of the data. Without ``TIMEPIXR`` the
    stamp's place in the bin is otherwise unknown: MMODA SPI-ACS files stamp each
    native 50 ms bin at its start and give ``TSTART`` = first stamp (0.05 s files) or
    first stamp - 0.025 s (0.1 s files, two native bins averaged), so the bin centre
    is 25 ms after the stamp in both. When the first stamp lies within one bin after
    ``TSTART`` the offset gives ``TIMEPIXR``; otherwise the default applies.
    """
    try:
        start_s = float(tstart) * unit_s
    except (TypeError, ValueError):
        return None
    if not np.isfinite(start_s):
        return None
    offset_s = first_stamp_s - start_s
    tolerance_s = 1e-3 * bin_s  # header values carry ~1e-7 s of rounding
    if -tolerance_s <= offset_s < bin_s - tolerance_s:
        return float(min(max(offset_s / bin_s, 0.0), 1.0))
    return None


def read_ogip_lightcurve(path_or_bytes: str | os.PathLike | bytes, t0: Time | str | None = None) -> LightCurve:
    """Read an OGIP light-curve FITS file into a :class:`LightCurve`.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        File path, or the file's bytes (e.g. as returned by a data service).
    t0 : astropy.time.Time or str, optional
        Reference time for ``time_s``. Default: the file's ``TIMEZERO`` instant
        (or the first bin centre if ``TIMEZERO`` is absent), in UTC.

    Returns
    -------
    LightCurve
        Bin centres relative to ``t0`` (s); counts per bin. Multi-channel
        ``RATE``/``COUNTS`` columns are summed over channels (their errors in
        quadrature). ``error`` comes from the first of ``ERROR``, ``RATE_ERR``,
        ``COUNTS_ERR``, ``FLUX_ERR``, ``ERR`` present, scaled exactly like the value
        column (times ``TIMEDEL`` for a rate); None without such a column.

    Raises
    ------
    LightCurveError
        The file cannot be opened, has no usable table, lacks the timing keywords,
        has no finite rows, or has a non-finite or negative error on a row that is
        kept. The message names the file (and the column and 1-based row).

    Notes
    -----
    OGIP/93-003 keywords honoured: ``TIMEZERO`` (default 0), ``MJDREF`` or
    ``MJDREFI``/``MJDREFF``, ``TIMESYS`` (default TT), ``TIMEUNIT`` (s or d),
    ``TIMEDEL`` (default: median spacing of TIME), ``TIMEPIXR`` (position of the
    time stamp within the bin). Without ``TIMEPIXR`` the stamp's position is taken
    from ``TSTART`` when the first stamp lies within one bin after it (MMODA SPI-ACS
    files: bin centre 25 ms after the stamp, as their TSTART/TSTOP show), else 0.5
    (bin centre); ``meta["timepixr"]`` and ``meta["timepixr_from"]`` say which.
    Rows with non-finite values are dropped.
    """
    where = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else os.fspath(path_or_bytes)
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else where
    try:
        hdul = fits.open(source, memmap=False)
    except (OSError, ValueError, TypeError) as exc:
        raise LightCurveError(f"{where}: not a readable FITS file ({exc})") from exc
    with hdul:
        hdu, column = _find_table(hdul, where)
        header = hdu.header
        unit = str(header.get("TIMEUNIT", "s")).strip().lower()
        if unit not in _TIME_UNITS_S:
            raise LightCurveError(f"{where}: unsupported TIMEUNIT {unit!r}")
        unit_s = _TIME_UNITS_S[unit]
        reference = _reference_time(header, where)
        timezero_s = _header_float(header, "TIMEZERO", 0.0, where) * unit_s
        time_col_s = np.asarray(hdu.data["TIME"], dtype=float) * unit_s
        values = np.asarray(hdu.data[column], dtype=float)
        if values.ndim > 1:
            values = values.reshape(values.shape[0], -1).sum(axis=1)
        names = {n.upper(): n for n in hdu.columns.names}
        error_column = next((names[c] for c in _ERROR_COLUMNS if c in names), None)
        errors = None
        if error_column is not None:
            errors = np.asarray(hdu.data[error_column], dtype=float)
            if errors.ndim > 1:
                errors = np.sqrt((errors.reshape(errors.shape[0], -1) ** 2).sum(axis=1))
        instrument = str(header.get("INSTRUME", hdul[0].header.get("INSTRUME", "unknown"))).strip()
        timepixr_given = "TIMEPIXR" in header
        timepixr = _header_float(header, "TIMEPIXR", 0.5, where)
        tstart = header.get("TSTART")
        tdel = header.get("TIMEDEL")
        extname = str(header.get("EXTNAME", ""))
    finite = np.isfinite(time_col_s) & np.isfinite(values)
    if not finite.any():
        raise LightCurveError(f"{where}: no finite TIME/{column} rows")
    rows = np.flatnonzero(finite)
    time_col_s, values = time_col_s[finite], values[finite]
    order = np.argsort(time_col_s, kind="stable")
    time_col_s, values, rows = time_col_s[order], values[order], rows[order]
    if errors is not None:
        errors = errors[rows]
        _check_errors(errors, error_column, rows, where)
    if tdel is not None and float(tdel) > 0:
        bin_s = float(tdel) * unit_s
    elif time_col_s.size > 1:
        bin_s = float(np.median(np.diff(time_col_s)))
    else:
        raise LightCurveError(f"{where}: TIMEDEL missing and only one row to infer the bin width")
    timepixr_from = "TIMEPIXR" if timepixr_given else "default (bin centre)"
    if not timepixr_given:
        inferred = _timepixr_from_tstart(tstart, unit_s, time_col_s[0] + timezero_s, bin_s)
        if inferred is not None:
            timepixr, timepixr_from = inferred, "TSTART (first bin starts at TSTART)"
    centres_s = time_col_s + (0.5 - timepixr) * bin_s
    counts = values * bin_s if column == "RATE" else values
    if errors is not None and column == "RATE":
        errors = errors * bin_s
    # Anchor: the TIMEZERO instant, converted from the file's scale to UTC by astropy.
    anchor = (reference + TimeDelta(timezero_s, format="sec")).utc
    t0_utc = anchor if t0 is None else to_utc_time(t0)
    offset_s = float((anchor - t0_utc).to_value("s"))
    meta = {
        "source": where,
        "extname": extname,
        "column": column,
        "error_column": error_column,
        "timesys": str(header.get("TIMESYS", "TT")).strip(),
        "mjdref": float(reference.mjd),
        "timezero_s": timezero_s,
        "timezero_utc": anchor.isot,
        "telescope": str(header.get("TELESCOP", "")).strip(),
        "timepixr": float(timepixr),
        "timepixr_from": timepixr_from,
    }
    logger.debug("read %d bins of %s from %s (bin %.3f s)", counts.size, instrument, where, bin_s)
    return LightCurve(t0_utc, centres_s + offset_s, bin_s, counts, instrument, meta, errors)
