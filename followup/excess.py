"""Excess search with a calibrated false-alarm probability, 3-sigma count limits and
detection efficiencies.

Method (Savchenko et al. 2012, A&A 541, A122, sect. 3, as applied to LVK events in
Savchenko et al. 2017, A&A 603, A46 and ApJL 848, L15); the calibration steps are
ours and are documented, with the simulations that justify them, in
``docs/followup-statistics.md``.

1. **Windows.** The search window is nominally T0 +/- ``search_half_window_s`` (300 s,
   as in the INTEGRAL LVK circulars) and the background is ``background_s`` (250 s) on
   each side of it, so a data source should fetch T0 +/- ``required_half_span_s``
   (550 s). When the data are shorter the search window is clipped so that at least
   ``background_margin_s`` (60 s) of background remains on each side, and the result
   says ``coverage = "partial"`` with the requested and the searched windows.
2. **Noise model**, chosen automatically (``noise_model="auto"``):
   ``"counts-excess-variance"`` for raw counts (SPI-ACS; or any curve whose ERROR is
   the Poisson error of its counts): the variance of a window holding ``B`` model
   counts is ``factor(scale) * B``. ``"gaussian-error"`` for background-subtracted
   curves with an ERROR column (IBIS/ISGRI, JEM-X, PICsIT from OSA/MMODA): the
   variance is ``factor(scale) * sum(error**2)``; counts may be negative.
3. **Robust background.** A polynomial of order 0-2 (lowest BIC) is fitted by least
   squares (weights ``1/error**2`` in the gaussian-error model) to the background
   intervals. Positive excursions are then found on ``clip_timescales_s`` (1-20 s):
   window sums of the residuals above ``clip_snr`` (5) times a robust (MAD) scatter,
   padded by one window on each side, are excluded and the fit is repeated until the
   excluded set no longer changes. Excluded background stretches are reported in
   ``background_excluded_s`` and ``flags``.
4. **Excess variance per scale** from a long stretch: all valid data of the background
   intervals *and* of the search window, minus the excluded excursions (the same
   iterative clipping, applied to the search window too). For each scale the residual
   window sums give ``factor = mean(resid_sum**2) / mean(var_sum)``; in the counts model
   it is floored at 1 (counts are never sub-Poissonian); in the gaussian-error model the
   quoted errors are rescaled to the measured scatter, up or down. ``n_variance_windows``
   is the number of independent windows behind it.
5. **Search.** For each scale of ``n = round(scale / bin)`` bins, windows start every
   ``max(1, n // phases_per_scale)`` bins, lie wholly inside the search window and hold
   no data gap. ``S/N = (C - B) / sqrt(factor * V + model variance)``.
6. **Calibrated FAP.** The estimated variance makes ``S/N`` Student-t distributed with
   ``n_variance_windows - 1`` degrees of freedom; each scale's S/N is mapped to the
   Gaussian-equivalent ``z`` with the same tail probability. The null distribution of
   ``max z`` over all windows, scales and phases depends only on the scan geometry: it
   is measured by Monte Carlo on Gaussian white noise (cached per geometry) and
   summarised as an effective number of trials ``N_eff(z)`` with
   ``FAP(z) = 1 - exp(-N_eff(z) * Q(z))``, ``ln N_eff`` linear in ``z`` (fitted where
   the simulated FAP is 0.5 ... max(1e-3, 10 / realizations)) and capped at the number of windows (the
   ``z -> inf`` limit). The FAP is computed in log space (``log10_fap``).
7. **Detection** when ``FAP < detection_fap`` = 2.7e-3 (the two-sided Gaussian
   3-sigma probability), i.e. ``z > detection_snr_threshold``.
8. **Upper limits** per scale: ``upper_limit_sigma`` (3) times the noise of a window
   holding the mean search-window background: a 3-sigma upper limit on the source
   counts in one window *at a given time*, not a blind-search sensitivity. The counts
   at which a blind search detects 50 % / 90 % of bursts of that duration at a random
   time (``detection_50_counts`` / ``detection_90_counts``) are computed from the
   detection threshold, the noise and the window grid (step 9 of the docs), and are
   checked by injection on the real background in the tests.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field

import astropy.units as u
import numpy as np
from scipy import optimize
from scipy.special import log_ndtr, ndtr, ndtri_exp

from broker.errors import BrokerError
from followup.lightcurve import LightCurve

logger = logging.getLogger(__name__)

__all__ = [
    "BackgroundModel",
    "ExcessSearchError",
    "ExcessSearchParams",
    "ExcessSearchResult",
    "NOISE_MODELS",
    "ScaleResult",
    "choose_noise_model",
    "search_excess",
]

DEFAULT_TIMESCALES_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
NOISE_MODELS = ("counts-excess-variance", "gaussian-error")


class ExcessSearchError(BrokerError):
    """The light curve cannot support the search (too short, too few background bins, bad model)."""


@dataclass(frozen=True)
class ExcessSearchParams:
    """Parameters of :func:`search_excess` (units in the names; see the module docstring).

    ``noise_model`` is ``"auto"`` or one of :data:`NOISE_MODELS`.
    ``calibration_realizations`` white-noise realizations calibrate the trials factor
    (seeded by ``calibration_seed``, so results are reproducible).
    """

    timescales_s: tuple[float, ...] = DEFAULT_TIMESCALES_S
    search_half_window_s: float = 300.0
    background_s: float = 250.0
    background_margin_s: float = 60.0
    max_poly_order: int = 2
    phases_per_scale: int = 4
    detection_fap: float = 2.7e-3
    upper_limit_sigma: float = 3.0
    min_background_windows: int = 4
    noise_model: str = "auto"
    clip_timescales_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
    clip_snr: float = 5.0
    variance_from_search_window: bool = True
    student_t: bool = True
    calibration_realizations: int = 2000
    calibration_seed: int = 20120406

    @property
    def required_half_span_s(self) -> float:
        """Half-span of the light curve to fetch around T0, s: search window plus background."""
        return float(self.search_half_window_s + self.background_s)


@dataclass(frozen=True)
class BackgroundModel:
    """Polynomial background in counts per bin, ``sum_k c_k x**k`` with ``x = (t - centre_s) / scale_s``."""

    order: int
    coefficients: tuple[float, ...]
    centre_s: float
    scale_s: float
    covariance: tuple[tuple[float, ...], ...]
    bin_s: float
    n_bins_fitted: int
    background_intervals_s: tuple[tuple[float, float], ...]

    def _design(self, time_s: np.ndarray) -> np.ndarray:
        x = (np.asarray(time_s, dtype=float) - self.centre_s) / self.scale_s
        return np.vander(x, self.order + 1, increasing=True)

    def counts_per_bin(self, time_s: np.ndarray) -> np.ndarray:
        """Model counts per bin at bin centres ``time_s`` (s from T0), shape like ``time_s``."""
        return self._design(time_s) @ np.asarray(self.coefficients)

    def variance_per_bin(self, time_s: np.ndarray) -> np.ndarray:
        """Variance of the fitted model value per bin at ``time_s`` (counts**2)."""
        design = self._design(time_s)
        return np.einsum("ij,jk,ik->i", design, np.asarray(self.covariance), design)

    def rate_cps(self, time_s: np.ndarray) -> np.ndarray:
        """Model count rate at ``time_s``, counts/s."""
        return self.counts_per_bin(time_s) / self.bin_s


@dataclass(frozen=True)
class ScaleResult:
    """Search result, noise, limit and detection efficiency at one time scale.

    Counts are source counts in one window of ``scale_s``. ``upper_limit_counts`` is
    the ``upper_limit_sigma`` (3-sigma) upper limit for a burst at a *given* time;
    ``detection_50_counts`` / ``detection_90_counts`` are the counts at which 50 % /
    90 % of top-hat bursts of duration ``scale_s`` at a random time in the search
    window are detected (FAP < detection_fap). ``detection_snr_threshold`` is the S/N
    on this scale that reaches the detection FAP. ``excess_variance_factor`` is the one
    used (floored at 1), ``excess_variance_factor_measured`` the unfloored estimate
    from ``n_variance_windows`` independent windows.
    """

    requested_scale_s: float
    scale_s: float
    n_bins: int
    n_trials: int
    max_snr: float
    max_snr_offset_s: float
    excess_variance_factor: float
    excess_variance_factor_measured: float
    excess_variance_floored: bool
    n_variance_windows: int
    mean_background_counts: float
    sigma_counts: float
    upper_limit_counts: float
    detection_snr_threshold: float
    detection_50_counts: float
    detection_90_counts: float


@dataclass(frozen=True)
class ExcessSearchResult:
    """Outcome of :func:`search_excess`; ``to_dict()`` gives a JSON-ready mapping.

    ``fap`` is a float (it underflows to 0.0 below ~1e-308); ``log10_fap`` always holds
    the value. ``detection_snr_threshold`` is the Gaussian-equivalent S/N at which the
    FAP equals ``detection_fap``; ``n_effective_trials`` is ``N_eff`` there.
    ``search_window_s`` is what was searched, ``requested_search_window_s`` what was
    asked; ``coverage`` is ``"full"`` or ``"partial"``. ``flags`` are one-line warnings.
    """

    t0_utc: str
    detected: bool
    best_time_utc: str
    best_offset_s: float
    best_timescale_s: float
    best_snr: float
    fap: float
    log10_fap: float
    n_trials: int
    n_effective_trials: float
    detection_fap: float
    detection_snr_threshold: float
    noise_model: str
    coverage: str
    requested_search_window_s: tuple[float, float]
    search_window_s: tuple[float, float]
    background_excluded_s: tuple[tuple[float, float], ...]
    flags: tuple[str, ...]
    scales: tuple[ScaleResult, ...]
    background: BackgroundModel
    params: ExcessSearchParams = field(default_factory=ExcessSearchParams)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists)."""
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _grid(lc: LightCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Map bins onto a regular grid; a spacing over 1.5 bins opens a gap of missing cells.

    Returns grid centres (s), counts (0 where missing), the validity mask and the
    errors (0 where missing; None without errors).
    """
    if lc.time_s.size < 2:
        raise ExcessSearchError("light curve has fewer than 2 bins")
    steps = np.maximum(1, np.rint(np.diff(lc.time_s) / lc.bin_s).astype(np.int64))
    index = np.concatenate(([0], np.cumsum(steps)))
    valid = np.zeros(index[-1] + 1, dtype=bool)
    valid[index] = True
    counts = np.zeros(valid.size)
    counts[index] = lc.counts
    error = None
    if lc.error is not None:
        error = np.zeros(valid.size)
        error[index] = lc.error
    centres_s = lc.time_s[0] + np.arange(valid.size) * lc.bin_s
    return centres_s, counts, valid, error


def choose_noise_model(lc: LightCurve, requested: str = "auto") -> str:
    """Pick the noise model for ``lc`` (see the module docstring, step 2).

    Raw counts (no error column, an SPI-ACS curve, or errors that are the Poisson errors
    of positive counts: median ``error**2 / counts`` within 0.8-1.25) use
    ``"counts-excess-variance"``; anything else with an error column uses
    ``"gaussian-error"``.

    Raises
    ------
    ExcessSearchError
        ``requested`` is not ``"auto"`` or one of :data:`NOISE_MODELS`, or
        ``"gaussian-error"`` is requested for a curve without errors.
    """
    if requested not in ("auto",) + NOISE_MODELS:
        raise ExcessSearchError(f"unknown noise model {requested!r} (auto or one of {', '.join(NOISE_MODELS)})")
    if requested == "gaussian-error" and lc.error is None:
        raise ExcessSearchError("the gaussian-error noise model needs a light curve with an error column")
    if requested != "auto":
        return requested
    if lc.error is None or "ACS" in lc.instrument.upper():
        return "counts-excess-variance"
    if np.all(lc.counts > 0):
        ratio = float(np.median(lc.error ** 2 / lc.counts))
        if 0.8 <= ratio <= 1.25:
            return "counts-excess-variance"
    return "gaussian-error"


def _fit_polynomial(time_s, counts, weights, params, bin_s, intervals) -> BackgroundModel:
    centre_s = 0.5 * (time_s.min() + time_s.max())
    scale_s = max(0.5 * (time_s.max() - time_s.min()), bin_s)
    x = (time_s - centre_s) / scale_s
    n = counts.size
    sw = np.sqrt(weights)
    best = None
    for order in range(0, params.max_poly_order + 1):
        if n <= order + 2:
            break
        design = np.vander(x, order + 1, increasing=True)
        coef, _, _, _ = np.linalg.lstsq(design * sw[:, None], counts * sw, rcond=None)
        rss = float(np.sum(weights * (counts - design @ coef) ** 2))
        bic = n * np.log(max(rss, 1e-300) / n) + (order + 1) * np.log(n)
        if best is None or bic < best[0]:
            sigma2 = rss / (n - order - 1)
            cov = sigma2 * np.linalg.inv((design * weights[:, None]).T @ design)
            best = (bic, order, coef, cov)
    if best is None:
        raise ExcessSearchError(f"only {n} background bins: too few to fit a background")
    _, order, coef, cov = best
    return BackgroundModel(
        order=order,
        coefficients=tuple(float(c) for c in coef),
        centre_s=float(centre_s),
        scale_s=float(scale_s),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        bin_s=bin_s,
        n_bins_fitted=int(n),
        background_intervals_s=intervals,
    )


def _window_sums(values: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` over every window of ``n`` consecutive cells, by start index."""
    cumulative = np.concatenate(([0.0], np.cumsum(values, dtype=float)))
    return cumulative[n:] - cumulative[:-n]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of ``mask``."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _excursions(residual, var, model_var, usable, clip_ns, clip_snr) -> np.ndarray:
    """Cells covered by positive excursions (padded by one window each side), see step 3.

    The S/N of a window uses its data variance ``var`` (scaled by a robust MAD spread,
    at least 1) plus the background model's own variance ``model_var`` (per bin).
    """
    excluded = np.zeros(residual.size, dtype=bool)
    for n in clip_ns:
        full = _window_sums(usable.astype(float), n) >= n - 0.5
        if full.sum() < 4 * n:
            continue
        rs = _window_sums(np.where(usable, residual, 0.0), n)[full]
        vs = _window_sums(np.where(usable, var, 0.0), n)[full]
        mv = model_var[np.flatnonzero(full) + n // 2] * n * n
        snr = rs / np.sqrt(np.maximum(vs + mv, 1e-300))
        independent = snr[:: n]
        spread = 1.4826 * float(np.median(np.abs(independent - np.median(independent))))
        starts = np.flatnonzero(full)[snr > clip_snr * max(spread, 1.0)]
        if starts.size == 0:
            continue
        marks = np.zeros(residual.size + 1, dtype=np.int64)
        np.add.at(marks, np.maximum(starts - n, 0), 1)
        np.add.at(marks, np.minimum(starts + 2 * n, residual.size), -1)
        excluded |= np.cumsum(marks[:-1]) > 0
    return excluded & usable


def _to_z(snr: float, dof: float | None) -> float:
    """Gaussian-equivalent S/N of a Student-t (``dof``) or Gaussian (``None``) S/N."""
    if dof is None or not np.isfinite(snr):
        return float(snr)
    from scipy import stats  # here, not at import (see followup/plot.py: start-up time)

    log_sf = float(stats.t.logsf(snr, dof))
    if not np.isfinite(log_sf):
        # Far tail: sf(x) ~ pdf(x) * x / dof for a Student-t (power-law tail x**-(dof+1)).
        log_sf = float(stats.t.logpdf(snr, dof) + np.log(snr / dof))
    return float(-ndtri_exp(log_sf))


def _from_z(z: float, dof: float | None) -> float:
    """Inverse of :func:`_to_z`: the scale's S/N whose tail probability is ``Q(z)``."""
    if dof is None:
        return float(z)
    from scipy import stats

    return float(stats.t.isf(np.exp(log_ndtr(-z)), dof))


# ----------------------------------------------------------------- trials calibration


@dataclass(frozen=True)
class _TrialsCalibration:
    """``ln N_eff(z) = a + b z``, capped at ``n_windows``, for one scan geometry."""

    a: float
    b: float
    n_windows: int

    def log_n_eff(self, z: float, n_windows: int) -> float:
        """ln N_eff at ``z`` for a search with ``n_windows`` windows (scaled from the calibration)."""
        ratio = n_windows / self.n_windows
        return float(min(self.a + self.b * z, np.log(self.n_windows))) + float(np.log(ratio))

    def log_fap(self, z: float, n_windows: int) -> float:
        """Natural log of ``1 - exp(-N_eff(z) Q(z))``, exact in the tail (no underflow)."""
        log_x = self.log_n_eff(z, n_windows) + float(log_ndtr(-z))
        if log_x < -30.0:
            return log_x
        return float(np.log(-np.expm1(-np.exp(log_x))))

    def threshold(self, fap: float, n_windows: int) -> float:
        """Gaussian-equivalent ``z`` at which the FAP equals ``fap``."""
        target = np.log(fap)
        return float(optimize.brentq(lambda z: self.log_fap(z, n_windows) - target, -5.0, 60.0, xtol=1e-6))


@functools.lru_cache(maxsize=32)
def _calibrate_geometry(n_cells: int, geometry: tuple[tuple[int, int], ...], realizations: int,
                        seed: int) -> _TrialsCalibration:
    """Monte Carlo of ``max z`` over a gap-free window of ``n_cells`` cells on white noise.

    ``geometry`` is ((n_bins, step), ...) per scale. Returns the fitted ``N_eff(z)``.
    """
    # Small geometries are cheap: simulate enough to reach FAP ~1e-3 (the threshold) directly.
    realizations = max(realizations, min(20_000, 24_000_000 // max(n_cells, 1)))
    rng = np.random.default_rng(seed)
    maxima = np.empty(realizations)
    n_windows = sum(len(range(0, n_cells - n + 1, step)) for n, step in geometry)
    chunk = max(1, min(realizations, 4_000_000 // max(n_cells, 1)))
    for lo in range(0, realizations, chunk):
        m = min(chunk, realizations - lo)
        noise = rng.standard_normal((m, n_cells), dtype=np.float32)
        cumulative = np.zeros((m, n_cells + 1), dtype=np.float32)
        np.cumsum(noise, axis=1, out=cumulative[:, 1:])
        best = np.full(m, -np.inf, dtype=np.float32)
        for n, step in geometry:
            starts = np.arange(0, n_cells - n + 1, step)
            if starts.size == 0:
                continue
            sums = cumulative[:, starts + n] - cumulative[:, starts]
            np.maximum(best, sums.max(axis=1) / np.float32(np.sqrt(n)), out=best)
        maxima[lo:lo + m] = best
    maxima = np.sort(maxima)[::-1]
    survival = (np.arange(1, realizations + 1) - 0.5) / realizations
    sel = (survival <= 0.5) & (survival >= max(1e-3, 10.0 / realizations))
    z = maxima[sel].astype(float)
    log_n_eff = np.log(-np.log1p(-survival[sel])) - log_ndtr(-z)
    weights = np.arange(1, realizations + 1)[sel].astype(float)
    b, a = np.polyfit(z, log_n_eff, 1, w=np.sqrt(weights))
    return _TrialsCalibration(a=float(a), b=float(max(b, 0.0)), n_windows=int(n_windows))


# ------------------------------------------------------------------------ efficiency


def _detection_counts(sigma: float, snr_threshold: float, n: int, step: int, poisson: bool,
                      level: float) -> float:
    """Source counts in one window at which a fraction ``level`` of bursts is detected.

    A top-hat burst of ``n`` bins at a uniformly random (continuous) time overlaps the
    nearest window of the grid (step ``step`` bins) by ``1 - |d| / n`` with ``d``
    uniform in ``[0, step / 2]``; it is detected when that window's S/N (Gaussian noise
    ``sigma``, plus the source's own Poisson noise in the counts model) exceeds
    ``snr_threshold``. Other windows and scales can only add detections, so this is a
    slight underestimate of the efficiency (an overestimate of the counts).
    """
    fractions = 1.0 - (np.arange(64) + 0.5) / 64 * (0.5 * step) / n

    def efficiency(counts: float) -> float:
        signal = fractions * counts
        noise = np.sqrt(sigma ** 2 + (signal if poisson else 0.0))
        return float(np.mean(ndtr(signal / noise - snr_threshold)))

    hi = max(sigma, 1e-12) * (snr_threshold + 10.0) * 4
    return float(optimize.brentq(lambda c: efficiency(c) - level, 0.0, hi, xtol=1e-9 * hi))


# ---------------------------------------------------------------------------- search


def _fmt(interval: tuple[float, float]) -> str:
    return f"{interval[0]:+.1f}..{interval[1]:+.1f} s"


def search_excess(lc: LightCurve, params: ExcessSearchParams = ExcessSearchParams()) -> ExcessSearchResult:
    """Search a light curve for the most significant excess around its T0.

    Parameters
    ----------
    lc : LightCurve
        Binned counts, shape (N,), with optional 1-sigma ``error``; ``lc.t0`` is the
        event time T0 and ``lc.time_s`` is relative to it. Ideally it spans T0 +/-
        ``params.required_half_span_s``.
    params : ExcessSearchParams
        Time scales, windows, background, noise model, detection FAP, limit sigma.

    Returns
    -------
    ExcessSearchResult
        Best excess (UTC time, offset from T0 in s, scale in s, S/N, calibrated FAP and
        its log10), ``detected`` at ``params.detection_fap``, the noise model, coverage,
        excluded background stretches and flags, and per scale the excess-variance
        factor, the 3-sigma count limit and the 50 % / 90 % detection counts.

    Raises
    ------
    ExcessSearchError
        No search window around T0 fits in the data, too little background, or a
        non-positive background model in the counts noise model.

    Notes
    -----
    Savchenko et al. 2012, A&A 541, A122; see the module docstring for each step and
    docs/followup-statistics.md for the calibration.
    """
    noise_model = choose_noise_model(lc, params.noise_model)
    centres_s, counts, valid, error = _grid(lc)
    bin_s = lc.bin_s
    first_s, last_s = centres_s[0] - 0.5 * bin_s, centres_s[-1] + 0.5 * bin_s
    half = params.search_half_window_s
    lo_s = max(-half, first_s + params.background_margin_s)
    hi_s = min(half, last_s - params.background_margin_s)
    if not lo_s <= 0.0 < hi_s:
        raise ExcessSearchError(
            f"T0 is not inside a search window with {params.background_margin_s:g} s of background at each end "
            f"(data cover {first_s:.1f} .. {last_s:.1f} s around T0)"
        )
    flags: list[str] = []
    in_window = (centres_s >= lo_s) & (centres_s < hi_s)
    window_cells = int(in_window.sum())
    gap_s = float((window_cells - int((valid & in_window).sum())) * bin_s)
    clipped = lo_s > -half + 0.5 * bin_s or hi_s < half - 0.5 * bin_s
    coverage = "partial" if clipped or gap_s > 0.01 * (hi_s - lo_s) else "full"
    if clipped:
        flags.append(f"partial coverage: searched {_fmt((lo_s, hi_s))} of the requested {_fmt((-half, half))} "
                     f"(data cover {_fmt((first_s, last_s))})")
    if gap_s > 0:
        flags.append(f"{gap_s:.1f} s of the search window have no data")
    bkg_lo_s, bkg_hi_s = max(first_s, lo_s - params.background_s), min(last_s, hi_s + params.background_s)
    in_bkg = ((centres_s >= bkg_lo_s) & (centres_s < lo_s)) | ((centres_s >= hi_s) & (centres_s < bkg_hi_s))
    bkg_s = float((valid & in_bkg).sum() * bin_s)
    if bkg_s < 2 * params.background_s - 1.0:
        flags.append(f"background {bkg_s:.0f} s long (2 x {params.background_s:g} s requested)")
    intervals = ((float(bkg_lo_s), float(lo_s)), (float(hi_s), float(bkg_hi_s)))

    # Step 3: robust background, iterative exclusion of positive excursions.
    gaussian = noise_model == "gaussian-error"
    fit_weights = 1.0 / np.maximum(error, 1e-12 * max(float(np.max(error)), 1e-300)) ** 2 if gaussian else None
    usable = valid & (in_bkg | (in_window & params.variance_from_search_window))
    clip_ns = sorted({max(1, int(round(s / bin_s))) for s in params.clip_timescales_s})
    excluded = np.zeros(valid.size, dtype=bool)
    for _ in range(10):
        fit_mask = valid & in_bkg & ~excluded
        if fit_mask.sum() < 3:
            raise ExcessSearchError("the background intervals hold too few bins once excursions are excluded")
        weights = fit_weights[fit_mask] if gaussian else np.ones(int(fit_mask.sum()))
        model = _fit_polynomial(centres_s[fit_mask], counts[fit_mask], weights, params, bin_s, intervals)
        model_counts = model.counts_per_bin(centres_s)
        if gaussian:
            var = error ** 2
        else:
            bad = valid & (in_bkg | in_window) & (model_counts <= 0)
            if bad.any():
                raise ExcessSearchError(
                    f"background model is not positive at {centres_s[np.argmax(bad)]:+.1f} s: the counts noise model "
                    "needs raw counts (a background-subtracted curve needs an ERROR column)")
            var = model_counts
        residual = np.where(valid, counts - model_counts, 0.0)
        model_var = model.variance_per_bin(centres_s)
        new = _excursions(residual, var, model_var, usable, clip_ns, params.clip_snr)
        if np.array_equal(new, excluded):
            break
        excluded = new
    excluded_bkg = []
    for start, stop in _runs(excluded & in_bkg):
        interval = (float(centres_s[start] - 0.5 * bin_s), float(centres_s[stop - 1] + 0.5 * bin_s))
        excluded_bkg.append(interval)
        flags.append(f"an excess at {_fmt(interval)} in the background interval was excluded from the fit")
    excluded_window_s = float((excluded & in_window).sum() * bin_s)
    if excluded_window_s > 0:
        flags.append(f"{excluded_window_s:.1f} s of the search window hold significant excursions and were left "
                     "out of the excess-variance estimate")
    var_mask = usable & ~excluded
    if var_mask.sum() * bin_s < 400.0:
        flags.append(f"excess variance from {var_mask.sum() * bin_s:.0f} s of data (< 400 s)")

    # Steps 4-5: per-scale variance and search.
    per_scale = []
    seen: set[int] = set()
    for requested_s in params.timescales_s:
        n = max(1, int(np.floor(requested_s / bin_s + 0.5)))
        if n in seen or n > window_cells:
            continue
        seen.add(n)
        step = max(1, n // params.phases_per_scale)
        starts = np.arange(valid.size - n + 1)
        inside = _window_sums(in_window.astype(float), n) >= n - 0.5
        full_valid = _window_sums(valid.astype(float), n) >= n - 0.5
        var_ok = _window_sums(var_mask.astype(float), n) >= n - 0.5
        resid_sums = _window_sums(residual, n)
        var_sums = _window_sums(np.where(valid, var, 0.0), n)
        model_sums = _window_sums(np.where(valid, model_counts, 0.0), n)
        vsel = var_ok & (starts % step == 0)
        n_independent = int(vsel.sum() * step // n)
        if n_independent < params.min_background_windows:
            logger.info("scale %.3g s skipped: %d independent windows for the variance", n * bin_s, n_independent)
            continue
        # E[resid_sum**2] = noise variance - model variance inside the fitted intervals,
        # + model variance outside them (least squares residuals are orthogonal to the fit).
        fitted = _window_sums((in_bkg & ~excluded).astype(float), n) >= n - 0.5
        model_var_sums = model_var[np.minimum(starts + n // 2, valid.size - 1)] * n * n
        noise_sq = resid_sums[vsel] ** 2 + np.where(fitted[vsel], 1.0, -1.0) * model_var_sums[vsel]
        measured = float(np.mean(noise_sq) / np.mean(var_sums[vsel]))
        # Counts are never sub-Poissonian: floor at 1. Quoted errors are rescaled to the
        # measured scatter either way (docs, step 4), so the Student-t tail stays exact.
        floor = 0.0 if gaussian else 1.0
        factor = max(measured, floor)
        search_sel = inside & full_valid & ((starts - np.argmax(inside)) % step == 0)
        idx = starts[search_sel]
        if idx.size == 0:
            continue
        centre_model_var = model_var[idx + n // 2] * n * n
        sigma = np.sqrt(factor * var_sums[idx] + centre_model_var)
        snr = resid_sums[idx] / sigma
        k = int(np.argmax(snr))
        # The best window's S/N against a factor estimated *without* it (leave-out, i.e.
        # externally studentized): otherwise its own square deflates its significance.
        vstarts = starts[vsel]
        away = np.abs(vstarts - idx[k]) >= n
        if away.sum() * step // n >= params.min_background_windows and away.sum() < vstarts.size:
            loo = max(float(np.mean(noise_sq[away]) / np.mean(var_sums[vsel][away])), floor)
            snr[k] = resid_sums[idx[k]] / np.sqrt(loo * var_sums[idx[k]] + centre_model_var[k])
            k = int(np.argmax(snr))
        # Student-t tail for the estimated factor; a floored factor is the Poisson (or
        # quoted-error) value itself, so its tail is Gaussian (docs, step 6).
        dof = float(max(n_independent - 1, 1)) if params.student_t and measured >= floor else None
        per_scale.append(dict(
            requested_s=float(requested_s), n=n, step=step, idx=idx, snr=float(snr[k]),
            offset_s=float(centres_s[idx[k]] - 0.5 * bin_s + 0.5 * n * bin_s), measured=measured, factor=factor,
            n_var=n_independent, dof=dof, mean_bkg=float(np.mean(model_sums[idx])),
            sigma=float(np.sqrt(factor * np.mean(var_sums[idx]) + np.mean(centre_model_var))),
            z=_to_z(float(snr[k]), dof),
        ))
    if not per_scale:
        raise ExcessSearchError("no time scale has enough background and search-window data")

    # Step 6: calibrated FAP.
    geometry = tuple((row["n"], row["step"]) for row in per_scale)
    canonical_cells = max(window_cells, int(round(2 * half / bin_s)))
    calibration = _calibrate_geometry(canonical_cells, geometry, params.calibration_realizations,
                                      params.calibration_seed)
    n_total = int(sum(row["idx"].size for row in per_scale))
    best = max(per_scale, key=lambda row: row["z"])
    log_fap = calibration.log_fap(best["z"], n_total)
    z_threshold = calibration.threshold(params.detection_fap, n_total)
    n_eff = float(np.exp(calibration.log_n_eff(z_threshold, n_total)))

    scales = []
    for row in per_scale:
        snr_threshold = _from_z(z_threshold, row["dof"])
        poisson = not gaussian
        scales.append(ScaleResult(
            requested_scale_s=row["requested_s"],
            scale_s=round(row["n"] * bin_s, 9),
            n_bins=row["n"],
            n_trials=int(row["idx"].size),
            max_snr=row["snr"],
            max_snr_offset_s=row["offset_s"],
            excess_variance_factor=row["factor"],
            excess_variance_factor_measured=row["measured"],
            excess_variance_floored=bool(row["measured"] < row["factor"]),
            n_variance_windows=row["n_var"],
            mean_background_counts=row["mean_bkg"],
            sigma_counts=row["sigma"],
            upper_limit_counts=params.upper_limit_sigma * row["sigma"],
            detection_snr_threshold=snr_threshold,
            detection_50_counts=_detection_counts(row["sigma"], snr_threshold, row["n"], row["step"], poisson, 0.5),
            detection_90_counts=_detection_counts(row["sigma"], snr_threshold, row["n"], row["step"], poisson, 0.9),
        ))
    best_time = (lc.t0 + best["offset_s"] * u.s).utc.isot + "Z"
    return ExcessSearchResult(
        t0_utc=lc.t0.utc.isot + "Z",
        detected=bool(log_fap < np.log(params.detection_fap)),
        best_time_utc=best_time,
        best_offset_s=best["offset_s"],
        best_timescale_s=round(best["n"] * bin_s, 9),
        best_snr=best["snr"],
        fap=float(np.exp(log_fap)),
        log10_fap=float(log_fap / np.log(10.0)),
        n_trials=n_total,
        n_effective_trials=n_eff,
        detection_fap=params.detection_fap,
        detection_snr_threshold=z_threshold,
        noise_model=noise_model,
        coverage=coverage,
        requested_search_window_s=(float(-half), float(half)),
        search_window_s=(float(lo_s), float(hi_s)),
        background_excluded_s=tuple(excluded_bkg),
        flags=tuple(flags),
        scales=tuple(scales),
        background=model,
        params=params,
    )
