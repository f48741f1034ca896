"""``gw-significant``: significant LVK gravitational-wave candidates.

Selection (every condition must hold; the first that fails is the reason):

1. not a retraction, and its event group (the enrich stage's ``group``) not retracted
   (``retraction``, ``group_retracted``);
2. not a mock or test superevent — GraceDB ids ``MS...``/``TS...`` or a notice with
   ``role="test"`` — unless ``allow_mock`` (``mock_event``);
3. alert type, search group (``CBC``/``Burst``), pipeline and search in the configured
   lists (``alert_type_not_selected``, ``group_not_selected``, ...);
4. significance (``not_significant``): the alert's ``significant`` flag is true. Alerts
   sent before the flag existed (LVK user guide version 18, 2023-03-30, i.e. O3 and
   earlier) carry none; they count as significant when their FAR is at most the
   per-search O4 threshold that sets the flag: 7.7e-8 Hz (one per five months) for CBC
   searches, 7.9e-9 Hz (one per four years) for unmodelled Burst searches — the rates
   of significant false alarms, one per month and one per year, divided by the trials
   factors of 6 and 3 (``unflagged_max_far_hz_cbc`` / ``_burst``);
5. FAR at most ``max_far_hz`` when set (``far_above_threshold``);
6. source-classification thresholds when set (``has_ns_below_threshold``,
   ``p_bbh_below_threshold``, ``p_terrestrial_above_threshold`` ...). An alert that does
   not carry a value a threshold needs (Burst alerts have no ``HasNS``) is rejected
   (``has_ns_missing``, ...).

Sources: LVK Public Alerts User Guide (emfollow.docs.ligo.org/userguide):
"Alert Threshold" and "Alert Threshold Trials Factor" (analysis/index.html#alert-threshold),
"Notice Formats" (the ``significant`` flag, ``HasNS``/``HasRemnant``/``HasMassGap``,
``BNS``/``NSBH``/``BBH``/``Terrestrial``; content.html) and "Name" (prefixes ``S``,
``MS`` mock, ``TS`` test).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from filters.api import Filter, FilterConfig, FilterInput, FilterResult
from filters.builtin import is_test_notice, number

__all__ = ["GwSignificantConfig", "GwSignificant", "CBC_SIGNIFICANT_FAR_HZ", "BURST_SIGNIFICANT_FAR_HZ"]

CBC_SIGNIFICANT_FAR_HZ = 7.7e-8
"""Per-search FAR threshold of a significant CBC alert, Hz (LVK user guide, O4: one per
five months; with the trials factor 6, one significant false alarm per month)."""
BURST_SIGNIFICANT_FAR_HZ = 7.9e-9
"""Per-search FAR threshold of a significant Burst alert, Hz (LVK user guide, O4: one per
four years; with the trials factor 3, one significant false alarm per year)."""

_Prob = Field(None, ge=0.0, le=1.0)

# config field -> (where in properties, key, reason stem); "min" thresholds are lower bounds
_CLASS_CUTS: tuple[tuple[str, str, str, str], ...] = (
    ("min_has_ns", "properties", "HasNS", "has_ns"),
    ("min_has_remnant", "properties", "HasRemnant", "has_remnant"),
    ("min_has_mass_gap", "properties", "HasMassGap", "has_mass_gap"),
    ("min_p_bns", "classification", "BNS", "p_bns"),
    ("min_p_nsbh", "classification", "NSBH", "p_nsbh"),
    ("min_p_bbh", "classification", "BBH", "p_bbh"),
    ("max_p_terrestrial", "classification", "Terrestrial", "p_terrestrial"),
)


class GwSignificantConfig(FilterConfig):
    """Which LVK alerts count as significant candidates (module docstring)."""

    require_significant: bool = True
    """Require the alert's ``significant`` flag (or, for alerts without it, a FAR under
    the per-search threshold of its group)."""
    unflagged_max_far_hz_cbc: float = Field(CBC_SIGNIFICANT_FAR_HZ, ge=0)
    """FAR ceiling standing in for the flag on CBC alerts that carry none, Hz."""
    unflagged_max_far_hz_burst: float = Field(BURST_SIGNIFICANT_FAR_HZ, ge=0)
    """FAR ceiling standing in for the flag on Burst alerts that carry none, Hz."""
    max_far_hz: float | None = Field(None, ge=0)
    """FAR ceiling for every alert, Hz (e.g. 3.2e-8, one per year); None: no cut
    besides the significance."""
    alert_types: tuple[Literal["earlywarning", "preliminary", "initial", "update"], ...] = (
        "earlywarning", "preliminary", "initial", "update")
    """Alert types accepted (retractions never are)."""
    groups: tuple[Literal["CBC", "Burst"], ...] = ("CBC", "Burst")
    """Search groups accepted (the alert's ``group``)."""
    pipelines: tuple[str, ...] = ()
    """Pipelines accepted, case-insensitive (``gstlal``, ``MBTA``, ``pycbc``, ``spiir``,
    ``cwb``, ``olib``, ``mly``); empty: any."""
    searches: tuple[str, ...] = ()
    """Searches accepted, case-insensitive (``AllSky``, ``BBH``, ``EarlyWarning``, ``SSM``,
    ``MDC``); empty: any."""
    min_has_ns: float | None = _Prob
    """Lower bound on ``HasNS``: probability that at least one object is a neutron star."""
    min_has_remnant: float | None = _Prob
    """Lower bound on ``HasRemnant``: probability that neutron-star matter was ejected."""
    min_has_mass_gap: float | None = _Prob
    """Lower bound on ``HasMassGap``: probability of an object of 3–5 solar masses."""
    min_p_bns: float | None = _Prob
    """Lower bound on the BNS probability (``classification.BNS``)."""
    min_p_nsbh: float | None = _Prob
    """Lower bound on the NSBH probability."""
    min_p_bbh: float | None = _Prob
    """Lower bound on the BBH probability."""
    max_p_terrestrial: float | None = _Prob
    """Upper bound on the probability of terrestrial (noise) origin."""
    allow_mock: bool = False
    """Accept mock (``MS``) and test (``TS``, ``role="test"``) superevents."""


def _in(value: Any, allowed: tuple[str, ...]) -> bool:
    return not allowed or (isinstance(value, str) and value.lower() in {a.lower() for a in allowed})


class GwSignificant(Filter[GwSignificantConfig]):
    """Significant LVK gravitational-wave candidates: FAR, ``significant``, not retracted, classification."""

    name = "gw-significant"
    version = "1"
    sources = frozenset({"igwn"})

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one IGWN alert (module docstring: selection and reasons).

        Parameters
        ----------
        alert : FilterInput
            An IGWN Event (``properties``: ``far_hz``, ``significant``, ``group``,
            ``pipeline``, ``search``, ``classification``, ``properties``) and its
            enrichment (``group.retracted``).

        Returns
        -------
        FilterResult
            Accepted with tags ``gw`` and ``cbc``/``burst``.
        """
        c, ev = self.config, alert.event
        p = ev.properties
        if ev.is_retraction:
            return FilterResult.reject("retraction")
        if alert.group.get("retracted"):
            return FilterResult.reject("group_retracted", detail=f"group {alert.group.get('key')} was retracted")
        if not c.allow_mock and (ev.upstream_id.startswith(("MS", "TS")) or is_test_notice(ev)):
            return FilterResult.reject("mock_event", detail=f"{ev.upstream_id}: mock/test superevent")
        if ev.alert_type not in c.alert_types:
            return FilterResult.reject("alert_type_not_selected", detail=ev.alert_type)
        group = p.get("group")
        if not _in(group, c.groups):
            return FilterResult.reject("group_not_selected", detail=f"group {group!r}")
        if not _in(p.get("pipeline"), c.pipelines):
            return FilterResult.reject("pipeline_not_selected", detail=f"pipeline {p.get('pipeline')!r}")
        if not _in(p.get("search"), c.searches):
            return FilterResult.reject("search_not_selected", detail=f"search {p.get('search')!r}")
        far = number(p.get("far_hz"))
        flag = p.get("significant")
        if c.require_significant:
            if flag is False:
                return FilterResult.reject("not_significant", detail=f"significant=false, FAR {far} Hz")
            if flag is not True:  # no flag: the per-search threshold that sets it in O4
                limit = c.unflagged_max_far_hz_burst if str(group).lower() == "burst" else c.unflagged_max_far_hz_cbc
                if far is None or far > limit:
                    return FilterResult.reject("not_significant",
                                               detail=f"no significant flag; FAR {far} Hz above {limit:g} Hz")
        if c.max_far_hz is not None and (far is None or far > c.max_far_hz):
            return FilterResult.reject("far_above_threshold", detail=f"FAR {far} Hz > {c.max_far_hz:g} Hz")
        for field, where, key, stem in _CLASS_CUTS:
            bound = getattr(c, field)
            if bound is None:
                continue
            block = p.get(where)
            value = number(block.get(key)) if isinstance(block, dict) else None
            if value is None:
                return FilterResult.reject(f"{stem}_missing", detail=f"{where}.{key} not in the alert")
            if field.startswith("min_") and value < bound:
                return FilterResult.reject(f"{stem}_below_threshold", detail=f"{key} {value:.3g} < {bound:g}")
            if field.startswith("max_") and value > bound:
                return FilterResult.reject(f"{stem}_above_threshold", detail=f"{key} {value:.3g} > {bound:g}")
        kind = "burst" if str(group).lower() == "burst" else "cbc"
        return FilterResult.accept("significant", tags=("gw", kind),
                                   detail=f"{ev.upstream_id} {ev.alert_type}: FAR {far} Hz, significant={flag}")
