"""SPI-ACS response: counts per unit fluence for a spectrum and a source direction.

Source of the response (cited in every result and report)
--------------------------------------------------------
D. Viganò and S. Mereghetti, "Calibration of the INTEGRAL SPI Anti-Coincidence
Shield with Gamma Ray Bursts observations", arXiv:0912.5329 (2009). From GRBs with
known positions and spectra measured by other missions they found that, for a
typical GRB spectrum, **one ACS count corresponds on average to ~1e-10 erg/cm^2 in
75 keV - 1 MeV for directions orthogonal to the spacecraft pointing axis**, broadly
consistent with the Monte Carlo effective area, which however appears to
*overestimate* the ACS sensitivity for directions close to the pointing axis.

What this module does with it, and what it does not pretend
-----------------------------------------------------------
* Counts -> 75-1000 keV fluence uses the published mean factor, 1e-10 erg/cm^2/count.
* Counts -> fluence in another band (75-2000 keV for the limits) multiplies by the
  ratio of the spectrum's energy integrals over the two bands (numerical integration,
  :func:`energy_fluence_kev` with scipy ``quad``). The calibration factor is taken
  as independent of spectral hardness inside 75-1000 keV.
* Direction: no published, machine-readable angular response table of the ACS was
  available to us (the INTEGRAL team's response maps are served by their online
  tools), so the factor is the same for every direction, and each direction is
  labelled: ``"calibrated"`` for 60 deg <= theta <= 120 deg from the pointing axis +X
  (the orthogonal band of the calibration); ``"extrapolated"`` for 30-60 deg and
  120-180 deg; ``"near-axis-optimistic"`` for theta < 30 deg, where the ACS is less
  sensitive than the model and the limit is therefore optimistic (too low). The
  azimuth phi is accepted and recorded; the model does not depend on it.
* Systematic uncertainty: 30 % (1 sigma) in the calibrated band. This is an adopted
  figure, of the order of the burst-to-burst scatter of the conversion factor in the
  paper, not a number fitted here; outside the calibrated band the uncertainty is
  larger and not quantified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.integrate import quad

__all__ = [
    "Band",
    "CutoffPowerLaw",
    "DirectionalResponse",
    "LONG_GRB_SPECTRUM",
    "SHORT_GRB_SPECTRUM",
    "SpiAcsResponseModel",
    "direction_quality",
    "energy_fluence_kev",
    "fluence_per_count_erg_cm2",
    "response_for_direction",
]

PIVOT_KEV = 100.0


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


@dataclass(frozen=True)
class SpiAcsResponseModel:
    """The published SPI-ACS count-to-fluence calibration and its stated limits."""

    fluence_per_count_erg_cm2: float = 1.0e-10
    calibration_band_kev: tuple[float, float] = (75.0, 1000.0)
    systematic_fraction: float = 0.30
    calibrated_theta_deg: tuple[float, float] = (60.0, 120.0)
    near_axis_theta_deg: float = 30.0
    source: str = (
        "D. Vigano & S. Mereghetti 2009, 'Calibration of the INTEGRAL SPI Anti-Coincidence Shield "
        "with Gamma Ray Bursts observations', arXiv:0912.5329: 1 ACS count ~ 1e-10 erg/cm2 (75-1000 keV) "
        "for directions orthogonal to the pointing axis"
    )
    systematic_note: str = (
        "30% (1 sigma, adopted) for 60-120 deg from the pointing axis; larger and unquantified elsewhere; "
        "within 30 deg of the axis the limit is optimistic"
    )


@dataclass(frozen=True)
class DirectionalResponse:
    """Counts per unit fluence in ``band_kev`` for one direction and spectrum."""

    theta_deg: float
    phi_deg: float
    spectrum: str
    band_kev: tuple[float, float]
    counts_per_erg_cm2: float
    systematic_fraction: float
    direction_quality: Literal["calibrated", "extrapolated", "near-axis-optimistic"]

    def fluence_erg_cm2(self, counts: float) -> float:
        """Fluence in ``band_kev`` (erg/cm^2) that yields ``counts`` source counts."""
        return counts / self.counts_per_erg_cm2


def fluence_per_count_erg_cm2(
    spectrum: Spectrum, band_kev: tuple[float, float] = (75.0, 2000.0), model: SpiAcsResponseModel = SpiAcsResponseModel()
) -> float:
    """Fluence in ``band_kev`` (erg/cm^2) per ACS count for ``spectrum``, any direction.

    ``C * F_band / F_cal``: C is the published erg/cm^2 per count in the calibration
    band (Viganò & Mereghetti 2009), F the spectrum's energy integrals over the bands.
    """
    return model.fluence_per_count_erg_cm2 * (
        energy_fluence_kev(spectrum, band_kev) / energy_fluence_kev(spectrum, model.calibration_band_kev)
    )


def direction_quality(theta_deg: float, model: SpiAcsResponseModel = SpiAcsResponseModel()) -> str:
    """Label of the calibration's validity at ``theta_deg`` from the pointing axis (see module).

    Raises
    ------
    ValueError
        If ``theta_deg`` is outside 0..180.
    """
    if not 0.0 <= theta_deg <= 180.0:
        raise ValueError(f"theta_deg must be within 0..180, got {theta_deg}")
    lo_deg, hi_deg = model.calibrated_theta_deg
    if theta_deg < model.near_axis_theta_deg:
        return "near-axis-optimistic"
    if lo_deg <= theta_deg <= hi_deg:
        return "calibrated"
    return "extrapolated"


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
        Azimuth around +X from +Z towards +Y, degrees (recorded; no dependence, see module).
    spectrum : CutoffPowerLaw or Band
        Source photon spectrum shape.
    band_kev : (float, float)
        Band in which the fluence is expressed, keV (default 75-2000).
    model : SpiAcsResponseModel
        Calibration (Viganò & Mereghetti 2009) and its limits.

    Returns
    -------
    DirectionalResponse
        ``counts_per_erg_cm2`` = 1 / (C * F_band / F_cal), with C the published
        erg/cm^2 per count in the calibration band and F the spectrum's energy
        integrals over the two bands.

    Raises
    ------
    ValueError
        If ``theta_deg`` is outside 0..180 or the band is empty.
    """
    if not 0.0 < band_kev[0] < band_kev[1]:
        raise ValueError(f"energy band must be increasing and positive, got {band_kev}")
    quality = direction_quality(theta_deg, model)
    fluence_per_count = fluence_per_count_erg_cm2(spectrum, band_kev, model)
    return DirectionalResponse(
        theta_deg=float(theta_deg),
        phi_deg=float(phi_deg),
        spectrum=spectrum.name,
        band_kev=(float(band_kev[0]), float(band_kev[1])),
        counts_per_erg_cm2=1.0 / fluence_per_count,
        systematic_fraction=model.systematic_fraction,
        direction_quality=quality,
    )
