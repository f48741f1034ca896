"""Plugins: what the core finds through entry points instead of importing.

The broker core (``broker/``) never imports a plugin package (``followup/``,
``filters/``): plugins register themselves in their distribution's metadata under
one of the groups below (``[project.entry-points."mma_broker.stages"]`` in
``pyproject.toml``), and the core loads them by group and name.

=========================  ==================================================
group                      the object an entry point names
=========================  ==================================================
``mma_broker.stages``      a stage factory (:mod:`broker.pipeline.runner`)
``mma_broker.sources``     an alert decoder (:mod:`broker.sources`)
``mma_broker.cli``         a ``typer.Typer`` mounted as ``mma-broker NAME``
``mma_broker.settings``    a pydantic model: the ``[NAME]`` settings section
``mma_broker.migrations``  a package whose folder holds Alembic revisions
``mma_broker.filters``     a filter class (the filter issue)
=========================  ==================================================

Entry points are read from the installed metadata (``importlib.metadata``), so a
plugin added to ``pyproject.toml`` needs ``pip install -e .`` again.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from broker.errors import BrokerError

STAGES = "mma_broker.stages"
SOURCES = "mma_broker.sources"
CLI = "mma_broker.cli"
SETTINGS = "mma_broker.settings"
MIGRATIONS = "mma_broker.migrations"
FILTERS = "mma_broker.filters"

GROUPS = (STAGES, SOURCES, CLI, SETTINGS, MIGRATIONS, FILTERS)


class PluginError(BrokerError):
    """A plugin is unknown or failed to load (names the group, the plugin and why)."""


@lru_cache(maxsize=None)
def available(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name (sorted by name; the first of a duplicated name wins).

    Reading the metadata imports no plugin.
    """
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        found.setdefault(ep.name, ep)
    return found


def load(group: str, name: str) -> Any:
    """Import and return the object that entry point ``name`` of ``group`` names.

    Raises
    ------
    PluginError
        When no such entry point is installed, or importing it fails (the message
        names the plugin, its target and the exception).
    """
    eps = available(group)
    if name not in eps:
        known = ", ".join(eps) or "none installed"
        raise PluginError(f"no plugin {name!r} in {group} (known: {known})")
    ep = eps[name]
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
        raise PluginError(f"plugin {name!r} ({group}) = {ep.value} failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc


def load_all(group: str) -> dict[str, Any]:
    """Every plugin of ``group``, loaded (see :func:`load`)."""
    return {name: load(group, name) for name in available(group)}
