"""Honest availability of INTEGRAL data: "no data, and why" as a result, not an error.

INTEGRAL observed from its launch on 2002-10-17 (Jensen et al. 2003, A&A 411, L7) to
the end of science operations on 2025-02-28. Inside that span data are still missing

* near perigee: the instruments do not take science data while the spacecraft crosses
  the radiation belts. ESA's mission description puts science observations above an
  altitude of about 40 000 km, about 90 % of each revolution (the revolution starts at
  perigee, so the belts are crossed around revolution phase 0). Two sources decide, and
  the perigee check runs on every request with whichever covers T0:

  - the measured belt passages of each revolution 2-2131 (2002-10-19 .. 2019-09-01:
    perigee time, belt exit and entry where the IREM TC3 soft-electron rate reads 600
    counts; :class:`BeltPassages`, bundled ``followup/data/integral_belt_passages.tsv``);
  - an orbit file (``INTL-ORBI-SCP``, columns ``REVOL_PHASE`` and ``DISTANCE``) covering
    T0: the spacecraft altitude and phase at T0 (:class:`BeltModel`).

  When neither covers T0 the result says so ("perigee check not run: ..."), never
  silently (:func:`integral_coverage`);
* in telemetry gaps: a light curve that is returned but has no bins around T0
  (:func:`lightcurve_coverage`).

Every check returns ``None`` when data should be there, or a :class:`NoData` naming the
kind and the reason. Services that cannot be reached give ``NoData(kind=
"service_unavailable")`` (see :mod:`followup.datasources`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Literal, Protocol, TypeVar, Union

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
    """INTEGRAL's orbit at one time: what the perigee check reads.

    An orbit table (:meth:`followup.attitude.OrbitTable.state_at`) interpolates the
    phase and distance; the belt-passage table (:meth:`BeltPassages.state_at`) gives the
    phase and the measured belt exit/entry of the revolution, but no distance.

    Attributes
    ----------
    time : str
        ISO UTC time of the state.
    revol : int
        Revolution number (a revolution starts at perigee).
    revol_phase : float
        Revolution phase, 0 at perigee, in [0, 1).
    distance_km : float
        Geocentric distance, km; NaN when unknown.
    belt_exit_utc, belt_entry_utc : str or None
        Measured radiation-belt exit and entry of this revolution (ISO UTC), when known.
    source : str
        What gave the state, for the text (``"orbit file"``, ``"belt passages"``).
    """

    time: str
    revol: int
    revol_phase: float
    distance_km: float
    belt_exit_utc: str | None = None
    belt_entry_utc: str | None = None
    source: str = "orbit file"


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


#: IJD 0 of the belt-passage table: its day numbers are UTC days since 2000-01-01
#: (checked: the perigee IJD of every row equals its UTC date and time within 6 s).
_PASSAGES_IJD0_MJD_UTC = 51544.0
#: A revolution lasted 2.99 d (2002-2015) then 2.66 d; a row whose next perigee is
#: further than these bounds has a gap in the table and gives no phase.
_PERIOD_BOUNDS_D = (2.0, 4.0)


class BeltPassages:
    """Measured radiation-belt passages of each INTEGRAL revolution.

    Reads the tab-separated table ISDC published per revolution (bundled as
    ``followup/data/integral_belt_passages.tsv``, revolutions 2-2131, 2002-10-19 to
    2019-09-01; origin in ``followup/data/README.md``): revolution, perigee date and
    time (UTC), perigee IJD, belt exit IJD, belt entry IJD, exit and entry altitude
    (km); ``nan`` where not measured. Exit and entry are where the IREM TC3 (soft
    electrons) rate reads 600 counts, read from the IREM display to about 1/1000 day
    (~90 s). Exit/entry values outside their revolution (a few typing errors in the
    table, e.g. revolution 1774's exit) are treated as not measured, and the nominal
    phases of :class:`BeltModel` decide for that revolution.

    Parameters
    ----------
    text : str
        The table's text.
    source : str
        Name used in messages (no host path).

    Raises
    ------
    ValueError
        If no row can be read.
    """

    def __init__(self, text: str, source: str = "measured belt passages") -> None:
        revol, perigee, exit_, entry = [], [], [], []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 6 or not fields[0].isdigit():
                continue
            values = [_float(f) for f in fields[3:6]]
            if math.isnan(values[0]):
                continue
            revol.append(int(fields[0]))
            perigee.append(values[0])
            exit_.append(values[1])
            entry.append(values[2])
        if not revol:
            raise ValueError(f"{source}: no belt-passage rows")
        order = np.argsort(perigee)
        self.revol = np.asarray(revol)[order]
        self.perigee_ijd = np.asarray(perigee)[order]
        nxt = np.append(self.perigee_ijd[1:], np.nan)
        period = nxt - self.perigee_ijd
        consecutive = np.append(np.diff(self.revol) == 1, False)
        ok = consecutive & (period >= _PERIOD_BOUNDS_D[0]) & (period <= _PERIOD_BOUNDS_D[1])
        self.next_perigee_ijd = np.where(ok, nxt, np.nan)
        exit_a, entry_a = np.asarray(exit_)[order], np.asarray(entry)[order]
        with np.errstate(invalid="ignore"):
            exit_ok = (exit_a >= self.perigee_ijd) & (exit_a <= self.perigee_ijd + 0.5 * period)
            entry_ok = (entry_a >= self.perigee_ijd + 0.5 * period) & (entry_a <= nxt)
        self.exit_ijd = np.where(exit_ok, exit_a, np.nan)
        self.entry_ijd = np.where(entry_ok, entry_a, np.nan)
        self.source = source

    @classmethod
    def bundled(cls) -> BeltPassages:
        """The table shipped with the package (read once per process)."""
        return _bundled_passages()

    def in_belts(self, mjd_utc: np.ndarray, belts: BeltModel | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized belt check for many times (e.g. a trigger catalogue).

        Parameters
        ----------
        mjd_utc : numpy.ndarray, shape (n,)
            Times, MJD (UTC).
        belts : BeltModel, optional
            Nominal phases used for revolutions without a measured exit or entry.

        Returns
        -------
        covered : numpy.ndarray of bool, shape (n,)
            The table gives the revolution at that time.
        in_belts : numpy.ndarray of bool, shape (n,)
            Covered and inside a belt passage (False where not covered).
        """
        belts = belts or BeltModel()
        ijd = np.asarray(mjd_utc, dtype=float) - _PASSAGES_IJD0_MJD_UTC
        i = np.searchsorted(self.perigee_ijd, ijd, side="right") - 1
        ic = np.clip(i, 0, None)
        start, stop = self.perigee_ijd[ic], self.next_perigee_ijd[ic]
        with np.errstate(invalid="ignore"):
            covered = (i >= 0) & np.isfinite(stop) & (ijd < stop)
            phase = (ijd - start) / (stop - start)
            exit_, entry = self.exit_ijd[ic], self.entry_ijd[ic]
            before = np.where(np.isnan(exit_), phase < belts.belt_exit_phase, ijd < exit_)
            after = np.where(np.isnan(entry), phase > belts.belt_entry_phase, ijd > entry)
        return covered, covered & (before | after)

    def state_at(self, t0: TimeLike) -> OrbitState | None:
        """Revolution, phase and the measured belt exit/entry at ``t0``; None outside the table."""
        t = as_time(t0)
        ijd = float(t.utc.mjd) - _PASSAGES_IJD0_MJD_UTC
        i = int(np.searchsorted(self.perigee_ijd, ijd, side="right")) - 1
        if i < 0 or math.isnan(self.next_perigee_ijd[i]) or ijd >= self.next_perigee_ijd[i]:
            return None
        start, stop = self.perigee_ijd[i], self.next_perigee_ijd[i]

        def utc(value: float) -> str | None:
            # to the minute: the table is good to ~1/1000 day
            return None if math.isnan(value) else Time(
                value + _PASSAGES_IJD0_MJD_UTC, format="mjd", scale="utc").isot[:16] + "Z"

        return OrbitState(time=iso_utc(t), revol=int(self.revol[i]), revol_phase=float((ijd - start) / (stop - start)),
                          distance_km=float("nan"), belt_exit_utc=utc(self.exit_ijd[i]),
                          belt_entry_utc=utc(self.entry_ijd[i]), source=self.source)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@functools.lru_cache(maxsize=1)
def _bundled_passages() -> BeltPassages:
    from followup.bundled import bundled_data_dir

    path = bundled_data_dir() / BELT_PASSAGES_FILE
    return BeltPassages(path.read_text(encoding="ascii"))


#: File name of the bundled belt-passage table (in ``followup/data``).
BELT_PASSAGES_FILE = "integral_belt_passages.tsv"


@dataclass(frozen=True)
class PerigeeCheck:
    """Outcome of the perigee / radiation-belt check at T0.

    Attributes
    ----------
    ran : bool
        False when no orbit data cover T0.
    in_belts : bool
        True when T0 is in a perigee passage (only when ``ran``).
    text : str
        One line: what was checked and what it found, or why it did not run.
    """

    ran: bool
    in_belts: bool
    text: str


def _state_verdict(t: Time, state: OrbitState, belts: BeltModel) -> tuple[bool, str]:
    parts = [f"revolution {state.revol}, phase {state.revol_phase:.4f}"]
    in_belts = False
    if math.isfinite(state.distance_km):
        altitude_km = state.distance_km - EARTH_RADIUS_KM
        parts.append(f"altitude {altitude_km:.0f} km")
        in_belts |= altitude_km < belts.min_altitude_km
    if state.belt_exit_utc is not None or state.belt_entry_utc is not None:
        if state.belt_exit_utc is not None:
            parts.append(f"belt exit {state.belt_exit_utc}")
            in_belts |= t < as_time(state.belt_exit_utc)
        else:
            in_belts |= state.revol_phase < belts.belt_exit_phase
        if state.belt_entry_utc is not None:
            parts.append(f"belt entry {state.belt_entry_utc}")
            in_belts |= t > as_time(state.belt_entry_utc)
        else:
            in_belts |= state.revol_phase > belts.belt_entry_phase
    else:
        in_belts |= not belts.belt_exit_phase <= state.revol_phase <= belts.belt_entry_phase
        parts.append(f"science phases {belts.belt_exit_phase}-{belts.belt_entry_phase}")
    return in_belts, f"{state.source}: {', '.join(parts)}"


def perigee_check(t0: TimeLike, orbits: Iterable[Any] = (), belts: BeltModel | None = None,
                  passages: BeltPassages | None = None) -> PerigeeCheck:
    """Is INTEGRAL in a radiation-belt passage at T0?

    Parameters
    ----------
    t0 : Time, datetime, str or float
        Event time (UTC).
    orbits : iterable of OrbitStates, NoData or None
        Orbit tables (:class:`followup.attitude.OrbitTable`); a NoData entry (no orbit
        file for T0, service unreachable) is named in the text when nothing else covers T0.
    belts : BeltModel, optional
        Altitude threshold and nominal phases; default :class:`BeltModel()`.
    passages : BeltPassages, optional
        Measured belt passages; default the bundled table (:meth:`BeltPassages.bundled`).

    Returns
    -------
    PerigeeCheck
        In the belts when any covering source says so (altitude below the threshold,
        before the measured exit or after the measured entry, or outside the nominal
        phases when no passage was measured).
    """
    t = as_time(t0)
    belts = belts or BeltModel()
    sources = [o for o in orbits if o is not None]
    reasons = [o.reason for o in sources if isinstance(o, NoData)]
    sources = [o for o in sources if not isinstance(o, NoData)]
    sources.append(passages if passages is not None else BeltPassages.bundled())
    verdicts = []
    for source in sources:
        state = source.state_at(t)
        if state is not None:
            verdicts.append(_state_verdict(t, state, belts))
    if not verdicts:
        why = "; ".join(reasons + ["the measured belt passages cover 2002-10-19 to 2019-09-01"])
        return PerigeeCheck(False, False, f"not run: no orbit data for T0 ({why})")
    in_belts = any(v for v, _ in verdicts)
    text = "; ".join(line for v, line in verdicts if v == in_belts)
    return PerigeeCheck(True, in_belts, text)


def check_integral_coverage(
    t0: TimeLike, orbit: Any = None, belts: BeltModel | None = None, passages: BeltPassages | None = None
) -> NoData | None:
    """Say whether INTEGRAL could have data at T0.

    Parameters
    ----------
    t0 : Time, datetime, str or float
        Event time (UTC).
    orbit : OrbitStates, NoData, sequence of them, or None
        Orbit samples (``INTL-ORBI-SCP``, :class:`followup.attitude.OrbitTable`). When they
        cover T0, the altitude and revolution phase at T0 are checked against ``belts``.
    belts : BeltModel, optional
        Perigee-passage criteria; default :class:`BeltModel()`.
    passages : BeltPassages, optional
        Measured belt passages, always consulted; default the bundled table.

    Returns
    -------
    NoData or None
        ``NoData(kind="outside_mission")`` before 2002-10-17 or after 2025-02-28,
        ``NoData(kind="data_gap")`` during a perigee passage (the reason names the
        revolution and phase), else None (also when no orbit data cover T0: use
        :func:`integral_coverage` to learn whether the perigee check ran).
    """
    missing, _ = _coverage(t0, orbit, belts, passages)
    return missing


def integral_coverage(
    t0: TimeLike, orbit: Any = None, belts: BeltModel | None = None, passages: BeltPassages | None = None
) -> dict[str, Any]:
    """The JSON coverage value of a follow-up: why there is no data, or what was checked.

    Parameters are those of :func:`check_integral_coverage`.

    Returns
    -------
    dict
        ``NoData.to_dict()`` (outside the mission, perigee passage), or
        ``{"covered": True, "perigee_check": "passed: revolution 789, phase 0.6317, ..."}``
        / ``{"covered": True, "perigee_check": "not run: no orbit data for T0 (...)"}``.
    """
    missing, check = _coverage(t0, orbit, belts, passages)
    if missing is not None:
        return missing.to_dict()
    return {"covered": True, "perigee_check": check.text if not check.ran else f"passed: {check.text}"}


def _coverage(t0: TimeLike, orbit: Any, belts: BeltModel | None,
              passages: BeltPassages | None) -> tuple[NoData | None, PerigeeCheck | None]:
    t = as_time(t0)
    if t < Time(MISSION_START_UTC, scale="utc"):
        return NoData(f"T0 {iso_utc(t)} is before INTEGRAL's first data (2002-10-17)", "outside_mission"), None
    if t > Time(MISSION_END_UTC, scale="utc"):
        return NoData(
            f"T0 {iso_utc(t)} is after the end of INTEGRAL science operations (2025-02-28)",
            "outside_mission",
        ), None
    orbits = orbit if isinstance(orbit, (list, tuple)) else [orbit]
    check = perigee_check(t, orbits, belts, passages)
    if not check.ran:
        logger.debug("perigee check at %s %s", iso_utc(t), check.text)
    if check.in_belts:
        return NoData(f"T0 {iso_utc(t)} is in a perigee passage through the radiation belts, when INTEGRAL "
                      f"takes no science data ({check.text})", "data_gap"), check
    return None, check


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
