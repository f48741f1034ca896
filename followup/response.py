"""SPI-ACS response: counts per unit fluence for a spectrum and a source direction.

What the response is made of (cited in every result and report)
----------------------------------------------------------------
``fluence per count (band, spectrum, direction) = K * R(spectrum, band) / f(theta)``

* **K**, erg/cm^2 per ACS count in the calibration band 75-1000 keV at the *optimal*
  direction: one factor fitted to 16 published INTEGRAL SPI-ACS upper limits in GCN
  Circulars (:func:`calibrate_against_circulars`; the circulars, the fit and its
  residuals are in docs/spiacs-calibration.md and ``followup/data/spiacs_gcn_circulars.csv``).
  The fitted K is 1.38e-10; Viganò & Mereghetti (2009, arXiv:0912.5329) found ~1e-10 for
  directions orthogonal to the pointing axis from GRBs seen by other missions. The fit
  absorbs what the circulars do not state (their count limits and background rates, see
  :func:`calibrate_against_circulars`), so K reproduces the published *limits*.
* **R**, the ratio of the spectrum's energy integrals over the requested band and the
  calibration band (:func:`energy_fluence_kev`, scipy ``quad``): 1.198 for the short-GRB
  spectrum and 1.169 for the long-GRB one from 75-1000 to 75-2000 keV. K is taken as
  independent of the spectrum inside 75-1000 keV (Viganò & Mereghetti's assumption).
* **f(theta)**, the "fraction of optimal response" at the angle theta from the pointing
  axis +X: linear interpolation in ``followup/data/spiacs_response_fraction.csv``, which is
  derived from the fractions the circulars state (they come from the INTEGRAL team's
  response model, Savchenko et al. 2017, A&A 603, A46). The azimuth phi is recorded but
  the table has no phi dependence; the circulars' scatter at one theta (e.g. 0.40-0.61
  near 91 deg) is that azimuthal dependence and enters the systematic uncertainty.

Direction labels: ``"near-axis-optimistic"`` below the smallest tabulated theta (30 deg:
no circular samples it, the fraction is held flat, and the ACS is less sensitive there
than modelled, so the limit is too low); ``"calibrated"`` elsewhere.

Systematic uncertainty: the rms of the full model's residuals against the circulars'
short-GRB limits (:attr:`SpiAcsResponseModel.systematic_fraction`, 20 %), measured by
:func:`calibrate_against_circulars`; it includes the azimuthal scatter and the differing
backgrounds of the circulars.

``python -m followup.response`` prints the calibration table of docs/spiacs-calibration.md.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal, Sequence

import numpy as np
from scipy.integrate import quad

__all__ = [
    "Band",
    "CalibrationFit",
    "CircularLimit",
    "CircularResidual",
    "CutoffPowerLaw",
    "DirectionalResponse",
    "LONG_GRB_SPECTRUM",
    "ResponseFractionRow",
    "SHORT_GRB_SPECTRUM",
    "SpiAcsResponseModel",
    "calibrate_against_circulars",
    "derive_response_fraction_table",
    "direction_quality",
    "energy_fluence_kev",
    "fluence_per_count_erg_cm2",
    "load_circulars",
    "load_response_fraction_table",
    "response_for_direction",
    "response_fraction",
]

PIVOT_KEV = 100.0
CIRCULARS_CSV = "spiacs_gcn_circulars.csv"
RESPONSE_FRACTION_CSV = "spiacs_response_fraction.csv"


@dataclass(frozen=True)
class CutoffPowerLaw:
    """Photon spectrum ``N(E) ∝ (E/100 keV)**alpha * exp(-E (2 + alpha) / Ep)``.

    ``ep_kev`` is the peak of ``E**2 N(E)``. Used for the short-GRB spectrum
    (alpha = -0.5, Ep = 600 keV) of the INTEGRAL LVK circulars.
    """

    alpha: float
    ep_kev: float
    name: str = "cutoff power law"

    def photons(self, energy_kev: np.ndarray | float) -> np.ndarray | float:
        """Photon spectrum shape at ``energy_kev`` (arbitrary normalisation, per keV)."""
        e0_kev = self.ep_kev / (2.0 + self.alpha)
        return (np.asarray(energy_kev) / PIVOT_KEV) ** self.alpha * np.exp(-np.asarray(energy_kev) / e0_kev)


@dataclass(frozen=True)
class Band:
    """Band et al. (1993) photon spectrum with ``E0 = Ep / (2 + alpha)``, pivot 100 keV.

    Used for the long-GRB spectrum (alpha = -1, beta = -2.5, Ep = 300 keV).
    """

    alpha: float
    beta: float
    ep_kev: float
    name: str = "Band"

    def photons(self, energy_kev: np.ndarray | float) -> np.ndarray | float:
        """Photon spectrum shape at ``energy_kev`` (arbitrary normalisation, per keV)."""
        energy_kev = np.asarray(energy_kev, dtype=float)
        e0_kev = self.ep_kev / (2.0 + self.alpha)
        break_kev = (self.alpha - self.beta) * e0_kev
        low = (energy_kev / PIVOT_KEV) ** self.alpha * np.exp(-energy_kev / e0_kev)
        high = (
            (break_kev / PIVOT_KEV) ** (self.alpha - self.beta)
            * math.exp(self.beta - self.alpha)
            * (energy_kev / PIVOT_KEV) ** self.beta
        )
        return np.where(energy_kev < break_kev, low, high)


SHORT_GRB_SPECTRUM = CutoffPowerLaw(alpha=-0.5, ep_kev=600.0, name="short GRB: cutoff power law alpha=-0.5 Ep=600 keV")
LONG_GRB_SPECTRUM = Band(alpha=-1.0, beta=-2.5, ep_kev=300.0, name="long GRB: Band alpha=-1 beta=-2.5 Ep=300 keV")

Spectrum = CutoffPowerLaw | Band


def energy_fluence_kev(spectrum: Spectrum, band_kev: tuple[float, float]) -> float:
    """Integral of ``E N(E) dE`` over ``band_kev`` for the spectrum's shape (keV units).

    Parameters
    ----------
    spectrum : CutoffPowerLaw or Band
    band_kev : (float, float)
        Lower and upper energy, keV.

    Returns
    -------
    float
        Energy integral in keV * (spectrum normalisation); only ratios are meaningful.
    """
    lo_kev, hi_kev = band_kev
    # Integrate in ln E: E N(E) dE = E**2 N(E) d(ln E), smooth and well scaled.
    def integrand(ln_e: float) -> float:
        energy_kev = math.exp(ln_e)
        return energy_kev * energy_kev * float(spectrum.photons(energy_kev))

    points = []
    if isinstance(spectrum, Band):
        break_kev = (spectrum.alpha - spectrum.beta) * spectrum.ep_kev / (2.0 + spectrum.alpha)
        if lo_kev < break_kev < hi_kev:
            points.append(math.log(break_kev))
    value, _ = quad(integrand, math.log(lo_kev), math.log(hi_kev), points=points or None, epsrel=1e-10, limit=200)
    return value


# --------------------------------------------------------------------------- data tables


def _data_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("followup").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))


def _float_or_none(text: str) -> float | None:
    return float(text) if text.strip() else None


@dataclass(frozen=True)
class CircularLimit:
    """One INTEGRAL SPI-ACS GCN Circular as published (``followup/data/spiacs_gcn_circulars.csv``).

    Limits are 75-2000 keV, 3 sigma; ``None`` where the circular gives no value.
    """

    gcn: int
    event: str
    t0_utc: str
    theta_deg: float
    fraction_of_optimal: float
    excess_variance: float
    short_fluence_1s_erg_cm2: float | None
    long_peak_flux_1s_erg_cm2_s: float | None
    long_peak_flux_8s_erg_cm2_s: float | None


def load_circulars() -> tuple[CircularLimit, ...]:
    """The circulars of ``followup/data/spiacs_gcn_circulars.csv`` (package data)."""
    return tuple(
        CircularLimit(
            gcn=int(row["gcn"]), event=row["event"], t0_utc=row["t0_utc"], theta_deg=float(row["theta_deg"]),
            fraction_of_optimal=float(row["fraction_of_optimal"]), excess_variance=float(row["excess_variance"]),
            short_fluence_1s_erg_cm2=_float_or_none(row["short_fluence_1s_erg_cm2"]),
            long_peak_flux_1s_erg_cm2_s=_float_or_none(row["long_peak_flux_1s_erg_cm2_s"]),
            long_peak_flux_8s_erg_cm2_s=_float_or_none(row["long_peak_flux_8s_erg_cm2_s"]),
        )
        for row in _data_rows(CIRCULARS_CSV)
    )


@dataclass(frozen=True)
class ResponseFractionRow:
    """One node of the fraction-of-optimal-response curve (see the CSV header)."""

    theta_deg: float
    fraction: float
    fraction_min: float
    fraction_max: float
    n: int
    gcn: tuple[int, ...]


def derive_response_fraction_table(
    circulars: Sequence[CircularLimit], bin_width_deg: float = 20.0
) -> tuple[ResponseFractionRow, ...]:
    """Fraction of optimal response against theta from the circulars' stated fractions.

    Circulars are grouped in bins ``[k w, (k+1) w)`` of theta (the last bin closed at
    180 deg); each non-empty bin gives one node at the bins' median theta with the median
    fraction, its range and the circulars it rests on.

    Parameters
    ----------
    circulars : sequence of CircularLimit
    bin_width_deg : float
        Bin width w, deg; 180 / w must be an integer.

    Returns
    -------
    tuple of ResponseFractionRow
        Ordered by theta; empty bins are left out.

    Raises
    ------
    ValueError
        If 180 / ``bin_width_deg`` is not an integer.
    """
    n_bins = 180.0 / bin_width_deg
    if abs(n_bins - round(n_bins)) > 1e-9:
        raise ValueError(f"bin width must divide 180 deg, got {bin_width_deg}")
    theta = np.array([c.theta_deg for c in circulars])
    fraction = np.array([c.fraction_of_optimal for c in circulars])
    index = np.minimum((theta // bin_width_deg).astype(int), int(round(n_bins)) - 1)
    rows = []
    for k in sorted(set(index.tolist())):
        in_bin = index == k
        rows.append(ResponseFractionRow(
            theta_deg=float(np.median(theta[in_bin])), fraction=float(np.median(fraction[in_bin])),
            fraction_min=float(fraction[in_bin].min()), fraction_max=float(fraction[in_bin].max()),
            n=int(in_bin.sum()), gcn=tuple(c.gcn for c, b in zip(circulars, in_bin) if b)))
    return tuple(rows)


@lru_cache(maxsize=1)
def load_response_fraction_table() -> tuple[ResponseFractionRow, ...]:
    """The curve of ``followup/data/spiacs_response_fraction.csv`` (package data)."""
    return tuple(
        ResponseFractionRow(
            theta_deg=float(row["theta_deg"]), fraction=float(row["fraction"]),
            fraction_min=float(row["fraction_min"]), fraction_max=float(row["fraction_max"]),
            n=int(row["n"]), gcn=tuple(int(g) for g in row["gcn"].split()),
        )
        for row in _data_rows(RESPONSE_FRACTION_CSV)
    )


def _check_theta(theta_deg: np.ndarray) -> None:
    if np.any(~np.isfinite(theta_deg)) or np.any(theta_deg < 0.0) or np.any(theta_deg > 180.0):
        raise ValueError(f"theta_deg must be within 0..180, got {theta_deg[(theta_deg < 0) | (theta_deg > 180)]}")


def response_fraction(theta_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of optimal SPI-ACS response at ``theta_deg`` from the pointing axis.

    Linear interpolation in the table of :func:`load_response_fraction_table`, held flat
    outside its theta range.

    Parameters
    ----------
    theta_deg : float or numpy.ndarray, shape (n,)
        Angle from the spacecraft pointing axis +X, degrees, 0..180.

    Returns
    -------
    fraction, fraction_min, fraction_max : numpy.ndarray, shape of ``theta_deg``
        Interpolated median fraction and the interpolated range of the circulars'
        fractions (their azimuthal scatter).

    Raises
    ------
    ValueError
        If any theta is outside 0..180 or not finite.
    """
    theta = np.asarray(theta_deg, dtype=float)
    _check_theta(theta)
    table = load_response_fraction_table()
    nodes = np.array([row.theta_deg for row in table])
    return tuple(np.interp(theta, nodes, np.array([getattr(row, name) for row in table]))
                 for name in ("fraction", "fraction_min", "fraction_max"))


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SpiAcsResponseModel:
    """The SPI-ACS count-to-fluence model: fitted factor, band, direction table, systematic.

    ``fluence_per_count_erg_cm2`` is K of the module docstring (75-1000 keV, optimal
    direction), the value :func:`calibrate_against_circulars` fits with
    ``reference_background_rate_cts_s``; the unit tests refit it from the bundled data.
    """

    fluence_per_count_erg_cm2: float = 1.38e-10
    calibration_band_kev: tuple[float, float] = (75.0, 1000.0)
    systematic_fraction: float = 0.20
    reference_background_rate_cts_s: float = 90716.0
    vigano_mereghetti_fluence_per_count_erg_cm2: float = 1.0e-10
    calibration_circulars: tuple[int, ...] = field(
        default_factory=lambda: tuple(c.gcn for c in load_circulars() if c.short_fluence_1s_erg_cm2 is not None))
    source: str = (
        "counts->fluence factor 1.38e-10 erg/cm2 per count (75-1000 keV, optimal direction) fitted to 16 "
        "INTEGRAL SPI-ACS GCN Circular upper limits (GCN 24381-33815; Vigano & Mereghetti 2009, "
        "arXiv:0912.5329, found ~1e-10 orthogonal to the pointing axis); direction dependence: the "
        "'fraction of optimal response' the circulars state (INTEGRAL response model, Savchenko et al. "
        "2017, A&A 603, A46), interpolated in the angle from the pointing axis"
    )
    systematic_note: str = (
        "20% (1 sigma): rms of ln(model/published) of the model's residuals against the circulars' limits, including the "
        "azimuthal dependence the model omits; within 30 deg of the pointing axis no circular samples the "
        "response and the limit is optimistic"
    )


