"""Trigger rules: which Events start an INTEGRAL follow-up, and when a revision is analysed again.

Pure functions of an :class:`broker.event.Event` and a rule's settings
(:class:`followup.filter.FollowupRuleConfig`: data, not code, so a deployment changes
them in its TOML preset); the ``followup-rule`` filter (:mod:`followup.filter`) applies
them, once per enabled ``[[filters.filters]]`` entry.

* An ordinary revision matches a rule when every non-empty list of the rule (source,
  missions, instruments, alert types) holds the Event's value, case-insensitively, and
  the significance / GRB / test conditions hold (see :func:`match_rule`).
* A retraction (``alert_type == "retraction"``) matches on source and mission alone:
  it carries no significance, and it must withdraw whatever the earlier revisions of
  the same ``upstream_id`` started (the filter asks for a ``withdraw`` request).

Significance of IGWN alerts follows the LVK public-alert policy (LVK user guide,
"Significance"): ``significant = true`` for CBC alerts with FAR below one per month
(one per year for unmodelled bursts); old LVC VOEvents carry no flag, and then the FAR
ceiling ``max_far_hz`` of the rule decides.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

from broker.event import Event

logger = logging.getLogger(__name__)

def _norm(values: Iterable[str]) -> set[str]:
    return {v.lower() for v in values}


def _in(value: str | None, allowed: Sequence[str]) -> bool:
    return not allowed or (value is not None and value.lower() in _norm(allowed))


def is_test_alert(event: Event) -> bool:
    """True for test notices (``role = "test"``) and LVK mock superevents (ids ``M...``).

    LVK mock events (MDC replays, the user-guide samples ``MS181101ab``...) have
    superevent ids starting with ``M`` (LVK user guide, "Superevents").
    """
    if str(event.properties.get("role", "")).lower() == "test":
        return True
    return event.source == "igwn" and event.upstream_id.startswith("M")


def looks_like_grb(properties: dict[str, Any]) -> bool:
    """False when the notice itself says it is not a GRB.

    Checked: ``not_a_grb`` (GCN Classic flag), ``most_likely`` (Fermi GBM on-board
    classification) and ``classification`` (unified GCN schema: class → probability;
    the most probable class must be GRB). A notice saying nothing counts as a GRB.
    """
    if properties.get("not_a_grb") is True:
        return False
    most_likely = properties.get("most_likely")
    if isinstance(most_likely, str) and most_likely and most_likely.upper() != "GRB":
        return False
    classes = properties.get("classification")
    if isinstance(classes, dict) and classes:
        numeric = {k: v for k, v in classes.items() if isinstance(v, (int, float))}
        if numeric and max(numeric, key=numeric.get).upper() != "GRB":
            return False
    return True


def is_significant(properties: dict[str, Any], max_far_hz: float | None) -> bool:
    """The LVK ``significant`` flag when present, else ``far_hz <= max_far_hz``.

    Parameters
    ----------
    properties : dict
        Event properties (``significant``: bool or None; ``far_hz``: Hz).
    max_far_hz : float or None
        FAR ceiling, Hz, used when the flag is absent; None → not significant.
    """
    flag = properties.get("significant")
    if isinstance(flag, bool):
        return flag
    far = properties.get("far_hz")
    return max_far_hz is not None and isinstance(far, (int, float)) and far <= max_far_hz


NOT_EVENT_TIMES = frozenset({"observation_start", "alert_datetime"})
"""``properties.time_source`` values (:data:`broker.sources.gcn.TIME_FIELDS`) that are a
notice's observation or issue time, not the time of the event it reports."""


def match_rule(event: Event, rule: Any) -> str | None:
    """Why ``event`` does not match ``rule`` (one line), or None when it matches.

    Parameters
    ----------
    event : broker.event.Event
    rule : followup.filter.FollowupRuleConfig
    """
    if rule.source is not None and event.source != rule.source:
        return f"source {event.source} is not {rule.source}"
    if not _in(event.mission, rule.missions):
        return f"mission {event.mission} not in {rule.missions}"
    if event.is_retraction:
        return None
    if not _in(event.instrument, rule.instruments):
        return f"instrument {event.instrument} not in {rule.instruments}"
    if not _in(event.alert_type, rule.alert_types):
        return f"alert type {event.alert_type} not in {rule.alert_types}"
    if rule.exclude_tests and is_test_alert(event):
        return "test or mock alert"
    props = event.properties
    time_source = props.get("time_source")
    if getattr(rule, "event_time_only", False) and isinstance(time_source, str) and time_source in NOT_EVENT_TIMES:
        return (f"T0 is the notice's {time_source}, not an event time (a follow-up notice "
                "decoded without its trigger)")
    if rule.significant_only and not is_significant(props, rule.max_far_hz):
        return f"not significant (significant={props.get('significant')}, far_hz={props.get('far_hz')})"
    if not rule.significant_only and rule.max_far_hz is not None:
        far = props.get("far_hz")
        if isinstance(far, (int, float)) and far > rule.max_far_hz:
            return f"far_hz {far:g} above {rule.max_far_hz:g}"
    if rule.grb_only and not looks_like_grb(props):
        return "the notice says it is not a GRB"
    return None


# --------------------------------------------------------------------------- groups
# One follow-up per trigger or superevent: the revisions of one event group
# (broker.enrich.groups) are compared with the group's current result.

