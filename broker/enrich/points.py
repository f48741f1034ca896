"""Cross-match a point localization (position and error circle) with catalog sources.

A catalog source matches when its separation from the alert position is within the
combined error ``R = sqrt(r_alert² + r_source(φ)²)``, both radii taken at the same
containment: the alert's error circle and the source's error region (a circle, or an
ellipse with semi-axes ``a``, ``b`` and position angle ``PA``, as the 4FGL catalog's
95 % ``Conf_95_SemiMajor/SemiMinor/PosAng``), whose radius in the direction ``φ`` of
the alert seen from the source is ``a b / sqrt((b cos θ)² + (a sin θ)²)``, ``θ = φ -
PA``. Radii at another containment are rescaled as for a circular 2D Gaussian
(Rayleigh): ``r_c = σ sqrt(-2 ln(1 - c))`` (e.g. Abdollahi et al. 2020, ApJS 247, 33,
§3.1 for the 4FGL ellipses; the same quadrature sum as the Fermi-LAT association
procedure). An alert radius of unstated containment is taken at the match level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.event import PointLocalization


def rayleigh_factor(containment: float) -> float:
    """``sqrt(-2 ln(1 - c))``: the radius of containment ``c`` in units of σ (2D Gaussian).

    Raises
    ------
    ValueError
        Unless ``0 < containment < 1``.
    """
    if not 0 < containment < 1:
        raise ValueError(f"containment = {containment!r} must be in (0, 1)")
    return math.sqrt(-2.0 * math.log1p(-containment))


@dataclass(frozen=True)
class SourceErrors:
    """Catalog position errors: circles (``minor`` None) or ellipses.

    Attributes
    ----------
    major_deg : numpy.ndarray, shape (m,)
        Radius or semi-major axis, deg (NaN: no error known, taken as 0).
    minor_deg : numpy.ndarray, shape (m,) or None
        Semi-minor axis, deg; None for circles.
    pa_deg : numpy.ndarray, shape (m,) or None
        Position angle of the major axis, deg east of north.
    containment : float
        Probability inside the stated region (0.95 for the 4FGL 95 % ellipses).
    """

    major_deg: np.ndarray
    minor_deg: np.ndarray | None = None
    pa_deg: np.ndarray | None = None
    containment: float = 0.68


@dataclass(frozen=True)
class PointMatch:
    """The catalog sources inside the combined error of a point localization.

    Attributes
    ----------
    rows : numpy.ndarray, shape (k,), int
        Catalog rows (0-based) that match, nearest first.
    separation_deg : numpy.ndarray, shape (k,)
        Their angular separations from the alert position, deg.
    radius_deg : numpy.ndarray, shape (k,)
        Combined error radius towards each, deg, at ``containment``.
    containment : float
        The containment of the combined radius.
    nearest_row : int or None
        The catalog's nearest source to the alert position, matched or not.
    nearest_separation_deg : float or None
    """

    rows: np.ndarray
    separation_deg: np.ndarray
    radius_deg: np.ndarray
    containment: float
    nearest_row: int | None
    nearest_separation_deg: float | None

    def to_json_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per matched source, nearest first."""
        return [{"row": int(r), "separation_deg": float(s), "radius_deg": float(x),
                 "normalized_separation": float(s / x) if x > 0 else None, "nearest": i == 0}
                for i, (r, s, x) in enumerate(zip(self.rows, self.separation_deg, self.radius_deg))]


def crossmatch_point(point: PointLocalization, ra_deg, dec_deg, errors: SourceErrors | None = None,
                     containment: float = 0.9) -> PointMatch:
    """Catalog sources within the combined error of an alert position.

    Parameters
    ----------
    point : broker.event.PointLocalization
        Alert position (deg) and error circle; ``error_radius`` None counts as 0,
        ``containment`` None as equal to ``containment`` below.
    ra_deg, dec_deg : array_like, shape (m,)
        Catalog positions, deg; rows with non-finite values never match.
    errors : SourceErrors, optional
        Catalog position errors; None: points without error.
    containment : float
        Containment at which the combined radius is formed, in (0, 1).

    Returns
    -------
    PointMatch

    Raises
    ------
    ValueError
        For a containment outside (0, 1) or arrays of unequal length.
    """
    from astropy.coordinates import angular_separation, position_angle

    k = rayleigh_factor(containment)
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64).ravel())
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64).ravel())
    if ra.shape != dec.shape:
        raise ValueError(f"{ra.size} right ascensions for {dec.size} declinations")
    ra0, dec0 = math.radians(point.ra), math.radians(point.dec)
    sep = np.degrees(np.asarray(angular_separation(ra, dec, ra0, dec0)))
    sep[~(np.isfinite(ra) & np.isfinite(dec))] = np.nan
    alert_r = point.error_radius or 0.0
    if point.containment is not None and 0 < point.containment < 1 and alert_r > 0:
        alert_r *= k / rayleigh_factor(point.containment)
    if errors is None:
        src_r = np.zeros_like(sep)
    else:
        scale = k / rayleigh_factor(errors.containment)
        a = np.nan_to_num(np.asarray(errors.major_deg, dtype=np.float64), nan=0.0) * scale
        if errors.minor_deg is None:
            src_r = a
        else:
            b = np.nan_to_num(np.asarray(errors.minor_deg, dtype=np.float64), nan=0.0) * scale
            pa = np.radians(np.nan_to_num(np.asarray(errors.pa_deg, dtype=np.float64), nan=0.0))
            phi = np.asarray(position_angle(ra, dec, ra0, dec0))  # towards the alert, east of north
            theta = phi - pa
            with np.errstate(invalid="ignore", divide="ignore"):
                src_r = a * b / np.hypot(b * np.cos(theta), a * np.sin(theta))
            src_r = np.where(np.isfinite(src_r), src_r, np.maximum(a, b))
    radius = np.hypot(alert_r, src_r)
    inside = np.flatnonzero(sep <= radius)
    inside = inside[np.argsort(sep[inside], kind="stable")]
    finite = np.flatnonzero(np.isfinite(sep))
    nearest = int(finite[np.argmin(sep[finite])]) if finite.size else None
    return PointMatch(rows=inside, separation_deg=sep[inside], radius_deg=radius[inside], containment=containment,
                      nearest_row=nearest, nearest_separation_deg=float(sep[nearest]) if nearest is not None else None)
