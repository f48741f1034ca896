"""Honest availability of INTEGRAL data: "no data, and why" as a result, not an error.

INTEGRAL observed from its launch on 2002-10-17 (Jensen et al. 2003, A&A 411, L7) to
the end of science operations on 2025-02-28. Inside that span data are still missing

* near perigee: the instruments do not take science data while the spacecraft crosses
  the radiation belts. ESA's mission description puts science observations above an
  altitude of about 40 000 km, about 90 % of each revolution (the revolution starts at
  perigee, so the belts are crossed around revolution phase 0). When an orbit file
  (``INTL-ORBI-SCP``, columns ``REVOL_PHASE`` and ``DISTANCE``) covers T0, the spacecraft
  altitude and phase at T0 decide (:class:`BeltModel`);
* in telemetry gaps: a light curve that is returned but has no bins around T0
  (:func:`lightcurve_coverage`).

Every check returns ``None`` when data should be there, or a :class:`NoData` naming the
kind and the reason. Services that cannot be reached give ``NoData(kind=
"service_unavailable")`` (see :mod:`followup.datasources`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Protocol, TypeVar, Union

import httpx

import astropy.units as u
import numpy as np
from astropy.time import Time

logger = logging.getLogger(__name__)

NoDataKind = Literal["outside_mission", "data_gap", "service_unavailable", "not_visible"]
TimeLike = Union[Time, datetime, str, float]
T = TypeVar("T")

#: First day of INTEGRAL data (launch 2002-10-17 04:41 UTC, Jensen et al. 2003).
MISSION_START_UTC = "2002-10-17T00:00:00"
#: End of INTEGRAL science operations (2025-02-28), inclusive.
MISSION_END_UTC = "2025-02-28T23:59:59.999"
#: Equatorial Earth radius (WGS 84), km: turns geocentric DISTANCE into altitude.
EARTH_RADIUS_KM = 6378.137


@dataclass(frozen=True)
class NoData:
    """A typed "no data" result: the analysis could not run, and this is why.

    Attributes
    ----------
    reason : str
        One line for humans, e.g. ``"T0 2001-01-01T00:00:00 is before INTEGRAL's
        first data (2002-10-17)"``. Never contains credentials.
    kind : {"outside_mission", "data_gap", "service_unavailable", "not_visible"}
        Machine-readable class of the reason.
    gap_start_utc, gap_stop_utc : str or None
        ISO UTC bounds of the missing span, when known (``data_gap`` only).
    """

    reason: str
    kind: NoDataKind
    gap_start_utc: str | None = None
    gap_stop_utc: str | None = None

    def __str__(self) -> str:
        return f"no data: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form: ``{"no_data": True, "kind": ..., "reason": ..., ...}``."""
        out: dict[str, Any] = {"no_data": True}
        out.update({k: v for k, v in asdict(self).items() if v is not None})
        return out


def as_time(t0: TimeLike) -> Time:
    """Return ``t0`` as a scalar UTC :class:`astropy.time.Time`.

    Parameters
    ----------
    t0 : Time, datetime, str or float
        Event time: a Time, a datetime (naive = UTC), an ISO 8601 string (a trailing
        ``Z`` is accepted) or a float MJD (UTC).

    Raises
    ------
    ValueError
        If the value cannot be read as a time.
    """
    if isinstance(t0, Time):
        return t0.utc
    if isinstance(t0, datetime):
        if t0.tzinfo is not None:
            t0 = t0.astimezone(timezone.utc).replace(tzinfo=None)
        return Time(t0, scale="utc")
    if isinstance(t0, str):
        text = t0.strip()
        if text.endswith("Z"):
            text = text[:-1]
        try:
            return Time(text, scale="utc")
        except ValueError as exc:
            raise ValueError(f"time {t0!r}: not an ISO 8601 UTC time") from exc
    if isinstance(t0, (int, float)):
        return Time(float(t0), format="mjd", scale="utc")
    raise ValueError(f"time {t0!r}: unsupported type {type(t0).__name__}")


def iso_utc(t: Time) -> str:
    """Format a Time as ISO 8601 UTC with millisecond precision and a trailing ``Z``."""
    return t.utc.isot[:23] + "Z"


