"""``optical-counterpart``: ZTF candidates inside a GW/GRB region after T0.

The enrich stage decides the coincidence (docs/coincidences.md, "GW/GRB–optical";
:func:`broker.enrich.coinc.optical_verdict`): a ZTF candidate first detected after the
trigger's T0 (``jdstarthist`` ≥ T0, no detection before T0 in ``prv_candidates``),
within ``optical_days`` (3 days) of it, inside its 90 % credible region (sky map) or
its error circle scaled to 90 % (point). A candidate arriving after its trigger gets a
``gw-optical:...`` / ``grb-optical:...`` id in its own ``enrichment.coincidences``;
this filter selects those candidates and applies the usual sanity cuts on the ZTF
candidate itself:

1. a coincidence of a selected kind (``no_coincidence``); with the records carried
   (``enrichment.coincidence_records``, see :mod:`filters.builtin.coinc`) also not
   retracted (``coincidence_withdrawn``), credible level at most ``max_credible_level``
   (``outside_region``; sky-map triggers only), ``dt_days`` at most ``max_dt_days`` (``too_late``) and, with
   ``require_history_checked``, the candidate's history read (``history_not_checked``);
   a cut that needs the records rejects without them (``coincidence_details_missing``);
2. positive subtraction, ``isdiffpos`` (``negative_subtraction``);
3. real-bogus: ``rb`` ≥ ``min_rb`` (``rb_below_threshold``) and, when the packet has one,
   the deep-learning ``drb`` ≥ ``min_drb`` (``drb_below_threshold``);
4. not a known solar-system object: ``ssdistnr`` (distance to the nearest one, arcsec;
   −999 when none) not below ``min_sso_dist_arcsec`` (``solar_system_object``);
5. not a star: no Pan-STARRS1 source within ``ps1_sgveto_rad_arcsec`` (``distpsnr1``)
   whose star/galaxy score ``sgscore1`` exceeds ``ps1_sgveto_th`` (``stellar_source``;
   Tachibana & Miller 2018, PASP 130, 128001).

Defaults are those of nuztf's GW/GRB sky-map scanner (desy-multimessenger/nuztf,
``nuztf/skymap_scanner.py``: ``GW_RUN_CONFIG`` with ``min_rb`` 0.3, ``min_sso_dist`` 20,
``ps1_sgveto_rad`` 1, ``ps1_sgveto_th`` 0.8, its ``filter_f_no_prv`` positive-subtraction
and ``drb`` ≥ 0.3 cuts, 3 days and 90 % probability), the AMPEL DecentFilter cuts
(Ampel-ZTF ``ampel/ztf/t0/DecentFilter.py``, same parameter meanings) used for the ZTF
follow-up of O3 neutron-star mergers (Kasliwal et al. 2020, ApJ 905, 145).

Only the candidate's side is seen here: a candidate detected *before* its trigger
arrived is found by the trigger's enrichment (its id is listed there, not in the
candidate's), so it does not reach this filter's topic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult
from filters.builtin import number
from filters.builtin.coinc import coincidence_records, has_details

__all__ = ["OpticalCounterpartConfig", "OpticalCounterpart"]


class OpticalCounterpartConfig(FilterConfig):
    """Which optical coincidences pass, and the candidate's sanity cuts (module docstring)."""

    kinds: tuple[Literal["gw-optical", "grb-optical"], ...] = ("gw-optical", "grb-optical")
    """Coincidence kinds accepted: with a GW candidate's or a GRB's region."""
    max_credible_level: float | None = Field(None, gt=0, le=1)
    """Tighter credible region than the enrich stage's (``optical_level``, 0.9), 0..1, for
    sky-map triggers (a point trigger's record has no credible level); needs the
    coincidence records. None: the enrich stage's."""
    max_dt_days: float | None = Field(None, gt=0)
    """Latest detection after T0, days (the enrich stage's ``optical_days``, 3, is the
    widest); needs the records. None: the enrich stage's."""
    require_history_checked: bool = False
    """Require that the enrich stage read the candidate's ``prv_candidates``."""
    require_positive_subtraction: bool = True
    """Require ``isdiffpos`` (the candidate brightened relative to the reference)."""
    min_rb: float | None = Field(0.3, ge=0, le=1)
    """Lower bound on the real-bogus score ``rb``; None: no cut."""
    min_drb: float | None = Field(0.3, ge=0, le=1)
    """Lower bound on the deep-learning real-bogus score ``drb`` (packets without it pass)."""
    min_sso_dist_arcsec: float | None = Field(20.0, ge=0)
    """Distance to the nearest known solar-system object below which the candidate is
    one, arcsec; None: no cut."""
    ps1_sgveto_rad_arcsec: float = Field(1.0, ge=0)
    """Radius within which a PS1 source of star score above ``ps1_sgveto_th`` vetoes, arcsec
    (0: no star veto)."""
    ps1_sgveto_th: float = Field(0.8, ge=0, le=1)
    """Star/galaxy score (``sgscore1``, 1 = star) above which that source is a star."""


