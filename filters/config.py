"""Settings of the filters: the ``[filters]`` section (a settings plugin, like ``[followup]``).

Each enabled filter is one ``[[filters.filters]]`` entry::

    [[filters.filters]]
    name = "my-bns"                 # instance name: topic mma.filter.my-bns
    plugin = "gw-significant"       # entry point in mma_broker.filters (default: name)
    params = {max_far_hz = 3.2e-8, min_has_ns = 0.5}
    time_budget_ms = 20

or, from the environment, ``MMA_BROKER_FILTERS__FILTERS='[{"name": ..., "params": {...}}]'``.
Imports only pydantic and :mod:`broker.config`: loading a section must stay cheap.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from broker.config import Section


class FilterEntry(Section):
    """One enabled filter."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Instance name: accepted Events go to ``<topic_prefix><name>`` (``mma.filter.<name>``)."""
    plugin: str | None = None
    """The filter plugin (entry-point name in ``mma_broker.filters``); default: ``name``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The filter's configuration values (checked by its config class at start-up)."""
    time_budget_ms: float = Field(20.0, gt=0, le=60_000)
    """A call longer than this is counted and logged; 50× longer is interrupted."""
    publish: bool = True
    """Publish accepted Events on the filter's topic (False: decisions archived only)."""

    @property
    def plugin_name(self) -> str:
        """The entry-point name of the plugin."""
        return self.plugin or self.name


ONE_PER_MONTH_HZ = 1.0 / (30.0 * 86400.0)
"""The LVK public-alert significance threshold for CBC searches, 1/month, Hz."""


def _rule(name: str, **params: Any) -> FilterEntry:
    return FilterEntry(name=name, plugin="followup-rule", params=params)


def default_filters() -> list[FilterEntry]:
    """The filters enabled when the settings name none.

    The built-in science filters (``gw-significant``, ``grb-short``,
    ``gw-grb-coincidence``, ``neutrino-track``, ``optical-counterpart``, ``ztf-decent``)
    with their default parameters, each publishing on ``mma.filter.<name>``, and the
    INTEGRAL follow-up's trigger rules (``followup-rule``, :mod:`followup.filter`):
    every significant IGWN alert (preliminary, initial, update: the ``significant``
    flag, or FAR <= 1/month when the flag is absent; early warnings are skipped since
    the preliminary alert follows with the same T0, and T0 + 300 s of data must exist
    first) and every GRB notice of Fermi GBM, Swift BAT (and BAT-GUANO), INTEGRAL
    (SPI-ACS/IBAS, not "weak"), SVOM ECLAIRs/GRM and BurstCube. Einstein Probe WXT
    (X-ray transients) is not a GRB notice and is not in the defaults; add an entry to
    follow it up.
    """
    return [
        _rule("followup-igwn-significant", source="igwn", alert_types=["preliminary", "initial", "update"],
              significant_only=True, max_far_hz=ONE_PER_MONTH_HZ),
        _rule("followup-fermi-gbm-grb", source="gcn", missions=["Fermi"], instruments=["GBM"],
              alert_types=["flt_pos", "gnd_pos", "fin_pos", "initial", "update"], grb_only=True),
        _rule("followup-swift-bat-grb", source="gcn", missions=["Swift"], instruments=["BAT", "BAT-GUANO"],
              alert_types=["grb_pos_ack", "initial", "update"], grb_only=True),
        _rule("followup-integral-grb", source="gcn", missions=["INTEGRAL"],
              alert_types=["spiacs", "wakeup", "refined", "offline"], grb_only=True),
        _rule("followup-svom-grb", source="gcn", missions=["SVOM"], instruments=["ECLAIRs", "GRM"],
              alert_types=["wakeup", "initial", "update"], grb_only=True),
        _rule("followup-burstcube-grb", source="gcn", missions=["BurstCube"], alert_types=["initial", "update"],
              grb_only=True),
        # the built-in science filters with their default parameters (docs/filters-builtin.md)
        *(FilterEntry(name=n) for n in ("gw-significant", "grb-short", "gw-grb-coincidence", "neutrino-track",
                                        "optical-counterpart", "ztf-decent")),
    ]


class FiltersSettings(Section):
    """The filter stage: which filters run, and how."""

    enabled: bool = True
    """Run the filter stage (it reads ``mma.events.enriched``)."""
    filters: list[FilterEntry] = Field(default_factory=default_filters)
    """The enabled filters, evaluated in this order (default: :func:`default_filters`)."""
    topic_prefix: str = "mma.filter."
    """Topic of filter NAME: this prefix + NAME (``[kafka] topic_prefix`` goes in front)."""
    catalogs: list[str] = Field(default_factory=list)
    """Catalogs (loaded with ``mma-broker catalog load``) that filters may read, by name."""
    quarantine_after: int = Field(100, ge=1)
    """Consecutive failed calls after which a filter is skipped until restart."""
    batch_size: int = Field(500, ge=1, le=100_000)
    """Messages per batch of the filter stage (and per Kafka transaction)."""
    poll_timeout_s: float = Field(0.5, gt=0)
    """Longest wait for a batch to fill, s."""
