"""Was the event in the IBIS field of view at T0?

IBIS (Ubertini et al. 2003, A&A 411, L131) is a coded-mask telescope whose mask is
larger than its detector: sources within the fully coded field of view (FCFOV, 9° × 9°)
cast the whole mask pattern on the detector; the coded fraction then falls off in the
partially coded field of view (PCFOV) and reaches zero at 29° × 29° (the "zero response"
field; the half-coded field is 19° × 19°). The fields are squares centred on the
pointing (spacecraft X) axis with sides along the spacecraft Y and Z axes.

Geometry. A direction with spacecraft-frame components (cx, cy, cz), cx > 0, has
tangent-plane offsets ``ty = cy/cx`` and ``tz = cz/cx``: the shift of the mask shadow
on the flat detector is proportional to them. For a cyclic mask the coded area along
one axis decreases linearly with the shadow shift, so the coding fraction is
``f = f1(ty) · f1(tz)`` with ``f1(t) = clip((tan 14.5° − |t|) / (tan 14.5° − tan 4.5°), 0, 1)``.
This reproduces the three published squares: f = 1 inside 9° × 9°, f = 0 outside
29° × 29°, and the one-axis f1 = 0.5 at ±9.6°, i.e. the 19° × 19° half-coded field.

Sky maps. The probability in a field is Σ probdensity × pixel area over the pixels
whose centre is inside. Pixels of a multi-order map that straddle a field edge are
split into their nested children (same density) down to ``refine_order`` (default 9,
0.11° pixels) before the sum, so coarse pixels near the edges do not bias it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import astropy_healpix as ah
import numpy as np

from followup.attitude import Pointing, spacecraft_components
from followup.availability import NoData

#: Full side of the fully coded field (FCFOV), deg — Ubertini et al. 2003, A&A 411, L131.
IBIS_FCFOV_SIDE_DEG = 9.0
#: Full side of the half-coded field, deg — same reference.
IBIS_HALF_CODED_SIDE_DEG = 19.0
#: Full side of the partially coded field to zero response, deg — same reference.
IBIS_ZERO_RESPONSE_SIDE_DEG = 29.0

#: Below this probability in the coded field the event counts as not visible (ISGRI
#: products are not requested): a 0.1 % chance is not worth an ISGRI analysis.
DEFAULT_MIN_PROB = 1e-3

_T_FULL = math.tan(math.radians(IBIS_FCFOV_SIDE_DEG / 2))
_T_ZERO = math.tan(math.radians(IBIS_ZERO_RESPONSE_SIDE_DEG / 2))


@dataclass(frozen=True)
class IbisVisibility:
    """Probability that the event was in the IBIS field of view.

    Attributes
    ----------
    fully_coded_prob : float
        Probability inside the fully coded field (9° × 9°), 0..1.
    partially_coded_prob : float
        Probability inside the whole coded field (to zero response, 29° × 29°); it
        includes the fully coded part, 0..1.
    coding_weighted_prob : float
        Σ probability × coding fraction: the expected fraction of the on-axis
        sensitivity, 0..1.
    method : str
        ``"point"``, ``"error_circle"`` or ``"healpix"``.
    off_axis_deg : float or None
        Angle of the best position from the pointing axis, deg (None for sky maps).
    pointing_time : str
        ISO UTC time of the attitude used.
    """

    fully_coded_prob: float
    partially_coded_prob: float
    coding_weighted_prob: float
    method: str
    off_axis_deg: float | None
    pointing_time: str

    def visible(self, min_prob: float = DEFAULT_MIN_PROB) -> bool:
        """True if the probability in the coded field exceeds ``min_prob``."""
        return self.partially_coded_prob > min_prob

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


def coding_fraction(cx: np.ndarray, cy: np.ndarray, cz: np.ndarray) -> np.ndarray:
    """IBIS coded fraction (0..1) for spacecraft-frame unit-vector components.

    Parameters
    ----------
    cx, cy, cz : numpy.ndarray, shape (n,)
        Components along the spacecraft X (pointing), Y and Z axes.

    Returns
    -------
    numpy.ndarray, shape (n,)
        1 in the fully coded field, falling linearly with the tangent offset along each
        axis, 0 beyond the 29° × 29° zero-response square or behind the telescope.
    """
    cx = np.asarray(cx, dtype=float)
    front = cx > 0
    safe = np.where(front, cx, 1.0)
    ty = np.abs(np.asarray(cy) / safe)
    tz = np.abs(np.asarray(cz) / safe)
    f1y = np.clip((_T_ZERO - ty) / (_T_ZERO - _T_FULL), 0.0, 1.0)
    f1z = np.clip((_T_ZERO - tz) / (_T_ZERO - _T_FULL), 0.0, 1.0)
    return np.where(front, f1y * f1z, 0.0)


def _fields(cx, cy, cz) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in fully coded, in partially coded, coding fraction) for component arrays."""
    cx = np.asarray(cx, dtype=float)
    front = cx > 0
    safe = np.where(front, cx, 1.0)
    ty, tz = np.abs(np.asarray(cy) / safe), np.abs(np.asarray(cz) / safe)
    full = front & (ty <= _T_FULL) & (tz <= _T_FULL)
    partial = front & (ty < _T_ZERO) & (tz < _T_ZERO)
    return full, partial, coding_fraction(cx, cy, cz)


