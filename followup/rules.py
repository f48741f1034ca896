"""Trigger rules: which Events start an INTEGRAL follow-up, and with which analyses.

Pure functions of an :class:`broker.event.Event` and the rules of
:class:`followup.config.FollowupSettings` (``FollowupRuleSettings``: data, not code,
so a deployment changes them in its TOML preset). The first matching rule wins.

* An ordinary revision matches a rule when every non-empty list of the rule (source,
  missions, instruments, alert types) holds the Event's value, case-insensitively, and
  the significance / GRB / test conditions hold (see :func:`match_rule`).
* A retraction (``alert_type == "retraction"``) matches on source and mission alone:
  it carries no significance, and it must withdraw whatever the earlier revisions of
  the same ``upstream_id`` started (:func:`decide` returns ``action = "withdraw"``).

Significance of IGWN alerts follows the LVK public-alert policy (LVK user guide,
"Significance"): ``significant = true`` for CBC alerts with FAR below one per month
(one per year for unmodelled bursts); old LVC VOEvents carry no flag, and then the FAR
ceiling ``max_far_hz`` of the rule decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

from broker.event import Event

logger = logging.getLogger(__name__)

Action = Literal["analyze", "withdraw", "skip"]


@dataclass(frozen=True)
class Decision:
    """What to do with one Event.

    Attributes
    ----------
    action : {"analyze", "withdraw", "skip"}
    rule : str or None
        Name of the matching rule.
    analyses : tuple of str
        Analyses to run (``"spiacs"``, ``"isgri"``), sorted; empty unless analyzing.
    reason : str
        One line saying why (for logs and the request record).
    """

    action: Action
    rule: str | None
    analyses: tuple[str, ...]
    reason: str


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


def match_rule(event: Event, rule: Any) -> str | None:
    """Why ``event`` does not match ``rule`` (one line), or None when it matches.

    Parameters
    ----------
    event : broker.event.Event
    rule : followup.config.FollowupRuleSettings
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
    if rule.significant_only and not is_significant(props, rule.max_far_hz):
        return f"not significant (significant={props.get('significant')}, far_hz={props.get('far_hz')})"
    if not rule.significant_only and rule.max_far_hz is not None:
        far = props.get("far_hz")
        if isinstance(far, (int, float)) and far > rule.max_far_hz:
            return f"far_hz {far:g} above {rule.max_far_hz:g}"
    if rule.grb_only and not looks_like_grb(props):
        return "the notice says it is not a GRB"
    return None


def decide(event: Event, rules: Sequence[Any], enabled_analyses: Iterable[str] = ("spiacs", "isgri")) -> Decision:
    """Apply the rules to one Event.

    Parameters
    ----------
    event : broker.event.Event
    rules : sequence of followup.config.FollowupRuleSettings
        Tried in order; the first match decides.
    enabled_analyses : iterable of str
        Analyses this deployment runs; a rule's list is intersected with it.

    Returns
    -------
    Decision
        ``withdraw`` for a retraction matching a rule; ``analyze`` with the sorted
        analyses for a matching revision; ``skip`` otherwise (also when the
        intersection of analyses is empty).
    """
    enabled = _norm(enabled_analyses)
    reasons = []
    for rule in rules:
        why_not = match_rule(event, rule)
        if why_not is not None:
            reasons.append(f"{rule.name}: {why_not}")
            continue
        if event.is_retraction:
            return Decision("withdraw", rule.name, (), f"retraction of {event.upstream_id} ({rule.name})")
        analyses = tuple(sorted(_norm(rule.analyses) & enabled))
        if not analyses:
            return Decision("skip", rule.name, (), f"{rule.name}: no enabled analysis")
        return Decision("analyze", rule.name, analyses, f"matched {rule.name}")
    return Decision("skip", None, (), "; ".join(reasons) or "no rules")