T0_TOLERANCE_S = 1.0
"""A revision whose T0 moved by more than this (s) is analysed again. Below it the
search is the same: it covers every offset in ±``window_s`` (300 s) around T0 on 50 ms
to 10 s time scales, so a shift under 1 s moves the window edges by < 0.4 %."""

AREA_GAIN = 0.10
"""A localization is *better* when its 90 % region is at least this fraction smaller
than the one the group's follow-up used (rounding and re-fits of the same position do
not start an analysis; 7.15° → 1.34° or a first position do)."""


AUTOMATIC = ("filter:", "rule:")
"""``requested_by`` prefixes of automatic requests (a filter's, or a trigger rule's of
earlier versions): only these are compared with the group's follow-up."""

POSITION_BLIND_NO_DATA = frozenset({"outside_mission", "data_gap"})
""""No data" kinds that no localization can change: outside the mission, or no light
curve / orbit data at T0. After a result with only these, a better localization at the
same T0 is not analysed again (``not_visible`` depends on the position and
``service_unavailable`` may pass, so those are)."""


def _rayleigh_r90_factor(containment: float | None) -> float:
    """Radius of the 90 % region over the radius of the ``containment`` region.

    For a circular 2-D Gaussian error the containment within radius r is
    ``1 - exp(-r² / 2σ²)`` (Rayleigh distribution), so ``r_c ∝ sqrt(-2 ln(1 - c))``.
    Unknown containment: the radius is taken as the 90 % one.
    """
    if containment is None or not 0.0 < containment < 1.0:
        return 1.0
    return math.sqrt(math.log(10.0) / -math.log1p(-containment))


def localization_area_deg2(localization: Any) -> float:
    """Area of the 90 % region of a localization, deg² (inf when there is none).

    Parameters
    ----------
    localization : PointLocalization, HealpixLocalization, its JSON dict, or None
        Points: a circle of radius ``error_radius`` (deg) holding ``containment``,
        scaled to 90 % for a Gaussian error (:func:`_rayleigh_r90_factor`); a point
        without an error radius counts as unlocalized. Sky maps: ``area_90``.

    Returns
    -------
    float
        deg²; ``math.inf`` for no localization.
    """
    if localization is None:
        return math.inf
    loc = localization if isinstance(localization, dict) else localization.model_dump()
    if loc.get("type") == "healpix":
        area = loc.get("area_90")
        return float(area) if isinstance(area, (int, float)) and area > 0 else math.inf
    radius = loc.get("error_radius")
    if not isinstance(radius, (int, float)) or not radius > 0:
        return math.inf
    r90 = min(180.0, radius * _rayleigh_r90_factor(loc.get("containment")))
    return 2.0 * math.pi * (1.0 - math.cos(math.radians(r90))) * (180.0 / math.pi) ** 2


def _t0_seconds(t0: str) -> float:
    from datetime import datetime, timezone

    return datetime.fromisoformat(t0.rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()


def _format_area(area: float) -> str:
    return "none" if math.isinf(area) else f"{area:.3g} deg²"


def reanalysis_reason(event: Event, analyses: Sequence[str], params: dict[str, Any], requested_by: str,
                      previous: dict[str, Any] | None) -> str | None:
    """Why a revision needs a new analysis of its group, or None when it adds nothing.

    Parameters
    ----------
    event : broker.event.Event
        The revision.
    analyses : sequence of str
        Analyses the request asks for.
    params : dict
        The request's parameters (``window_s``, ``max_sky_samples``).
    requested_by : str
        ``"filter:<name>"`` (or ``"rule:<name>"``, before the trigger rules became
        filters) for automatic requests; anything else (``"cli"``) was asked for by a
        person and always runs.
    previous : dict or None
        The document of the group's current (latest, not superseded) result.

    Returns
    -------
    str or None
        One line for the result's ``revision_reason``; None: same T0 (within
        :data:`T0_TOLERANCE_S`), no better localization (:data:`AREA_GAIN`) or an
        earlier "no data" that no position changes (:data:`POSITION_BLIND_NO_DATA`),
        the same analyses and parameters, and the earlier analysis did not fail for a
        reason that may have gone away.
    """
    if previous is None:
        return "first follow-up of this trigger"
    if not requested_by.startswith(AUTOMATIC):
        return f"requested by hand ({requested_by})"
    if previous.get("status") == "failed":
        return "the previous analysis failed"
    prev_analyses = previous.get("analyses") or {}
    if any(isinstance(v, dict) and v.get("kind") == "service_unavailable" for v in prev_analyses.values()):
        return "a data service was unavailable for the previous analysis"
    added = set(analyses) - set(previous.get("analyses_requested") or ())
    if added:
        return f"analyses added: {', '.join(sorted(added))}"
    if previous.get("params") is not None and dict(previous["params"]) != dict(params):
        return "analysis parameters changed"
    try:
        dt = abs(_t0_seconds(event.time) - _t0_seconds(str(previous.get("t0"))))
    except ValueError:
        dt = math.inf
    if dt > T0_TOLERANCE_S:
        return f"T0 changed by {dt:.3g} s"
    missing = {v.get("kind") for v in prev_analyses.values() if isinstance(v, dict) and v.get("no_data") is True}
    if previous.get("status") == "no_data" and missing and missing <= POSITION_BLIND_NO_DATA:
        return None  # no INTEGRAL data at this T0, whatever the localization
    new, old = localization_area_deg2(event.localization), localization_area_deg2(previous.get("localization"))
    if new < old * (1.0 - AREA_GAIN):
        return f"better localization (90 % region {_format_area(old)} → {_format_area(new)})"
    return None