def _offset_directions(ra_deg: float, dec_deg: float, r_deg: np.ndarray, pa_deg: np.ndarray):
    """RA/Dec (deg) at angular distance r and position angle pa from (ra, dec)."""
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    r, pa = np.radians(r_deg), np.radians(pa_deg)
    sin_dec = math.sin(dec) * np.cos(r) + math.cos(dec) * np.sin(r) * np.cos(pa)
    dec2 = np.arcsin(np.clip(sin_dec, -1, 1))
    ra2 = ra + np.arctan2(np.sin(pa) * np.sin(r) * math.cos(dec), np.cos(r) - math.sin(dec) * sin_dec)
    return np.degrees(ra2) % 360.0, np.degrees(dec2)


def point_visibility(
    pointing: Pointing,
    ra_deg: float,
    dec_deg: float,
    error_radius_deg: float | None = None,
    containment: float | None = None,
) -> IbisVisibility:
    """IBIS visibility of a point localization.

    Without an error radius the answer is 0 or 1. With one, the position is taken as
    a circular 2-D Gaussian on the sphere whose circle of ``error_radius_deg`` holds
    ``containment`` (default 0.68, i.e. the radius is close to 1σ): σ = R /
    sqrt(−2 ln(1 − containment)); the probabilities are its integrals over the fields
    (polar quadrature to 4σ, 64 × 128 nodes). ``containment >= 0.999`` is read as a
    uniform disk of radius R.

    Parameters
    ----------
    pointing : Pointing
        Spacecraft attitude at T0.
    ra_deg, dec_deg : float
        Best position, deg (J2000).
    error_radius_deg : float, optional
        Radius of the error circle, deg.
    containment : float, optional
        Probability inside the error circle, 0..1.
    """
    cx, cy, cz = spacecraft_components(pointing, ra_deg, dec_deg)
    off_axis = float(np.degrees(np.arccos(np.clip(cx, -1, 1))))
    if not error_radius_deg or error_radius_deg <= 0:
        full, partial, frac = _fields(np.atleast_1d(cx), np.atleast_1d(cy), np.atleast_1d(cz))
        return IbisVisibility(float(full[0]), float(partial[0]), float(frac[0]), "point", off_axis, pointing.time)
    c = 0.68 if containment is None else float(containment)
    n_r, n_pa = 64, 128
    if c >= 0.999:
        r_max, sigma = float(error_radius_deg), None
    else:
        sigma = error_radius_deg / math.sqrt(-2.0 * math.log(1.0 - c))
        r_max = 4.0 * sigma
    r_max = min(r_max, 180.0)
    r = (np.arange(n_r) + 0.5) * (r_max / n_r)
    pa = (np.arange(n_pa) + 0.5) * (360.0 / n_pa)
    weight_r = np.sin(np.radians(r))
    if sigma is not None:
        weight_r = weight_r * np.exp(-0.5 * (r / sigma) ** 2)
    rr, pp = np.meshgrid(r, pa, indexing="ij")
    w = np.broadcast_to(weight_r[:, None], rr.shape).ravel()
    w = w / w.sum()
    ra_s, dec_s = _offset_directions(ra_deg, dec_deg, rr.ravel(), pp.ravel())
    full, partial, frac = _fields(*spacecraft_components(pointing, ra_s, dec_s))
    return IbisVisibility(
        float(np.sum(w * full)), float(np.sum(w * partial)), float(np.sum(w * frac)),
        "error_circle", off_axis, pointing.time,
    )


