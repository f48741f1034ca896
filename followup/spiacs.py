"""INTEGRAL SPI-ACS follow-up analysis: excess search plus physical upper limits.

:func:`run_spiacs_analysis` is a pure function of a light curve, an event time, the
source directions in the spacecraft frame and the parameters. It runs the excess
search of :mod:`followup.excess` (Savchenko et al. 2012, A&A 541, A122) and turns the
3-sigma count limit at every time scale into

* the fluence limit (erg/cm^2) for the short-GRB spectrum (cutoff power law,
  alpha = -0.5, Ep = 600 keV), and
* the peak-flux limit (erg/cm^2/s, = fluence limit / time scale) for the long-GRB
  spectrum (Band, alpha = -1, beta = -2.5, Ep = 300 keV); the INTEGRAL LVK circulars
  quote it at 1 s and 8 s,

both in the band ``SpiAcsParams.fluence_band_kev`` (75-2000 keV, as the circulars quote
them; every :class:`MapLimit` carries its band), with the response of
:mod:`followup.response`: a counts-to-fluence factor fitted to published INTEGRAL GCN
Circulars in 75-1000 keV, converted to the band through each spectrum's energy
integrals, and divided by the direction's fraction of optimal response. The same
conversion turns the counts at which 50 % and 90 % of bursts are detected by the blind
search (``detection_50_counts`` / ``detection_90_counts`` of the excess search; ``None``
where it gives no finite value) into fluences and peak fluxes.

For a sky map given as direction samples with probabilities, each quantity is reported
at the best direction (lowest limit, i.e. highest response), at the most probable
direction, and at 50 % and 90 % containment: the value not exceeded over 50 % (90 %)
of the map probability. These differ wherever the map spans directions of different
response.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from astropy.time import Time

from followup.excess import ExcessSearchParams, ExcessSearchResult, search_excess
from followup.lightcurve import LightCurve
from followup.response import (
    LONG_GRB_SPECTRUM,
    SHORT_GRB_SPECTRUM,
    SpiAcsResponseModel,
    direction_quality,
    fluence_per_count_erg_cm2,
    response_fraction,
)

logger = logging.getLogger(__name__)

__all__ = ["MapLimit", "ScaleLimit", "SkyDirection", "SpiAcsParams", "SpiAcsResult", "run_spiacs_analysis"]


@dataclass(frozen=True)
class SkyDirection:
    """A source direction in the INTEGRAL spacecraft frame with its probability.

    ``theta_deg`` is the angle from the pointing axis +X (0..180), ``phi_deg`` the
    azimuth around it; ``probability`` is the sky-map probability of the sample
    (any non-negative weight; normalised over the samples).
    """

    theta_deg: float
    phi_deg: float
    probability: float = 1.0


@dataclass(frozen=True)
class SpiAcsParams:
    """Parameters of :func:`run_spiacs_analysis`."""

    search: ExcessSearchParams = field(default_factory=ExcessSearchParams)
    fluence_band_kev: tuple[float, float] = (75.0, 2000.0)
    peak_flux_timescales_s: tuple[float, ...] = (1.0, 8.0)
    response: SpiAcsResponseModel = field(default_factory=SpiAcsResponseModel)


@dataclass(frozen=True)
class MapLimit:
    """One quantity over the direction samples (unit in the owning field's name).

    Attributes
    ----------
    best, at_max_probability, containment_50, containment_90 : float
        At the direction of lowest value (highest response), at the most probable
        direction, and the value not exceeded over 50 % / 90 % of the map probability.
    band_kev : (float, float)
        Energy band of the fluence or flux, keV.
    best_response_fraction, at_max_probability_response_fraction : float
        SPI-ACS fraction of optimal response at those two directions (0..1).
    best_direction_quality : str
        ``"calibrated"`` or ``"near-axis-optimistic"`` (:func:`followup.response.direction_quality`).
    calibrated_probability : float
        Map probability on ``"calibrated"`` directions (0..1).
    n_directions : int
    """

    best: float
    at_max_probability: float
    containment_50: float
    containment_90: float
    band_kev: tuple[float, float]
    best_response_fraction: float
    at_max_probability_response_fraction: float
    best_direction_quality: str
    calibrated_probability: float
    n_directions: int


@dataclass(frozen=True)
class ScaleLimit:
    """3-sigma limits at one time scale, and the 50 % / 90 % detection levels.

    ``short_grb_fluence_erg_cm2`` / ``long_grb_peak_flux_erg_cm2_s`` convert
    ``upper_limit_counts``; the ``*_50pct_detection_*`` / ``*_90pct_detection_*`` fields
    convert ``detection_50_counts`` / ``detection_90_counts`` (source counts at which 50 %
    / 90 % of injected bursts are detected by the blind search) the same way. Each is
    ``None`` without directions or when the excess search gives no such counts.
    """

    scale_s: float
    requested_scale_s: float
    upper_limit_counts: float
    excess_variance_factor: float
    short_grb_fluence_erg_cm2: MapLimit | None
    long_grb_peak_flux_erg_cm2_s: MapLimit | None
    detection_50_counts: float | None
    detection_90_counts: float | None
    short_grb_fluence_50pct_detection_erg_cm2: MapLimit | None
    short_grb_fluence_90pct_detection_erg_cm2: MapLimit | None
    long_grb_peak_flux_50pct_detection_erg_cm2_s: MapLimit | None
    long_grb_peak_flux_90pct_detection_erg_cm2_s: MapLimit | None


@dataclass(frozen=True)
class SpiAcsResult:
    """Structured SPI-ACS result; :meth:`to_dict` is JSON-serialisable.

    ``fluence_band_kev`` is the band of every fluence and flux (also on each
    :class:`MapLimit`); ``calibration_band_kev`` the band of
    ``fluence_per_count_optimal_erg_cm2`` (erg/cm^2 per count at the optimal direction),
    fitted to the GCN Circulars listed in ``calibration_circulars``.
    """

    t0_utc: str
    instrument: str
    excess: ExcessSearchResult
    limits: tuple[ScaleLimit, ...]
    short_grb_spectrum: str
    long_grb_spectrum: str
    fluence_band_kev: tuple[float, float]
    response_source: str
    response_systematic: str
    response_systematic_fraction: float
    params: SpiAcsParams
    calibration_band_kev: tuple[float, float]
    fluence_per_count_optimal_erg_cm2: float
    calibration_circulars: tuple[int, ...]

    def limit_at(self, scale_s: float) -> ScaleLimit | None:
        """The limit row whose effective scale is closest to ``scale_s`` (within 10 %)."""
        rows = [row for row in self.limits if abs(row.scale_s - scale_s) <= 0.1 * scale_s + 1e-9]
        return min(rows, key=lambda row: abs(row.scale_s - scale_s)) if rows else None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (nested dataclasses become dicts, tuples lists)."""
        return asdict(self)


def _containment(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    """Smallest limit L with P(limit <= L) >= level over the weighted samples."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    k = int(np.searchsorted(cumulative, level * cumulative[-1] * (1 - 1e-12)))
    return float(values[order][min(k, values.size - 1)])


@dataclass(frozen=True)
class _Directions:
    weights: np.ndarray
    fractions: np.ndarray
    qualities: list[str]
    band_kev: tuple[float, float]


def _map_limit(values: np.ndarray, dirs: _Directions) -> MapLimit:
    # Lowest value; ties (equal response) go to the most probable sample.
    weights = dirs.weights
    best = int(np.lexsort((-weights, values))[0])
    most_probable = int(np.argmax(weights))
    calibrated = np.array([quality == "calibrated" for quality in dirs.qualities])
    return MapLimit(
        best=float(values[best]),
        at_max_probability=float(values[most_probable]),
        containment_50=_containment(values, weights, 0.5),
        containment_90=_containment(values, weights, 0.9),
        band_kev=(float(dirs.band_kev[0]), float(dirs.band_kev[1])),
        best_response_fraction=float(dirs.fractions[best]),
        at_max_probability_response_fraction=float(dirs.fractions[most_probable]),
        best_direction_quality=dirs.qualities[best],
        calibrated_probability=float(weights[calibrated].sum() / weights.sum()),
        n_directions=int(values.size),
    )


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def run_spiacs_analysis(
    lightcurve: LightCurve,
    t0: Time | str,
    directions: Sequence[SkyDirection] | None = None,
    params: SpiAcsParams = SpiAcsParams(),
) -> SpiAcsResult:
    """Search an SPI-ACS light curve around T0 and derive fluence / peak-flux limits.

    Parameters
    ----------
    lightcurve : LightCurve
        SPI-ACS counts (any reference time; it is re-referenced to ``t0``).
    t0 : astropy.time.Time or str
        Event time T0 (ISO 8601 UTC string or Time).
    directions : sequence of SkyDirection, optional
        Source direction(s) in the spacecraft frame with probabilities (one sample for
        a point source, many for a sky map). Without directions only count limits are
        given (the response needs a direction).
    params : SpiAcsParams
        Search parameters, fluence band, peak-flux scales and response model.

    Returns
    -------
    SpiAcsResult
        The excess search, per-scale limits in counts and physical units, the
        response source and systematic, and the parameters used.

    Raises
    ------
    followup.excess.ExcessSearchError
        The light curve does not support a search around T0.
    ValueError
        A direction has theta outside 0..180 deg or a negative probability.
    """
    lc = lightcurve.relative_to(t0)
    excess = search_excess(lc, params.search)
    dirs = None
    short_per_count = long_per_count = None
    if directions:
        weights = np.array([d.probability for d in directions], dtype=float)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("direction probabilities must be non-negative with a positive sum")
        theta = np.array([d.theta_deg for d in directions], dtype=float)
        fractions = response_fraction(theta)[0]
        dirs = _Directions(weights, fractions, [direction_quality(float(t)) for t in theta], params.fluence_band_kev)
        # Fluence per count: the optimal-direction factor in the band over each direction's response.
        short_per_count = fluence_per_count_erg_cm2(
            SHORT_GRB_SPECTRUM, params.fluence_band_kev, params.response) / fractions
        long_per_count = fluence_per_count_erg_cm2(
            LONG_GRB_SPECTRUM, params.fluence_band_kev, params.response) / fractions

    def short(counts: float | None) -> MapLimit | None:
        return None if dirs is None or counts is None else _map_limit(counts * short_per_count, dirs)

    def long(counts: float | None, scale_s: float) -> MapLimit | None:
        return None if dirs is None or counts is None else _map_limit(counts * long_per_count / scale_s, dirs)

    limits = []
    for row in excess.scales:
        det50 = _finite_or_none(row.detection_50_counts)
        det90 = _finite_or_none(row.detection_90_counts)
        limits.append(
            ScaleLimit(
                scale_s=row.scale_s,
                requested_scale_s=row.requested_scale_s,
                upper_limit_counts=row.upper_limit_counts,
                excess_variance_factor=row.excess_variance_factor,
                short_grb_fluence_erg_cm2=short(row.upper_limit_counts),
                long_grb_peak_flux_erg_cm2_s=long(row.upper_limit_counts, row.scale_s),
                detection_50_counts=det50,
                detection_90_counts=det90,
                short_grb_fluence_50pct_detection_erg_cm2=short(det50),
                short_grb_fluence_90pct_detection_erg_cm2=short(det90),
                long_grb_peak_flux_50pct_detection_erg_cm2_s=long(det50, row.scale_s),
                long_grb_peak_flux_90pct_detection_erg_cm2_s=long(det90, row.scale_s),
            )
        )
    logger.info("SPI-ACS search at %s: best S/N %.1f at %+.2f s (%.2f s), FAP %.3g",
                excess.t0_utc, excess.best_snr, excess.best_offset_s, excess.best_timescale_s, excess.fap)
    return SpiAcsResult(
        t0_utc=excess.t0_utc,
        instrument=lc.instrument,
        excess=excess,
        limits=tuple(limits),
        short_grb_spectrum=SHORT_GRB_SPECTRUM.name,
        long_grb_spectrum=LONG_GRB_SPECTRUM.name,
        fluence_band_kev=params.fluence_band_kev,
        response_source=params.response.source,
        response_systematic=params.response.systematic_note,
        response_systematic_fraction=params.response.systematic_fraction,
        params=params,
        calibration_band_kev=params.response.calibration_band_kev,
        fluence_per_count_optimal_erg_cm2=params.response.fluence_per_count_erg_cm2,
        calibration_circulars=params.response.calibration_circulars,
    )
