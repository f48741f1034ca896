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
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

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


class FollowupRuleSettings(Section):
    """One trigger rule: which Events start an INTEGRAL follow-up (``followup.rules``).

    Every non-empty list must contain the Event's value (case-insensitive); an empty
    list matches anything. Retractions match on ``source``/``missions`` alone.
    """

    name: str
    """Label stamped on the requests the rule makes."""
    source: Literal["igwn", "gcn", "ztf", "lsst"] | None = None
    """The Event's ``source``; unset: any."""
    missions: list[str] = Field(default_factory=list)
    """Missions to match (``Fermi``, ``Swift``, ...)."""
    instruments: list[str] = Field(default_factory=list)
    """Instruments to match (``GBM``, ``BAT``, ...)."""
    alert_types: list[str] = Field(default_factory=list)
    """Alert types to match (lower case: ``preliminary``, ``gnd_pos``, ...)."""
    significant_only: bool = False
    """Require ``properties.significant`` true; when upstream gives no flag, require
    ``far_hz <= max_far_hz`` instead."""
    max_far_hz: float | None = None
    """False-alarm-rate ceiling, Hz (applies when the flag is absent, or alone)."""
    grb_only: bool = False
    """Skip notices that say they are not a GRB (``not_a_grb``, GBM ``most_likely``,
    or a ``classification`` whose most probable class is not GRB)."""
    exclude_tests: bool = True
    """Skip test notices (``role = "test"``) and LVK mock superevents (ids ``M...``)."""
    analyses: list[Literal["spiacs", "isgri"]] = Field(default_factory=lambda: ["spiacs", "isgri"])
    """Analyses the rule requests (intersected with ``[followup] analyses``; empty: no request)."""


ONE_PER_MONTH_HZ = 1.0 / (30.0 * 86400.0)
"""The LVK public-alert significance threshold for CBC searches, 1/month, Hz."""


def _default_followup_rules() -> list[FollowupRuleSettings]:
    r = FollowupRuleSettings
    return [
        r(name="igwn-significant", source="igwn", alert_types=["preliminary", "initial", "update"],
          significant_only=True, max_far_hz=ONE_PER_MONTH_HZ),
        r(name="fermi-gbm-grb", source="gcn", missions=["Fermi"], instruments=["GBM"],
          alert_types=["flt_pos", "gnd_pos", "fin_pos", "initial", "update"], grb_only=True),
        r(name="swift-bat-grb", source="gcn", missions=["Swift"], instruments=["BAT", "BAT-GUANO"],
          alert_types=["grb_pos_ack", "initial", "update"], grb_only=True),
        r(name="integral-grb", source="gcn", missions=["INTEGRAL"],
          alert_types=["spiacs", "wakeup", "refined", "offline"], grb_only=True),
        r(name="svom-grb", source="gcn", missions=["SVOM"], instruments=["ECLAIRs", "GRM"],
          alert_types=["wakeup", "initial", "update"], grb_only=True),
        r(name="burstcube-grb", source="gcn", missions=["BurstCube"], alert_types=["initial", "update"],
          grb_only=True),
    ]


class FollowupSettings(Section):
    """The INTEGRAL follow-up stage (``followup.worker``): sources, cache, trigger rules.

    Default rules: every significant IGWN alert (preliminary, initial, update: the
    ``significant`` flag, or FAR <= 1/month when the flag is absent; early warnings are
    skipped since the preliminary alert follows with the same T0, and T0 + 300 s of
    data must exist first) and every GRB notice of Fermi GBM, Swift BAT (and
    BAT-GUANO), INTEGRAL (SPI-ACS/IBAS, not "weak"), SVOM ECLAIRs/GRM and BurstCube.
    Einstein Probe WXT (X-ray transients) is not a GRB notice and is not in the
    defaults; add a rule to follow it up.
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
    rules: list[FollowupRuleSettings] = Field(default_factory=_default_followup_rules)
    batch_size: int = 50
    """Messages per batch of the trigger and of the worker (and per Kafka transaction)."""
    poll_timeout_s: float = 0.5
    """Longest wait for a batch to fill, s."""
    workers: int = Field(4, ge=1, le=64)
    """Requests of one batch analysed at once, off the poll thread (revisions of one
    alert in order, different alerts in parallel): an analysis waiting minutes for
    MMODA holds up neither the consumer nor the other alerts."""
    requests_topic: str = "mma.followup.requests"
    """Topic of follow-up requests (trigger rules and ``followup run`` → workers)."""
    results_topic: str = "mma.followup.results"
    """Topic of follow-up results (workers → subscribers)."""

    secrets_file_keys: ClassVar[dict[str, str]] = {"mmoda_token": "mmoda_token"}
    """Keys of the ``secrets_file`` that fill fields of this section (key → field),
    when the field is not set otherwise (:func:`broker.config.load_settings`)."""