def skymap_visibility(
    pointing: Pointing, uniq: np.ndarray, probdensity: np.ndarray, refine_order: int = 9
) -> IbisVisibility:
    """IBIS visibility of a multi-order HEALPix sky map.

    Parameters
    ----------
    pointing : Pointing
        Spacecraft attitude at T0.
    uniq : numpy.ndarray of int, shape (n,)
        NUNIQ pixel indices (``broker.skymap.read_multiorder``).
    probdensity : numpy.ndarray, shape (n,)
        Probability density, sr⁻¹.
    refine_order : int
        HEALPix order down to which pixels crossing a field edge are split.

    Returns
    -------
    IbisVisibility
        With ``method="healpix"``; probabilities are sums of density × area, sr.
    """
    level, ipix = ah.uniq_to_level_ipix(np.asarray(uniq, dtype=np.int64))
    level = np.asarray(level, dtype=np.int64)
    ipix = np.asarray(ipix, dtype=np.int64)
    dens = np.asarray(probdensity, dtype=float)
    sums = np.zeros(3)
    edges = (IBIS_FCFOV_SIDE_DEG / 2, IBIS_ZERO_RESPONSE_SIDE_DEG / 2)
    while level.size:
        nside = 2**level
        lon, lat = ah.healpix_to_lonlat(ipix, nside, order="nested")
        area_sr = 4 * np.pi / (12.0 * nside.astype(float) ** 2)
        cx, cy, cz = spacecraft_components(pointing, lon.to_value("deg"), lat.to_value("deg"))
        # square "radius": the larger of the two axis angles (180° behind the telescope)
        square_deg = np.where(
            cx > 0,
            np.degrees(np.maximum(np.abs(np.arctan2(cy, cx)), np.abs(np.arctan2(cz, cx)))),
            180.0,
        )
        pix_radius_deg = np.degrees(np.sqrt(area_sr))
        near = np.zeros(level.shape, dtype=bool)
        for edge in edges:
            near |= np.abs(square_deg - edge) < pix_radius_deg
        near &= level < refine_order
        keep = ~near
        full, partial, frac = _fields(cx[keep], cy[keep], cz[keep])
        p = dens[keep] * area_sr[keep]
        sums += [np.sum(p * full), np.sum(p * partial), np.sum(p * frac)]
        # split straddling pixels into their four nested children
        level = np.repeat(level[near] + 1, 4)
        ipix = (4 * ipix[near][:, None] + np.arange(4)).ravel()
        dens = np.repeat(dens[near], 4)
    return IbisVisibility(float(sums[0]), float(sums[1]), float(sums[2]), "healpix", None, pointing.time)


def ibis_visibility(pointing: Pointing, localization: Any) -> IbisVisibility:
    """IBIS visibility of an event localization at T0.

    Parameters
    ----------
    pointing : Pointing
        Spacecraft attitude at T0 (:func:`followup.attitude.pointing_at`).
    localization : object
        Either a point localization (anything with ``ra`` and ``dec`` in deg and
        optionally ``error_radius`` in deg and ``containment``, e.g.
        ``broker.event.PointLocalization``), or a sky map (anything with ``uniq`` and
        ``probdensity`` arrays, or a ``(uniq, probdensity)`` tuple).

    Raises
    ------
    TypeError
        If the localization is neither.
    """
    if isinstance(localization, tuple) and len(localization) >= 2:
        return skymap_visibility(pointing, localization[0], localization[1])
    if hasattr(localization, "uniq") and hasattr(localization, "probdensity"):
        return skymap_visibility(pointing, localization.uniq, localization.probdensity)
    if hasattr(localization, "ra") and hasattr(localization, "dec"):
        return point_visibility(
            pointing, float(localization.ra), float(localization.dec),
            getattr(localization, "error_radius", None), getattr(localization, "containment", None),
        )
    raise TypeError(f"ibis_visibility: unsupported localization {type(localization).__name__}")


def not_visible(visibility: IbisVisibility, min_prob: float = DEFAULT_MIN_PROB) -> NoData | None:
    """``NoData(kind="not_visible")`` if the coded-field probability is ≤ ``min_prob``."""
    if visibility.visible(min_prob):
        return None
    return NoData(
        f"event outside the IBIS field of view at {visibility.pointing_time} "
        f"(probability in the 29°×29° coded field {visibility.partially_coded_prob:.3g} <= {min_prob:g})",
        "not_visible",
    )
