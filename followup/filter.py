"""The follow-up trigger rules as a filter: ``followup-rule``.

Which Events start an INTEGRAL follow-up is a filter like any other (entry point
``mma_broker.filters`` ``followup-rule``), enabled once per rule in ``[filters]``
(the defaults: :func:`filters.config.default_filters`). An accepted decision carries a
:class:`filters.api.FollowupSpec`, which the filter stage publishes as a request on
``mma.followup.requests`` (``requested_by = "filter:<instance name>"``).

Selection (:func:`followup.rules.match_rule`, unchanged from the trigger rules it
replaces):

* an ordinary revision is accepted when every non-empty list of the config (source,
  missions, instruments, alert types) holds the Event's value, case-insensitively, and
  the significance / GRB / test conditions hold;
* a notice whose T0 is not an event time (``time_source`` ``observation_start`` or
  ``alert_datetime``: a follow-up notice decoded without its trigger) is rejected
  unless ``event_time_only`` is off;
* a retraction matches on source and mission alone and is accepted with a
  ``withdraw`` request: it must withdraw whatever the earlier revisions started.

Significance of IGWN alerts follows the LVK public-alert policy (LVK user guide,
"Significance"): ``significant = true`` for CBC alerts with FAR below one per month
(one per year for unmodelled bursts); old LVC VOEvents carry no flag, and then
``max_far_hz`` decides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult, FollowupSpec
from followup.rules import match_rule

__all__ = ["FollowupRuleConfig", "FollowupRule", "ONE_PER_MONTH_HZ"]

ONE_PER_MONTH_HZ = 1.0 / (30.0 * 86400.0)
"""The LVK public-alert significance threshold for CBC searches, 1/month, Hz."""


class FollowupRuleConfig(FilterConfig):
    """One trigger rule. Every non-empty list must contain the Event's value
    (case-insensitive); an empty list matches anything. Retractions match on
    ``source`` and ``missions`` alone."""

    source: Literal["igwn", "gcn", "ztf", "lsst"] | None = None
    """The Event's ``source``; unset: any."""
    missions: tuple[str, ...] = ()
    """Missions to match (``Fermi``, ``Swift``, ...)."""
    instruments: tuple[str, ...] = ()
    """Instruments to match (``GBM``, ``BAT``, ...)."""
    alert_types: tuple[str, ...] = ()
    """Alert types to match (lower case: ``preliminary``, ``gnd_pos``, ...)."""
    significant_only: bool = False
    """Require ``properties.significant`` true; when upstream gives no flag, require
    ``far_hz <= max_far_hz`` instead."""
    max_far_hz: float | None = Field(None, ge=0)
    """False-alarm-rate ceiling, Hz (applies when the flag is absent, or alone)."""
    grb_only: bool = False
    """Skip notices that say they are not a GRB (``not_a_grb``, GBM ``most_likely``,
    or a ``classification`` whose most probable class is not GRB)."""
    event_time_only: bool = True
    """Skip notices whose T0 is not an event time: a GCN follow-up notice (Swift XRT/UVOT
    position, image, light curve...) decoded without its trigger has its own
    ``observation_start`` or ``alert_datetime`` as T0 (``properties.time_source``,
    :mod:`broker.sources.gcn`), minutes after the burst; an INTEGRAL search around it
    would look at the wrong time. Its trigger's notice starts the follow-up."""
    exclude_tests: bool = True
    """Skip test notices (``role = "test"``) and LVK mock superevents (ids ``M...``)."""
    analyses: tuple[Literal["spiacs", "isgri"], ...] = ("spiacs", "isgri")
    """Analyses requested (intersected with ``[followup] analyses``; empty: accepted, no request)."""


class FollowupRule(Filter[FollowupRuleConfig]):
    """Starts the INTEGRAL follow-up of matching alerts (the trigger rules)."""

    name = "followup-rule"
    version = "1"

    def __init__(self, config: FollowupRuleConfig | None = None) -> None:
        super().__init__(config)
        if self.config.source is not None:  # Events of other sources are not even offered to apply()
            self.sources = frozenset({self.config.source})

    def apply(self, alert: FilterInput) -> FilterResult:
        """Accept a matching revision with an ``analyze`` request, a matching retraction
        with a ``withdraw`` request; reject the rest with the first unmet condition."""
        event = alert.event
        why_not = match_rule(event, self.config)
        if why_not is not None:
            return FilterResult.reject(_code(why_not), detail=why_not[:300])
        if event.is_retraction:
            return FilterResult.accept("retraction", detail=f"retraction of {event.upstream_id}",
                                       followup=(FollowupSpec(kind="withdraw", analyses=()),))
        if not self.config.analyses:
            return FilterResult.accept("matched_no_analysis", detail="the rule requests no analysis")
        return FilterResult.accept("matched", followup=(FollowupSpec(analyses=tuple(self.config.analyses)),))


def _code(why_not: str) -> str:
    """A reason code for :func:`followup.rules.match_rule`'s sentence."""
    for prefix, code in (("source", "source_mismatch"), ("mission", "mission_mismatch"),
                         ("instrument", "instrument_mismatch"), ("alert type", "alert_type_mismatch"),
                         ("test or mock", "test_alert"), ("not significant", "not_significant"),
                         ("far_hz", "far_above_threshold"), ("the notice says", "not_a_grb"),
                         ("T0 is", "t0_not_event_time")):
        if why_not.startswith(prefix):
            return code
    return "no_match"
