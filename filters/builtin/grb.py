"""``grb-short``: short gamma-ray bursts, from what the notices really carry.

Selection (in this order; the first that decides is the reason):

1. not a retraction and its group not retracted (``retraction``, ``group_retracted``),
   not a test notice unless ``allow_test`` (``test_notice``);
2. a GRB: the Event's category (``Event.category``, the normalized category) is in
   ``categories``. Until every Event carries one, an Event without it is judged by the
   enrich stage's coarse group category (``enrichment.group.category``: ``grb`` for any
   high-energy mission that is not an FRB or X-ray survey) (``not_grb``). The category
   rule ``grb_monitor_presumed`` marks a trigger of a GRB monitor whose notice states no
   class (broker/category.py); ``allow_presumed_grb = false`` rejects those
   (``grb_presumed``);
3. the notice does not say it is something else (``known_source``: a catalogued source
   such as SVOM's "Cen X-3"; ``not_a_grb``: the Swift/Fermi ``Def_NOT_a_GRB`` flag;
   ``classified_not_grb``: Fermi GBM's on-board classification ``most_likely`` is not GRB
   or is GRB with probability below ``min_grb_probability``, or a GCN ``classification``
   whose GRB probability is below it — BurstCube, GUANO, GBM flight notices);
4. short (``short_t90`` / ``short_class`` accepted; ``long_t90`` / ``long_class``
   rejected):

   * a duration ``T90`` in the notice (GCN unified schema ``t90``; the GBM sub-threshold
     VOEvent's ``Trans_Duration``): short when ``T90 <= max_t90_s`` (2 s: the minimum of
     the bimodal BATSE duration distribution, Kouveliotou et al. 1993, ApJ 413, L101);
   * otherwise Fermi GBM's duration class (GCN Kafka ``duration_class`` SHORT/LONG, a
     preliminary classification at 2.048 s confirmed by the T90 for 92 % of SHORT and
     95 % of LONG bursts, gcn-schema ``fermi/gbm/trigger.schema.json``; VOEvent
     ``Long_short`` / ``Duration_class`` of GBM ground and final positions);
   * otherwise the duration is unknown (``duration_unknown``): rejected, or accepted
     when ``accept_unknown_duration``. Real-time Swift BAT, SVOM ECLAIRs/GRM, INTEGRAL
     and Einstein Probe notices state a trigger time scale but no T90, and a trigger
     time scale is not a duration, so they land here.
"""

from __future__ import annotations

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult
from filters.builtin import is_test_notice, number

__all__ = ["GrbShortConfig", "GrbShort", "SHORT_T90_S"]

SHORT_T90_S = 2.0
"""The short/long boundary on T90, s (Kouveliotou et al. 1993, ApJ 413, L101)."""


class GrbShortConfig(FilterConfig):
    """What counts as a short GRB (module docstring)."""

    categories: tuple[str, ...] = ("grb",)
    """Event categories treated as GRBs (``Event.category``)."""
    allow_presumed_grb: bool = True
    """Accept GRBs the category presumes from the mission (rule ``grb_monitor_presumed``)."""
    max_t90_s: float = Field(SHORT_T90_S, gt=0, allow_inf_nan=False)
    """Longest T90 of a short burst, s."""
    use_duration_class: bool = True
    """Use Fermi GBM's SHORT/LONG class when the notice has no T90."""
    accept_unknown_duration: bool = False
    """Accept GRBs whose notice gives neither a T90 nor a duration class."""
    min_grb_probability: float = Field(0.5, ge=0, le=1)
    """Reject a notice whose own classification gives the GRB class a lower probability."""
    allow_test: bool = False
    """Accept notices marked as tests."""


def _classification_veto(props: dict, min_p: float) -> str | None:
    """Why the notice's own classification says it is not a GRB, or None."""
    if props.get("known_source"):
        return f"known_source:{props['known_source']}"
    if props.get("not_a_grb") is True:
        return "not_a_grb"
    likely = props.get("most_likely")
    if isinstance(likely, str):
        prob = number(props.get("most_likely_prob"))
        if likely.upper() != "GRB" or (prob is not None and prob < min_p):
            return f"classified_not_grb:most_likely {likely} ({prob})"
    cls = props.get("classification")
    if isinstance(cls, dict) and cls:
        p_grb = number(cls.get("GRB"))
        if p_grb is None or p_grb < min_p:
            return f"classified_not_grb:classification {dict(list(cls.items())[:4])}"
    return None


class GrbShort(Filter[GrbShortConfig]):
    """Short gamma-ray bursts: T90 <= 2 s, or Fermi GBM's SHORT class, of notices that are GRBs."""

    name = "grb-short"
    version = "1"
    sources = frozenset({"gcn"})

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one GCN notice (module docstring: selection and reasons).

        Parameters
        ----------
        alert : FilterInput
            A GCN Event (``properties``: ``duration_s`` = T90 in s, ``grb_class``,
            ``classification``, ``most_likely``, ``not_a_grb``, ``known_source``) and its
            enrichment (``group.retracted``, ``group.category``).

        Returns
        -------
        FilterResult
            Accepted with tags ``grb`` and ``short``.
        """
        c, ev = self.config, alert.event
        p = ev.properties
        if ev.is_retraction:
            return FilterResult.reject("retraction")
        if alert.group.get("retracted"):
            return FilterResult.reject("group_retracted", detail=f"group {alert.group.get('key')} was retracted")
        if not c.allow_test and is_test_notice(ev):
            return FilterResult.reject("test_notice")
        category = alert.category  # Event.category once every Event carries it
        where = "event"
        if category is None:
            category, where = alert.group.get("category"), "enrich group"
        if category not in c.categories:
            return FilterResult.reject("not_grb", detail=f"{where} category {category!r}")
        if not c.allow_presumed_grb and getattr(ev, "category_rule", None) == "grb_monitor_presumed":
            return FilterResult.reject("grb_presumed", detail="category presumed from the mission")
        veto = _classification_veto(p, c.min_grb_probability)
        if veto is not None:
            reason, _, why = veto.partition(":")
            return FilterResult.reject(reason, detail=why[:300] or None)
        t90 = number(p.get("duration_s"))
        if t90 is not None:
            if t90 <= c.max_t90_s:
                return FilterResult.accept("short_t90", detail=f"T90 {t90:g} s <= {c.max_t90_s:g} s",
                                           tags=("grb", "short"))
            return FilterResult.reject("long_t90", detail=f"T90 {t90:g} s > {c.max_t90_s:g} s")
        cls = p.get("grb_class")
        if c.use_duration_class and isinstance(cls, str) and cls.lower() in ("short", "long"):
            if cls.lower() == "short":
                return FilterResult.accept("short_class", detail="Fermi GBM duration class SHORT",
                                           tags=("grb", "short"))
            return FilterResult.reject("long_class", detail="Fermi GBM duration class LONG")
        if c.accept_unknown_duration:
            return FilterResult.accept("duration_unknown", detail="no T90 or duration class in the notice",
                                       tags=("grb", "duration-unknown"))
        return FilterResult.reject("duration_unknown", detail=f"no T90 or duration class (grb_class {cls!r})")
