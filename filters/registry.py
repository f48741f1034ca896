"""Finding filter plugins (entry-point group ``mma_broker.filters``) and building them.

Our own filters register exactly as a user's do (``pyproject.toml``); the broker
never imports a filter module by name. A name registered twice (two installed
distributions), an entry point whose class is not a :class:`filters.api.Filter`, or
whose ``name`` differs from the entry point's, is a start-up error naming both.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from broker import plugins
from filters.api import Filter, FilterConfigError
from filters.engine import ConfiguredFilter, FilterSet

__all__ = ["available", "filter_class", "build_filter_set"]


def available() -> dict[str, str]:
    """Registered filter names → ``module:Class`` targets, without importing them.

    Raises
    ------
    FilterConfigError
        A name registered by more than one installed distribution.
    """
    seen: dict[str, list[str]] = {}
    for ep in entry_points(group=plugins.FILTERS):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        seen.setdefault(ep.name, []).append(f"{ep.value} ({dist})")
    dup = {n: v for n, v in seen.items() if len(set(v)) > 1}
    if dup:
        raise FilterConfigError("filter name(s) registered more than once: " + "; ".join(
            f"{n!r} by {' and '.join(sorted(set(v)))}" for n, v in sorted(dup.items())))
    return {n: v[0].split(" (")[0] for n, v in sorted(seen.items())}


def filter_class(name: str) -> type[Filter[Any]]:
    """Load the filter class registered as ``name``.

    Raises
    ------
    FilterConfigError
        Unknown name, import failure, not a Filter subclass, or a class ``name``
        that differs from the entry point's.
    """
    known = available()
    if name not in known:
        raise FilterConfigError(f"no filter plugin {name!r} (installed: {', '.join(known) or 'none'})")
    try:
        cls = plugins.load(plugins.FILTERS, name)
    except plugins.PluginError as exc:
        raise FilterConfigError(str(exc)) from None
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise FilterConfigError(f"filter plugin {name!r} = {known[name]} is not a filters.api.Filter subclass")
    if getattr(cls, "name", None) != name:
        raise FilterConfigError(f"filter plugin {name!r} = {known[name]} has name {getattr(cls, 'name', None)!r}; "
                                "the class name attribute and the entry point must agree")
    return cls


def build_filter_set(section: Any) -> FilterSet:
    """The :class:`~filters.engine.FilterSet` of a ``[filters]`` section (:class:`filters.config.FiltersSettings`).

    Raises
    ------
    FilterConfigError
        Any entry that cannot be built (unknown plugin, bad parameters, duplicate
        instance names); the message names the entry.
    """
    built = []
    names = [e.name for e in section.filters]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FilterConfigError(f"[filters] filters: instance name(s) {', '.join(dup)} given twice")
    for entry in section.filters:
        try:
            cls = filter_class(entry.plugin_name)
        except FilterConfigError as exc:
            raise FilterConfigError(f"[filters] {entry.name}: {exc}") from None
        try:
            f = cls.from_params(entry.params)
        except FilterConfigError as exc:
            raise FilterConfigError(f"[filters] {entry.name}: {exc}") from None
        built.append(ConfiguredFilter(entry.name, f, entry.time_budget_ms))
    return FilterSet(built, quarantine_after=section.quarantine_after)