@dataclass(frozen=True)
class DirectionalResponse:
    """Counts per unit fluence in ``band_kev`` for one direction and spectrum."""

    theta_deg: float
    phi_deg: float
    spectrum: str
    band_kev: tuple[float, float]
    counts_per_erg_cm2: float
    response_fraction: float
    response_fraction_range: tuple[float, float]
    systematic_fraction: float
    direction_quality: Literal["calibrated", "near-axis-optimistic"]

    def fluence_erg_cm2(self, counts: float) -> float:
        """Fluence in ``band_kev`` (erg/cm^2) that yields ``counts`` source counts."""
        return counts / self.counts_per_erg_cm2


def fluence_per_count_erg_cm2(
    spectrum: Spectrum, band_kev: tuple[float, float] = (75.0, 2000.0), model: SpiAcsResponseModel = SpiAcsResponseModel()
) -> float:
    """Fluence in ``band_kev`` (erg/cm^2) per ACS count for ``spectrum`` at the optimal direction.

    ``K * R``: K the fitted erg/cm^2 per count in the calibration band, R the ratio of the
    spectrum's energy integrals over ``band_kev`` and the calibration band. Divide by the
    fraction of optimal response (:func:`response_fraction`) for another direction.

    Raises
    ------
    ValueError
        If the band is not increasing and positive.
    """
    if not 0.0 < band_kev[0] < band_kev[1]:
        raise ValueError(f"energy band must be increasing and positive, got {band_kev}")
    return model.fluence_per_count_erg_cm2 * (
        energy_fluence_kev(spectrum, band_kev) / energy_fluence_kev(spectrum, model.calibration_band_kev)
    )