class OpticalCounterpart(Filter[OpticalCounterpartConfig]):
    """ZTF candidates in a GW/GRB credible region after T0 (enrich stage), with real-bogus, star and asteroid cuts."""

    name = "optical-counterpart"
    version = "1"
    sources = frozenset({"ztf"})

    def _coincidence(self, alert: FilterInput) -> tuple[str, str | None]:
        c = self.config
        recs = [r for r in coincidence_records(alert) if r.get("kind") in c.kinds]
        if not recs:
            return "no_coincidence", None
        needs = c.max_credible_level is not None or c.max_dt_days is not None or c.require_history_checked
        first: tuple[str, str | None] | None = None
        for rec in recs:
            cid = str(rec.get("id"))
            if not has_details(rec):
                if not needs:
                    return "accepted", cid
                first = first or ("coincidence_details_missing", cid)
                continue
            level, dt = number(rec.get("credible_level")), number(rec.get("dt_days"))
            if rec.get("retracted") or rec.get("coincident") is False:
                first = first or ("coincidence_withdrawn", cid)
            elif c.max_credible_level is not None and level is not None and level > c.max_credible_level:
                first = first or ("outside_region", f"{cid}: credible level {level} > {c.max_credible_level:g}")
            elif c.max_dt_days is not None and (dt is None or dt > c.max_dt_days):
                first = first or ("too_late", f"{cid}: {dt} d after T0 > {c.max_dt_days:g} d")
            elif c.require_history_checked and rec.get("history_checked") is not True:
                first = first or ("history_not_checked", cid)
            else:
                return "accepted", f"{cid}: {dt} d after T0, credible level {level}"
        return first if first is not None else ("no_coincidence", None)

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one ZTF candidate (module docstring: selection and reasons).

        Parameters
        ----------
        alert : FilterInput
            A ZTF Event (``properties``: ``rb``, ``drb``, ``isdiffpos``, ``ssdistnr``
            in arcsec, ``distpsnr1`` in arcsec, ``sgscore1``) and its enrichment
            (``coincidences``, optionally ``coincidence_records``).

        Returns
        -------
        FilterResult
            Accepted (``optical_counterpart``) with tags ``optical`` and the coincidence
            kind(s) of the trigger(s).
        """
        c, ev = self.config, alert.event
        p = ev.properties
        reason, detail = self._coincidence(alert)
        if reason != "accepted":
            return FilterResult.reject(reason, detail=detail[:300] if detail else None)
        if c.require_positive_subtraction and p.get("isdiffpos") not in (True, "t", "1"):
            return FilterResult.reject("negative_subtraction")
        rb, drb = number(p.get("rb")), number(p.get("drb"))
        if c.min_rb is not None and (rb is None or rb < c.min_rb):
            return FilterResult.reject("rb_below_threshold", detail=f"rb {rb} < {c.min_rb:g}")
        if c.min_drb is not None and drb is not None and drb < c.min_drb:
            return FilterResult.reject("drb_below_threshold", detail=f"drb {drb:.3g} < {c.min_drb:g}")
        sso = number(p.get("ssdistnr"))
        if c.min_sso_dist_arcsec is not None and sso is not None and 0 <= sso < c.min_sso_dist_arcsec:
            return FilterResult.reject("solar_system_object",
                                       detail=f"{p.get('ssnamenr')} at {sso:g} arcsec (mag {p.get('ssmagnr')})")
        dist, sg = number(p.get("distpsnr1")), number(p.get("sgscore1"))
        if dist is not None and sg is not None and 0 <= dist < c.ps1_sgveto_rad_arcsec and sg > c.ps1_sgveto_th:
            return FilterResult.reject("stellar_source", detail=f"PS1 sgscore1 {sg:.3g} at {dist:.3g} arcsec")
        kinds = tuple(sorted({str(r.get("kind")) for r in coincidence_records(alert) if r.get("kind") in c.kinds}))
        return FilterResult.accept("optical_counterpart", tags=("optical", *kinds),
                                   detail=f"{ev.upstream_id} {detail}"[:300])
