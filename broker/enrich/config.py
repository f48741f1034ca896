"""Settings of the enrich stage: the ``[enrich]`` section of the broker's settings.

A settings plugin like ``[followup]``: ``pyproject.toml`` registers
:class:`EnrichSettings` under the entry-point group ``mma_broker.settings`` as
``enrich``, so the TOML table ``[enrich]`` (and ``[enrich.coincidences]``) and the
variables ``MMA_BROKER_ENRICH__*`` reach it. Imports pydantic and the numpy-free
:mod:`broker.enrich.coinc_settings` only: settings load on every command.
"""

from __future__ import annotations

from pydantic import Field

from broker.config import Section
from broker.enrich.coinc_settings import CoincidenceSettings


class EnrichSettings(Section):
    """The enrich stage (``mma.events`` → localizations, groups, cross-match, coincidences →
    ``mma.events.enriched`` and ``mma.coincidences``; docs/enrichment.md)."""

    enabled: bool = True
    """Run the enrich loop; false: ``mma-broker run`` starts none."""
    catalogs: list[str] = Field(default_factory=list)
    """Names of loaded catalogs (``mma-broker catalog load NAME FILE``) every Event is
    cross-matched with; a name not loaded (yet) is skipped with one warning and picked
    up once loaded."""
    crossmatch_level: float = Field(0.9, gt=0, le=1)
    """Credible level of a sky map inside which catalog sources are reported (the 3D
    level for catalogs with distances and maps with distance layers)."""
    point_containment: float = Field(0.9, gt=0, lt=1)
    """Containment at which a point's error and the sources' errors are combined."""
    top_n: int = Field(20, ge=0, le=1000)
    """Catalog matches reported per catalog and Event, best first."""
    optical: bool = True
    """Look for ZTF candidates in the 90 % region of GW and GRB triggers (and for
    triggers whose region holds a new ZTF candidate)."""
    max_optical_candidates: int = Field(200, ge=0)
    """At most this many region candidates examined per trigger revision."""
    fetch_skymap_urls: bool = False
    """Download the sky map of an alert that gives it only by URL (LVK VOEvents'
    ``skymap_fits``, GCN ``healpix_url``) when its group has no sky map yet. Off by
    default: the download runs on the stage's poll thread (up to
    ``skymap_url_timeout_s`` per connect/read) and needs the network; an unreachable
    URL is recorded in ``enrichment.error`` and the Event is published all the same."""
    skymap_url_timeout_s: float = Field(20.0, gt=0, le=600)
    """Connect and read timeout of a sky map download, s."""
    skymap_url_max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    """Largest sky map download accepted, bytes as sent (the decode limits apply after)."""
    skymap_url_schemes: list[str] = Field(default_factory=lambda: ["https", "http"])
    """URL schemes a sky map may be downloaded with (redirect targets included)."""
    coincidences: CoincidenceSettings = Field(default_factory=CoincidenceSettings)
    """Windows, GRB rate, overlap method and optical criteria of the coincidence searches."""
    batch_size: int = 200
    """Messages per batch (and per Kafka transaction)."""
    poll_timeout_s: float = 0.5
    """Longest wait for a batch to fill, s."""
    enriched_topic: str = "mma.events.enriched"
    """Topic of the enriched Events (JSON; ``[kafka] topic_prefix`` goes in front)."""
    coincidences_topic: str = "mma.coincidences"
    """Topic of the coincidences (JSON; ``[kafka] topic_prefix`` goes in front)."""