def direction_quality(theta_deg: float) -> str:
    """Label of the response's validity at ``theta_deg`` from the pointing axis (see module).

    Raises
    ------
    ValueError
        If ``theta_deg`` is outside 0..180.
    """
    _check_theta(np.asarray(theta_deg, dtype=float))
    return "near-axis-optimistic" if theta_deg < load_response_fraction_table()[0].theta_deg else "calibrated"


def response_for_direction(
    theta_deg: float,
    phi_deg: float,
    spectrum: Spectrum,
    band_kev: tuple[float, float] = (75.0, 2000.0),
    model: SpiAcsResponseModel = SpiAcsResponseModel(),
) -> DirectionalResponse:
    """SPI-ACS counts per unit fluence for a source direction and spectrum.

    Parameters
    ----------
    theta_deg : float
        Angle from the spacecraft pointing axis +X, degrees, 0..180.
    phi_deg : float
        Azimuth around +X from +Z towards +Y, degrees (recorded; the model has no
        azimuthal dependence, its scatter is in the systematic).
    spectrum : CutoffPowerLaw or Band
        Source photon spectrum shape.
    band_kev : (float, float)
        Band in which the fluence is expressed, keV (default 75-2000).
    model : SpiAcsResponseModel

    Returns
    -------
    DirectionalResponse
        ``counts_per_erg_cm2 = f(theta) / (K R)`` (see the module docstring).

    Raises
    ------
    ValueError
        If ``theta_deg`` is outside 0..180 or the band is empty.
    """
    fraction, lo, hi = (float(v) for v in response_fraction(theta_deg))
    fluence_per_count = fluence_per_count_erg_cm2(spectrum, band_kev, model)
    return DirectionalResponse(
        theta_deg=float(theta_deg),
        phi_deg=float(phi_deg),
        spectrum=spectrum.name,
        band_kev=(float(band_kev[0]), float(band_kev[1])),
        counts_per_erg_cm2=fraction / fluence_per_count,
        response_fraction=fraction,
        response_fraction_range=(lo, hi),
        systematic_fraction=model.systematic_fraction,
        direction_quality=direction_quality(theta_deg),
    )


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class CircularResidual:
    """Published against modelled limits for one circular (ratios are model / published)."""

    gcn: int
    event: str
    theta_deg: float
    stated_fraction: float
    model_fraction: float
    short_fluence_1s_erg_cm2: float
    short_fluence_1s_model_erg_cm2: float
    short_ratio_stated_fraction: float
    short_ratio: float
    long_1s_ratio: float | None
    long_8s_ratio: float | None