@dataclass(frozen=True)
class OrbitState:
    """INTEGRAL's orbit at one time: what the perigee check reads (an orbit table, e.g.
    :meth:`followup.attitude.OrbitTable.state_at`, interpolates it)."""

    time: str
    revol: int
    revol_phase: float
    distance_km: float


class OrbitStates(Protocol):
    """Anything that gives the orbit state at a time (:class:`followup.attitude.OrbitTable`)."""

    def state_at(self, t0: TimeLike) -> OrbitState | None:
        """The orbit at ``t0``, or None when ``t0`` is outside the samples."""
        ...


@dataclass(frozen=True)
class BeltModel:
    """When INTEGRAL is too close to Earth to take science data.

    Attributes
    ----------
    min_altitude_km : float
        Science observations happen above this altitude (ESA: ~40 000 km, ~90 % of
        the orbit). Default 40 000 km.
    belt_exit_phase, belt_entry_phase : float
        Revolution phases (0 = perigee) of the nominal belt exit and entry, used
        together with the altitude. The defaults 0.05 / 0.95 are the symmetric split
        of the ~90 % duty cycle; ISDC's revolution file gives the exact per-revolution
        values, which can be passed here.
    """

    min_altitude_km: float = 40_000.0
    belt_exit_phase: float = 0.05
    belt_entry_phase: float = 0.95


def check_integral_coverage(
    t0: TimeLike, orbit: OrbitStates | None = None, belts: BeltModel | None = None
) -> NoData | None:
    """Say whether INTEGRAL could have data at T0.

    Parameters
    ----------
    t0 : Time, datetime, str or float
        Event time (UTC).
    orbit : OrbitStates, optional
        Orbit samples (``INTL-ORBI-SCP``, :class:`followup.attitude.OrbitTable`). When they cover T0, the altitude and
        revolution phase at T0 are checked against ``belts``; when they do not, or
        when no orbit is given, only the mission span is checked.
    belts : BeltModel, optional
        Perigee-passage criteria; default :class:`BeltModel()`.

    Returns
    -------
    NoData or None
        ``NoData(kind="outside_mission")`` before 2002-10-17 or after 2025-02-28,
        ``NoData(kind="data_gap")`` during a perigee passage, else None.
    """
    t = as_time(t0)
    if t < Time(MISSION_START_UTC, scale="utc"):
        return NoData(f"T0 {iso_utc(t)} is before INTEGRAL's first data (2002-10-17)", "outside_mission")
    if t > Time(MISSION_END_UTC, scale="utc"):
        return NoData(
            f"T0 {iso_utc(t)} is after the end of INTEGRAL science operations (2025-02-28)",
            "outside_mission",
        )
    if orbit is None:
        return None
    state = orbit.state_at(t)
    if state is None:
        logger.debug("orbit table does not cover %s; perigee check skipped", iso_utc(t))
        return None
    belts = belts or BeltModel()
    altitude_km = state.distance_km - EARTH_RADIUS_KM
    in_belts = altitude_km < belts.min_altitude_km or not (
        belts.belt_exit_phase <= state.revol_phase <= belts.belt_entry_phase
    )
    if in_belts:
        return NoData(
            f"T0 {iso_utc(t)} is in a perigee passage (revolution {state.revol}, phase "
            f"{state.revol_phase:.4f}, altitude {altitude_km:.0f} km; science data above "
            f"{belts.min_altitude_km:.0f} km, phases {belts.belt_exit_phase}-{belts.belt_entry_phase})",
            "data_gap",
        )
    return None


# ----------------------------------------------------------------------------- services


