"""Settings of the INTEGRAL follow-up: the ``[followup]`` section of the broker's settings.

A settings plugin: ``pyproject.toml`` registers :class:`FollowupSettings` under the
entry-point group ``mma_broker.settings`` as ``followup``, and
:func:`broker.config.settings_class` adds it to the root settings as the field
``followup``. So the TOML table ``[followup]``, the variables
``MMA_BROKER_FOLLOWUP__*`` (e.g. ``MMA_BROKER_FOLLOWUP__MMODA_TOKEN``) and the
``secrets_file`` key ``mmoda_token`` all reach it, while the broker core never imports
this package.

Imports only pydantic, :mod:`broker.config` and :mod:`followup.bundled`: loading the section must stay cheap,
it happens every time settings are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from broker.config import Section
from followup.bundled import bundled_data_dir


class LightCurveSourceSettings(Section):
    """Where SPI-ACS light curves come from (``followup.datasources``)."""

    kind: Literal["local", "mmoda", "isdc"] = "local"
    """``local``: OGIP FITS files in ``directory``; ``mmoda``: MMODA via oda-api
    (``instrument='spi_acs'``, ``product='spi_acs_lc'``); ``isdc``: the ISDC SPI-ACS web
    service. The embedded default is ``local`` on the bundled real light curve, so
    the laptop demo reaches no network; ``deploy/presets/production.toml`` uses MMODA."""
    directory: Path | None = Field(default_factory=bundled_data_dir)
    """Folder searched recursively for light-curve FITS files (``kind = "local"``).
    Default: the package's bundled real files (``followup/data``: GRB 230307A only)."""
    url: str | None = None
    """Service URL; None → the MMODA dispatcher or ISDC service URL of ``followup``."""
    time_bin_s: float = 0.1
    """Light-curve bin requested from MMODA, s."""


class FollowupSettings(Section):
    """The INTEGRAL follow-up stage (``followup.worker``): data sources, cache, workers.

    Which alerts are followed up is decided by filters (``[[filters.filters]]``
    entries with ``plugin = "followup-rule"``, :mod:`followup.filter`; the defaults
    follow every significant IGWN alert and the GRB notices of Fermi GBM, Swift BAT,
    INTEGRAL, SVOM and BurstCube).
    """

    enabled: bool = True
    """Run the follow-up's loops; false: ``mma-broker run`` starts none."""
    lightcurves: LightCurveSourceSettings = Field(default_factory=LightCurveSourceSettings)
    orbit_directory: Path | None = Field(default_factory=bundled_data_dir)
    """Folder of INTEGRAL ``INTL-ORBI-SCP`` orbit/attitude files (None: no attitude).
    Default: the package's bundled real orbit file (``followup/data``, revolution 789)."""
    orbit_url_template: str | None = None
    """HTTP service returning an orbit file for ``{utc}`` (used when no directory)."""
    mmoda_url: str | None = None
    """MMODA dispatcher for ISGRI products; None → oda-api's default dispatcher."""
    mmoda_token: SecretStr | None = None
    """MMODA token (environment or secrets_file), never logged."""
    cache: Literal["directory", "database"] = "directory"
    """Provenance cache backend: files under ``cache_directory`` or the archive's
    ``followup_cache`` table."""
    cache_directory: Path | None = None
    """None → ``<home>/followup-cache``."""
    output_directory: Path | None = None
    """Where light-curve PNGs are written; None → ``<home>/followup``."""
    analyses: list[Literal["spiacs", "isgri"]] = Field(default_factory=lambda: ["spiacs", "isgri"])
    """Analyses allowed in this deployment (a rule's list is intersected with it)."""
    window_s: float = 300.0
    """Half-width of the light-curve search window around T0, s."""
    max_sky_samples: int = 1000
    """Top-probability sky-map pixels used as source directions."""
    retry_attempts: int = 3
    """Attempts per data-service request (exponential backoff in between)."""
    batch_size: int = 50
    """Messages per batch of the worker (and per Kafka transaction)."""
    poll_timeout_s: float = 0.5
    """Longest wait for a batch to fill, s."""
    workers: int = Field(4, ge=1, le=64)
    """Requests of one batch analysed at once, off the poll thread (revisions of one
    alert in order, different alerts in parallel): an analysis waiting minutes for
    MMODA holds up neither the consumer nor the other alerts."""
    requests_topic: str = "mma.followup.requests"
    """Topic of follow-up requests (filters and ``followup run|request`` → workers)."""
    results_topic: str = "mma.followup.results"
    """Topic of follow-up results (workers → subscribers)."""

    @model_validator(mode="before")
    @classmethod
    def _rules_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rules" in data:
            raise ValueError("rules: the follow-up trigger rules are filters now: give each as a "
                             "[[filters.filters]] entry with plugin = \"followup-rule\" and its keys (without "
                             "name) under params (docs/filters-builtin.md, docs/configuration.md)")
        return data

    secrets_file_keys: ClassVar[dict[str, str]] = {"mmoda_token": "mmoda_token"}
    """Keys of the ``secrets_file`` that fill fields of this section (key → field),
    when the field is not set otherwise (:func:`broker.config.load_settings`)."""