@dataclass(frozen=True)
class CalibrationFit:
    """Result of :func:`calibrate_against_circulars`."""

    fluence_per_count_erg_cm2: float
    calibration_band_kev: tuple[float, float]
    reference_background_rate_cts_s: float
    n_circulars: int
    rms_log_stated_fraction: float
    rms_log_model: float
    median_long_1s_ratio: float
    median_long_8s_ratio: float
    residuals: tuple[CircularResidual, ...]


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def calibrate_against_circulars(
    reference_background_rate_cts_s: float,
    model: SpiAcsResponseModel = SpiAcsResponseModel(),
    circulars: Sequence[CircularLimit] | None = None,
    n_sigma: float = 3.0,
    band_kev: tuple[float, float] = (75.0, 2000.0),
) -> CalibrationFit:
    """Fit K (erg/cm^2 per count, calibration band, optimal direction) to published limits.

    The circulars give limits, the direction's fraction of optimal response and the
    excess variance V, but neither their count limits nor their background rates. Each
    circular's 3-sigma count limit on a scale dt is therefore taken as
    ``n_sigma * sqrt(B dt V)`` with B = ``reference_background_rate_cts_s`` (the same
    definition as :func:`followup.excess.search_excess`, applied at our background), and
    K is the geometric mean over the circulars of
    ``F_short,1s * f_stated / (n_sigma sqrt(B V) R_short)``. Any difference between the
    circulars' backgrounds or count-limit definitions and ours is absorbed into K (K
    scales as B**-1/2) and shows in the residuals.

    Parameters
    ----------
    reference_background_rate_cts_s : float
        SPI-ACS background rate assumed for every circular, counts/s.
    model : SpiAcsResponseModel
        Supplies the calibration band.
    circulars : sequence of CircularLimit, optional
        Default: :func:`load_circulars`; those without a short-GRB limit are skipped.
    n_sigma : float
        Significance of the count limit.
    band_kev : (float, float)
        Band of the published limits, keV.

    Returns
    -------
    CalibrationFit
        K; rms of ln(model / published) for the short-GRB limits with the circulars'
        stated fractions (normalisation only) and with the tabulated f(theta) (full
        model); medians of model / published for the long-GRB 1 s and 8 s peak fluxes
        (full model, not fitted); one :class:`CircularResidual` per circular.

    Raises
    ------
    ValueError
        If fewer than 5 circulars carry a short-GRB limit or the rate is not positive.
    """
    if not reference_background_rate_cts_s > 0:
        raise ValueError(f"reference background rate must be positive, got {reference_background_rate_cts_s}")
    used = [c for c in (load_circulars() if circulars is None else circulars) if c.short_fluence_1s_erg_cm2]
    if len(used) < 5:
        raise ValueError(f"need at least 5 circulars with a short-GRB limit, got {len(used)}")
    ratio_short = energy_fluence_kev(SHORT_GRB_SPECTRUM, band_kev) / energy_fluence_kev(
        SHORT_GRB_SPECTRUM, model.calibration_band_kev)
    ratio_long = energy_fluence_kev(LONG_GRB_SPECTRUM, band_kev) / energy_fluence_kev(
        LONG_GRB_SPECTRUM, model.calibration_band_kev)

    def counts(c: CircularLimit, scale_s: float) -> float:
        return n_sigma * math.sqrt(reference_background_rate_cts_s * scale_s * c.excess_variance)

    log_k = np.array([math.log(c.short_fluence_1s_erg_cm2 * c.fraction_of_optimal / (counts(c, 1.0) * ratio_short))
                      for c in used])
    k = float(math.exp(log_k.mean()))
    model_fraction = response_fraction(np.array([c.theta_deg for c in used]))[0]
    rows = []
    for c, f_model in zip(used, model_fraction):
        short_model = counts(c, 1.0) * k * ratio_short / f_model
        long_1s = (counts(c, 1.0) * k * ratio_long / f_model / c.long_peak_flux_1s_erg_cm2_s
                   if c.long_peak_flux_1s_erg_cm2_s else None)
        long_8s = (counts(c, 8.0) * k * ratio_long / f_model / 8.0 / c.long_peak_flux_8s_erg_cm2_s
                   if c.long_peak_flux_8s_erg_cm2_s else None)
        rows.append(CircularResidual(
            gcn=c.gcn, event=c.event, theta_deg=c.theta_deg, stated_fraction=c.fraction_of_optimal,
            model_fraction=float(f_model), short_fluence_1s_erg_cm2=c.short_fluence_1s_erg_cm2,
            short_fluence_1s_model_erg_cm2=float(short_model),
            short_ratio_stated_fraction=float(short_model * f_model / c.fraction_of_optimal
                                              / c.short_fluence_1s_erg_cm2),
            short_ratio=float(short_model / c.short_fluence_1s_erg_cm2),
            long_1s_ratio=None if long_1s is None else float(long_1s),
            long_8s_ratio=None if long_8s is None else float(long_8s)))
    return CalibrationFit(
        fluence_per_count_erg_cm2=k,
        calibration_band_kev=model.calibration_band_kev,
        reference_background_rate_cts_s=float(reference_background_rate_cts_s),
        n_circulars=len(rows),
        rms_log_stated_fraction=_rms(np.log([r.short_ratio_stated_fraction for r in rows])),
        rms_log_model=_rms(np.log([r.short_ratio for r in rows])),
        median_long_1s_ratio=float(np.median([r.long_1s_ratio for r in rows if r.long_1s_ratio])),
        median_long_8s_ratio=float(np.median([r.long_8s_ratio for r in rows if r.long_8s_ratio])),
        residuals=tuple(rows),
    )


