"""Settings of the coincidence searches and RAVEN's published constants (no numpy).

Kept apart from :mod:`broker.enrich.coinc` (which re-exports every name here) so
that the ``[enrich]`` settings section, loaded each time the broker's settings are
built (``mma-broker inspect`` included), imports pydantic only. The constants and
their sources are described in :mod:`broker.enrich.coinc`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

YEAR_S = 365.0 * 86400.0
"""Seconds in the year of the rates below (ligo-raven and gwcelery use 365 days)."""
RAVEN_GRB_RATE_PER_YR = 310.0
"""ligo-raven 3.3 ``coinc_far`` default ``gcn_rate`` (search ``GRB``): Fermi 236 + Swift
65 + INTEGRAL ~5 + AGILE-MCAL ~5 GRBs per year."""
RAVEN_SUBGRB_RATE_PER_YR = 375.0
"""ligo-raven 3.3 rate for its ``SubGRB`` search: ``gcn_rate`` + 65 / yr subthreshold."""
GWCELERY_GRB_RATE_PER_YR = 305.0
"""gwcelery's ``raven_ext_rates['GRB']`` (the rate LVK's production passes as ``em_rate``)."""
CBC_WINDOW_S = (-1.0, 5.0)
"""GRB time window around a CBC merger, ``t_ext − t_gw`` in s (gwcelery ``GRB_CBC``)."""
BURST_WINDOW_S = (-60.0, 600.0)
"""GRB time window around an unmodelled burst, ``t_ext − t_gw`` in s (``GRB_Burst``)."""
NEUTRINO_WINDOW_S = (-500.0, 500.0)
"""IceCube LVK Nu Track Search window, ``t_nu − t_gw`` in s."""

Search = Literal["cbc", "burst"]
Method = Literal["raven", "exact"]


class CoincidenceSettings(BaseModel):
    """Settings of the coincidence searches (the enrich stage nests them as ``[enrich.coincidences]``).

    Attributes
    ----------
    cbc_window_s, burst_window_s : (float, float)
        GW–GRB windows on ``t_ext − t_gw``, s.
    grb_rate_per_yr : float
        Rate of independent external (GRB) triggers in the temporal FAR, yr⁻¹ (year of
        365 days); ligo-raven's default 310.
    overlap_method : {"raven", "exact"}
        Discretization of the overlap integral (:func:`broker.enrich.coinc.overlap_integral`).
    neutrino_window_s : (float, float)
        GW–neutrino window on ``t_nu − t_gw``, s.
    optical_days : float
        Optical candidates must be detected within this many days after T0.
    optical_level : float
        Credible level of the region optical candidates must lie in, 0..1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    cbc_window_s: tuple[float, float] = CBC_WINDOW_S
    """GRB window around a CBC (compact binary) GW candidate, ``t_ext − t_gw`` in s (RAVEN, gwcelery ``GRB_CBC``)."""
    burst_window_s: tuple[float, float] = BURST_WINDOW_S
    """GRB window around an unmodelled-burst GW candidate, ``t_ext − t_gw`` in s (gwcelery ``GRB_Burst``)."""
    grb_rate_per_yr: float = Field(RAVEN_GRB_RATE_PER_YR, gt=0, allow_inf_nan=False)
    """Rate of independent GRB triggers in RAVEN's temporal FAR, per year of 365 days (ligo-raven's 310)."""
    overlap_method: Method = "raven"
    """Discretization of the sky-map overlap integral: ``raven`` (ligo-raven 3.3's) or ``exact``."""
    neutrino_window_s: tuple[float, float] = NEUTRINO_WINDOW_S
    """IceCube Gold/Bronze track window, ``t_nu − t_gw`` in s (LVK Nu Track Search)."""
    optical_days: float = Field(3.0, gt=0, allow_inf_nan=False)
    """Optical (ZTF) candidates must be first detected within this many days after T0."""
    optical_level: float = Field(0.9, gt=0, le=1, allow_inf_nan=False)
    """Credible level of the region optical candidates must lie in, 0..1."""

    @model_validator(mode="after")
    def _windows(self) -> "CoincidenceSettings":
        for name in ("cbc_window_s", "burst_window_s", "neutrino_window_s"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{name} = [{lo}, {hi}] must be finite with lower <= upper")
        return self

    def window_s(self, search: Search) -> tuple[float, float]:
        """The GW–GRB window of ``search`` (``"cbc"`` or ``"burst"``), s."""
        return self.cbc_window_s if search == "cbc" else self.burst_window_s

    @property
    def grb_rate_hz(self) -> float:
        """``grb_rate_per_yr`` in Hz."""
        return self.grb_rate_per_yr / YEAR_S
