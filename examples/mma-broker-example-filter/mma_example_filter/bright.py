"""``bright-ztf``: bright, real, positive ZTF candidates that are no known solar-system object.

A small but real filter, written as a user of mma-broker writes one
(``docs/writing-a-filter.md`` in the mma-broker repository walks through it). It reads
only the alert's own candidate (``Event.properties``, the ZTF ``candidate`` record
normalized by mma-broker), so its decisions can be recomputed from the Avro files with
``fastavro`` alone. An alert is accepted when, in this order,

1. the candidate comes from a positive subtraction (``isdiffpos`` ``t`` or ``1``:
   science minus reference brightened), unless ``require_positive_subtraction`` is off;
2. ``magpsf <= max_magpsf_mag`` (PSF-fit magnitude of the difference image, mag);
3. ``rb >= min_rb`` (random-forest RealBogus score, 0 to 1) and, when ``min_drb`` is
   set, ``drb >= min_drb`` (deep-learning RealBogus, Duev et al. 2019, MNRAS 489, 3582);
4. no known solar-system object lies within ``min_sso_dist_arcsec`` (``ssdistnr``, the
   distance to the nearest MPC object, arcsec; ZTF gives ``-999`` or null when there is
   none within 30 arcsec).

The field meanings are those of the ZTF alert schema (``candidate.avsc``, ZTF Avro
alert schema 3.3/4.x, https://zwickytransientfacility.github.io/ztf-avro-alert/); the
solar-system cut is AMPEL's DecentFilter ``min_sso_dist`` (default 20 arcsec).
"""

from __future__ import annotations

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult


class BrightZtfConfig(FilterConfig):
    """Parameters of ``bright-ztf`` (units in the names)."""

    max_magpsf_mag: float = Field(19.0, ge=5.0, le=30.0)
    """Faintest PSF-fit magnitude accepted (ZTF ``magpsf``, mag)."""
    min_rb: float = Field(0.65, ge=0.0, le=1.0)
    """Lowest random-forest RealBogus score accepted (ZTF ``rb``, 0 to 1)."""
    min_drb: float | None = Field(None, ge=0.0, le=1.0)
    """Lowest deep-learning RealBogus score accepted (ZTF ``drb``, 0 to 1); None: not used."""
    min_sso_dist_arcsec: float = Field(20.0, ge=0.0, le=30.0)
    """A known solar-system object closer than this rejects the alert (ZTF ``ssdistnr``, arcsec)."""
    require_positive_subtraction: bool = True
    """Reject candidates from a negative subtraction (ZTF ``isdiffpos`` ``f`` or ``0``)."""


def _number(value: object) -> float | None:
    """A finite float, or None (mma-broker turns NaN into null; -999 means 'none' in ZTF)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


class BrightZtf(Filter[BrightZtfConfig]):
    """Bright, real, positive ZTF candidates that are no known solar-system object."""

    name = "bright-ztf"
    version = "1"
    sources = frozenset({"ztf"})

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one ZTF alert (the cuts of the module docstring, in order).

        Parameters
        ----------
        alert : filters.api.FilterInput
            A ZTF Event (the engine gives this filter no other source).

        Returns
        -------
        filters.api.FilterResult
            Rejection reasons: ``negative_subtraction``, ``no_magnitude``, ``too_faint``,
            ``rb_below_min``, ``drb_below_min``, ``known_solar_system_object``;
            acceptance: ``bright_candidate`` tagged ``bright``.
        """
        c = self.config
        p = alert.event.properties
        if c.require_positive_subtraction and p.get("isdiffpos") is not True:
            return FilterResult.reject("negative_subtraction")
        mag = _number(p.get("magpsf"))
        if mag is None:
            return FilterResult.reject("no_magnitude")
        if mag > c.max_magpsf_mag:
            return FilterResult.reject("too_faint", detail=f"magpsf {mag:.2f} > {c.max_magpsf_mag:g} mag")
        rb = _number(p.get("rb"))
        if rb is None or rb < c.min_rb:
            return FilterResult.reject("rb_below_min", detail=f"rb {rb if rb is None else round(rb, 3)} < {c.min_rb:g}")
        if c.min_drb is not None:
            drb = _number(p.get("drb"))
            if drb is None or drb < c.min_drb:
                return FilterResult.reject("drb_below_min",
                                           detail=f"drb {drb if drb is None else round(drb, 3)} < {c.min_drb:g}")
        sso = _number(p.get("ssdistnr"))
        if sso is not None and 0.0 <= sso < c.min_sso_dist_arcsec:
            name = p.get("ssnamenr")
            return FilterResult.reject("known_solar_system_object",
                                       detail=f"{str(name)[:40] if name else 'an MPC object'} at {sso:.1f} arcsec")
        return FilterResult.accept("bright_candidate", detail=f"magpsf {mag:.2f} mag, rb {rb:.2f}", tags=("bright",))