def _print_calibration() -> None:  # pragma: no cover - documentation helper
    model = SpiAcsResponseModel()
    fit = calibrate_against_circulars(model.reference_background_rate_cts_s, model)
    print(f"K = {fit.fluence_per_count_erg_cm2:.4g} erg/cm2 per count ({fit.calibration_band_kev[0]:g}-"
          f"{fit.calibration_band_kev[1]:g} keV, optimal direction), B = {fit.reference_background_rate_cts_s:g} "
          f"counts/s, {fit.n_circulars} circulars")
    print(f"rms ln(model/published), short 1 s: stated fraction {fit.rms_log_stated_fraction:.3f}, "
          f"tabulated f(theta) {fit.rms_log_model:.3f}; median long 1 s {fit.median_long_1s_ratio:.3f}, "
          f"long 8 s {fit.median_long_8s_ratio:.3f}")
    print("| GCN | event | theta (deg) | f stated | f model | short 1 s published | model | model/published "
          "(stated f) | model/published | long 1 s model/published | long 8 s model/published |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in fit.residuals:
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {r.gcn} | {r.event} | {r.theta_deg:g} | {r.stated_fraction:.2f} | {r.model_fraction:.2f} | "
              f"{r.short_fluence_1s_erg_cm2:.2g} | {r.short_fluence_1s_model_erg_cm2:.2g} | "
              f"{r.short_ratio_stated_fraction:.2f} | {r.short_ratio:.2f} | {fmt(r.long_1s_ratio)} | "
              f"{fmt(r.long_8s_ratio)} |")


if __name__ == "__main__":  # pragma: no cover
    _print_calibration()
