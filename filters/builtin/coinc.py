"""``gw-grb-coincidence``: Events that took part in a GW–GRB coincidence (RAVEN).

The enrich stage searches coincidences (docs/coincidences.md) and lists, in each
enriched Event's ``enrichment.coincidences``, the ids of the ``mma.coincidences``
records that Event produced: ``gw-grb:<GW group>+<GRB group>``. Both sides are
listed: the GW alert that found a GRB in its window and the GRB notice that found a
GW candidate. The records themselves (``dt_s``, ``search``, ``temporal_far_hz``,
``joint_far_hz``, ``coincident``, ``retracted``) go to ``mma.coincidences``; when the
enrichment also carries them under ``coincidence_records`` (the same records without
``provenance``, in the order of the ids) the FAR cuts below can be applied, else
only the ids are known (:func:`coincidence_records`).

Selection:

1. not a retraction, group not retracted (``retraction``, ``group_retracted``): a
   retraction's enrichment lists the coincidences it withdraws;
2. at least one ``gw-grb`` coincidence (``no_coincidence``) that passes: still
   coincident and not retracted (``coincidence_withdrawn``: a later revision moved the
   pair out of its window, or a member was retracted); its RAVEN search (``cbc``
   window [-1, +5] s, ``burst`` [-60, +600] s on t_GRB - t_GW) selected
   (``search_not_selected``); its joint (spatio-temporal) FAR at most
   ``max_joint_far_hz`` — when RAVEN gives no joint FAR (a member without a sky map),
   the temporal FAR stands in unless ``require_joint_far``, as gwcelery ranks and
   thresholds a coincidence on the spatio-temporal FAR if it has one, else the
   temporal one (gwcelery ``tasks/raven.py``: ``trigger_raven_alert``,
   ``preferred_superevent``) (``joint_far_above_threshold``); its temporal FAR at most
   ``max_temporal_far_hz`` (``temporal_far_above_threshold``). A cut that needs a
   record the enrichment does not carry rejects (``coincidence_details_missing``).

Sources: RAVEN (Urban 2016, PhD thesis, UW–Milwaukee; Cho 2019, LIGO-T1900297;
``ligo-raven`` ``ligo/raven/search.py``: ``coinc_far``), LVK user guide
"Searches: RAVEN"; the windows and FARs are computed by the enrich stage
(:mod:`broker.enrich.coinc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult
from filters.builtin import number

__all__ = ["GwGrbCoincidenceConfig", "GwGrbCoincidence", "coincidence_records", "RECORDS_KEY"]

RECORDS_KEY = "coincidence_records"
"""Key of ``enrichment`` holding the coincidence records themselves (proposed addition
to the enrich stage's output; absent today, then only the ids are known)."""


def coincidence_records(alert: FilterInput) -> list[Mapping[str, Any]]:
    """The coincidences this Event produced, one mapping per id of ``enrichment.coincidences``.

    Parameters
    ----------
    alert : FilterInput

    Returns
    -------
    list of Mapping
        The ``mma.coincidences`` record of each id when the enrichment carries it
        (``enrichment["coincidence_records"]``), else ``{"id": id, "kind": kind}`` with
        the kind read from the id (``gw-grb:...`` → ``gw-grb``). In the order of the ids.
    """
    ids = alert.coincidences
    if not ids:
        return []
    carried = alert.enrichment.get(RECORDS_KEY) or ()
    by_id = {r.get("id"): r for r in carried if isinstance(r, Mapping)}
    out: list[Mapping[str, Any]] = []
    for cid in ids:
        rec = by_id.get(cid)
        out.append(rec if rec is not None else {"id": cid, "kind": str(cid).split(":", 1)[0]})
    return out


def has_details(record: Mapping[str, Any]) -> bool:
    """True when ``record`` is a full coincidence record, not only its id and kind."""
    return "coincident" in record


class GwGrbCoincidenceConfig(FilterConfig):
    """Which GW–GRB coincidences count (module docstring)."""

    searches: tuple[Literal["cbc", "burst"], ...] = ("cbc", "burst")
    """RAVEN searches accepted: ``cbc`` ([-1, +5] s window) and ``burst`` ([-60, +600] s)."""
    max_joint_far_hz: float | None = Field(None, ge=0)
    """Ceiling on RAVEN's spatio-temporal (joint) FAR, Hz (the temporal FAR stands in
    when there is no joint one, unless ``require_joint_far``); None: no cut."""
    require_joint_far: bool = False
    """With ``max_joint_far_hz``: reject a coincidence without a joint FAR."""
    max_temporal_far_hz: float | None = Field(None, ge=0)
    """Ceiling on RAVEN's temporal FAR (FAR_GW × GRB rate × window), Hz; None: no cut."""


class GwGrbCoincidence(Filter[GwGrbCoincidenceConfig]):
    """Events in a GW–GRB coincidence found by the enrich stage (RAVEN windows and FARs)."""

    name = "gw-grb-coincidence"
    version = "1"
    sources = frozenset({"igwn", "gcn"})

    def _check(self, rec: Mapping[str, Any]) -> tuple[str, str | None]:
        """``("accepted", detail)`` or ``(reason, detail)`` for one coincidence."""
        c = self.config
        needs = (c.max_joint_far_hz is not None or c.max_temporal_far_hz is not None
                 or set(c.searches) != {"cbc", "burst"})
        if not has_details(rec):
            return ("coincidence_details_missing", "the enrichment lists the id only") if needs else ("accepted", None)
        if rec.get("retracted") or rec.get("coincident") is False:
            return "coincidence_withdrawn", f"retracted={rec.get('retracted')}, coincident={rec.get('coincident')}"
        if rec.get("search") not in c.searches:
            return "search_not_selected", f"search {rec.get('search')!r}"
        joint, temporal = number(rec.get("joint_far_hz")), number(rec.get("temporal_far_hz"))
        if c.max_joint_far_hz is not None:
            far = joint if joint is not None or c.require_joint_far else temporal
            if far is None or far > c.max_joint_far_hz:
                return ("joint_far_above_threshold",
                        f"joint FAR {joint} Hz (temporal {temporal} Hz) vs {c.max_joint_far_hz:g} Hz")
        if c.max_temporal_far_hz is not None and (temporal is None or temporal > c.max_temporal_far_hz):
            return "temporal_far_above_threshold", f"temporal FAR {temporal} Hz > {c.max_temporal_far_hz:g} Hz"
        return "accepted", f"dt {rec.get('dt_s')} s, joint FAR {joint} Hz, temporal FAR {temporal} Hz"

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one GW or GRB alert (module docstring: selection and reasons).

        Parameters
        ----------
        alert : FilterInput
            An IGWN or GCN Event and its enrichment (``coincidences``, optionally
            ``coincidence_records``; ``group.retracted``).

        Returns
        -------
        FilterResult
            Accepted (``gw_grb_coincidence``) with tags ``gw-grb`` and ``coincidence``;
            ``detail`` names the first coincidence that passed.
        """
        ev = alert.event
        if ev.is_retraction:
            return FilterResult.reject("retraction")
        if alert.group.get("retracted"):
            return FilterResult.reject("group_retracted", detail=f"group {alert.group.get('key')} was retracted")
        recs = [r for r in coincidence_records(alert) if r.get("kind") == "gw-grb"]
        if not recs:
            return FilterResult.reject("no_coincidence")
        failed: list[tuple[str, str]] = []
        for rec in recs:
            reason, detail = self._check(rec)
            where = str(rec.get("id")) + (f": {detail}" if detail else "")
            if reason == "accepted":
                return FilterResult.accept("gw_grb_coincidence", tags=("gw-grb", "coincidence"), detail=where[:300])
            failed.append((reason, where))
        return FilterResult.reject(failed[0][0], detail=failed[0][1][:300])  # the first coincidence's reason