class TransientServiceError(Exception):
    """A failure worth retrying (timeout, refused connection, HTTP 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient service errors.

    Attributes
    ----------
    attempts : int
        Total attempts (1 = no retry). Default 3.
    base_delay_s : float
        Delay before the second attempt, s; doubles each time. Default 0.5 s.
    max_delay_s : float
        Upper bound of one delay, s. Default 8 s.
    sleep : callable
        ``sleep(seconds)``; injectable for tests.
    """

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay_s(self, attempt: int) -> float:
        """Delay after failed attempt number ``attempt`` (1-based), s."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove secrets and URL query strings (which may carry tokens) from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?…", text)


def with_retries(
    call: Callable[[], T], policy: RetryPolicy, what: str, secrets: tuple[str, ...] = ()
) -> T | NoData:
    """Run ``call``; retry on :class:`TransientServiceError`, give NoData when it persists.

    Parameters
    ----------
    call : callable
        Does one attempt; raises TransientServiceError for retryable failures.
    policy : RetryPolicy
        Attempts and backoff.
    what : str
        Service name for messages, e.g. ``"MMODA"``.
    secrets : tuple of str
        Strings to redact from error messages (tokens).
    """
    last = ""
    for attempt in range(1, max(1, policy.attempts) + 1):
        try:
            return call()
        except TransientServiceError as exc:
            last = redact(str(exc), secrets)
            logger.warning("%s attempt %d/%d failed: %s", what, attempt, policy.attempts, last)
            if attempt < policy.attempts:
                policy.sleep(policy.delay_s(attempt))
    return NoData(f"{what} unreachable after {policy.attempts} attempts: {last}", "service_unavailable")


def http_get_bytes(
    url: str, params: dict[str, Any] | None, policy: RetryPolicy, timeout_s: float, what: str
) -> bytes | NoData:
    """GET ``url`` with retries; the body, or NoData for unreachable/failed services."""

    def attempt() -> bytes | NoData:
        try:
            response = httpx.get(url, params=params, timeout=timeout_s, follow_redirects=True)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientServiceError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise TransientServiceError(f"HTTP {response.status_code} from {url}")
        if response.status_code >= 400:
            return NoData(f"{what} refused the request: HTTP {response.status_code}", "service_unavailable")
        return response.content

    return with_retries(attempt, policy, what)


# ----------------------------------------------------------------------------- light curves


def find_gaps(
    offset_s: np.ndarray, bin_s: float, start_s: float, stop_s: float, tolerance: float = 1.5
) -> list[tuple[float, float]]:
    """Spans of [start_s, stop_s] without any light-curve bin.

    Parameters
    ----------
    offset_s : numpy.ndarray, shape (n,)
        Bin centres, s from T0.
    bin_s : float
        Nominal bin width, s.
    start_s, stop_s : float
        Window, s from T0.
    tolerance : float
        A gap is a stretch longer than ``tolerance`` bin widths between consecutive
        bin centres (or between a window edge and the nearest bin).

    Returns
    -------
    list of (float, float)
        Gap spans, s from T0, sorted.
    """
    half = 0.5 * bin_s
    offset_s = np.asarray(offset_s, dtype=float)
    centres = np.sort(offset_s[(offset_s >= start_s - half) & (offset_s <= stop_s + half)])
    if centres.size == 0:
        return [(float(start_s), float(stop_s))]
    edges = np.concatenate(([start_s - half], centres, [stop_s + half]))
    limit = tolerance * bin_s if bin_s > 0 else np.inf
    gaps = []
    for i in np.nonzero(np.diff(edges) > limit)[0]:
        lo, hi = max(start_s, edges[i] + half), min(stop_s, edges[i + 1] - half)
        if hi > lo:
            gaps.append((float(lo), float(hi)))
    return gaps


def lightcurve_coverage(lightcurve: Any, window_s: float) -> NoData | None:
    """Check that a returned light curve has data around its T0.

    Parameters
    ----------
    lightcurve : followup.lightcurve.LightCurve
        Light curve with ``t0`` (UTC), ``time_s`` (bin centres from T0, s), ``bin_s``.
    window_s : float
        Half-width of the analysis window, s (the window is T0 ± window_s).

    Returns
    -------
    NoData or None
        ``NoData(kind="data_gap")`` with the gap span when the window holds no bin at
        all or when T0 itself falls in a gap; None otherwise (partial gaps elsewhere in
        the window are left to the analysis, and logged).
    """
    t = as_time(lightcurve.t0)
    gaps = find_gaps(lightcurve.time_s, lightcurve.bin_s, -window_s, window_s)
    for lo, hi in gaps:
        if lo <= 0.0 <= hi:
            return NoData(
                f"light curve has no data from T0{lo:+.2f} s to T0{hi:+.2f} s (T0 {iso_utc(t)})",
                "data_gap",
                gap_start_utc=iso_utc(t + lo * u.s),
                gap_stop_utc=iso_utc(t + hi * u.s),
            )
    if gaps:
        logger.info("light curve gaps around %s (s from T0): %s", iso_utc(t), gaps)
    return None
