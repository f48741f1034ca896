"""Settings: one pydantic-settings model per component, built once in the CLI.

Every value can come from (highest first) constructor arguments, environment
variables with the prefix ``MMA_BROKER_`` (nested with ``__``, e.g.
``MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS``), a TOML file named by ``MMA_BROKER_CONFIG``
or ``--config`` (presets in ``deploy/presets/``), then the embedded defaults, which
run everything on one laptop: Kafka on 127.0.0.1:9092, embedded PostgreSQL under
``home``.

Secrets (GCN client secret, Hopskotch password, database URL with a password) are
``SecretStr``: they are never printed, logged or put in error messages. They come from
the environment or from a file readable only by its owner (``secrets_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as PydanticSettingsError

from broker.errors import BrokerError
from broker.limits import DecodeLimits

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(BrokerError):
    """Invalid settings: one line per problem, ``invalid setting <path>: <problem>``.

    Never holds an input value: a wrong value may be (or sit next to) a secret.
    """


_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|database_url|sasl", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^\s/:@]*:)(?!<password>@)[^\s@]*@")
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>(?:secret|password|passwd|token)[\w.-]*['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}\]]+", re.IGNORECASE)


def scrub_secrets(text: str) -> str:
    """``text`` with secret-looking values replaced by ``***``: URL passwords
    (``scheme://user:***@``), ``password=...``/``secret: ...`` pairs, and the values of
    ``MMA_BROKER_*`` environment variables whose names say secret, password, token or
    database URL."""
    text = _URL_CREDENTIALS.sub(r"\g<head>***@", text)
    text = _SECRET_ASSIGNMENT.sub(r"\g<head>***", text)
    for key, value in os.environ.items():
        if key.startswith("MMA_BROKER_") and _SECRET_NAME.search(key) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _settings_error(exc: ValidationError) -> SettingsError:
    """One line per problem: the setting's dotted path and pydantic's message, without
    the input value (``errors(include_input=False)``), scrubbed."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(settings)"
        msg = " ".join(str(err.get("msg", "invalid")).removeprefix("Value error, ").split())
        lines.append(f"invalid setting {scrub_secrets(loc)}: {scrub_secrets(msg)}")
    return SettingsError("\n".join(lines) or "invalid settings")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """The Kafka cluster that carries our own topics (and, locally, the replayed upstream ones)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka settings for every client (e.g. security.protocol, sasl.username).
    Keep passwords out of the TOML preset: give ``sasl.password`` with
    ``MMA_BROKER_KAFKA__CONFIG__SASL.PASSWORD`` or the secrets_file key
    ``kafka_sasl_password``. Keys containing "password"/"secret" stay out of config_hash."""
    topic_prefix: str = ""
    """Prefix for every topic name we read or write (isolates tests and tenants)."""


class UpstreamSettings(_Section):
    """One upstream alert stream consumed by the ingest stage.

    ``kind`` picks the protocol module: ``kafka`` (any Kafka, e.g. the local one that
    ``mma-broker replay`` fills), ``gcn`` (NASA GCN Kafka via gcn-kafka, OIDC client
    credentials), ``hop`` (SCiMMA Hopskotch via hop-client credentials, for
    ``igwn.gwalert``), ``ztf`` (ZTF public stream via confluent-kafka).
    """

    name: str
    """Label used in logs and metrics."""
    kind: Literal["kafka", "gcn", "hop", "ztf"] = "kafka"
    topics: list[str]
    """Topic names; an entry starting with ``^`` is a regular expression subscription."""
    bootstrap_servers: str | None = None
    """Defaults: ``kafka`` → the [kafka] cluster; ``gcn`` → kafka.<domain>; ``hop`` →
    kafka.scimma.org:9092; ``ztf`` → must be set."""
    group_id: str | None = None
    """Consumer group; defaults to ``<broker group_id>.ingest.<name>``."""
    domain: str = "gcn.nasa.gov"
    """GCN domain (``gcn.nasa.gov``, ``test.gcn.nasa.gov``)."""
    client_id: str | None = None
    """GCN OIDC client id (not secret)."""
    client_secret: SecretStr | None = None
    """GCN OIDC client secret: from the environment or secrets_file."""
    hop_auth_file: Path | None = None
    """hop-client auth.toml (default: hop's own ~/.config/hop/auth.toml)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka consumer settings for this upstream."""
    batch_size: int | None = None
    """Messages per batch for this upstream (default: [ingest] batch_size)."""
    poll_timeout_s: float | None = None
    """Longest wait for a batch to fill (default: [ingest] poll_timeout_s)."""


def _default_upstreams() -> list[UpstreamSettings]:
    # Notices (GW, GRB, neutrino) and ZTF in separate consumers: a GCN notice must
    # not wait behind a 500-alert ZTF batch (~40 MB of raw bytes to archive).
    return [
        UpstreamSettings(
            name="notices", kind="kafka", topics=[r"^(igwn\.gwalert|gcn\..+)$"], batch_size=50, poll_timeout_s=0.05
        ),
        UpstreamSettings(name="ztf", kind="kafka", topics=[r"^ztf_[0-9]{8}_programid[0-9]+$"]),
    ]


class ArchiveSettings(_Section):
    """Where the archive lives."""

    database_url: SecretStr | None = None
    """SQLAlchemy URL (``postgresql+psycopg://...``). None → embedded PostgreSQL
    (pgserver) under ``<home>/postgres``."""

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, v: SecretStr | None) -> SecretStr | None:
        # parse now, so a bad URL is a settings error that does not echo it
        if v is not None:
            from sqlalchemy.engine import make_url

            try:
                url = make_url(v.get_secret_value())
            except Exception:  # noqa: BLE001 - the message could hold the URL
                raise ValueError(
                    "not a valid SQLAlchemy URL (form: postgresql+psycopg://<user>:<password>@<host>:<port>/<database>)"
                ) from None
            if "@" in (url.host or "") or "@" in str(url.query.get("host", "")):
                # an unescaped '@' in the password: part of it would be taken for the
                # host name and shown in every connection error
                raise ValueError("the host part holds an '@': percent-encode an '@' in the user or password as %40")
        return v
    raw_store: Literal["file", "postgres"] = "file"
    """Raw upstream bytes: append-only segment files under ``<home>/raw`` (fast; needs a
    shared file system when workers run on several hosts) or a PostgreSQL table."""


class IngestSettings(_Section):
    """The ingest stage (decode → archive → publish)."""

    batch_size: int = 500
    """Messages per consume() call and per archive transaction."""
    poll_timeout_s: float = 0.5


class LightCurveSourceSettings(_Section):
    """Where SPI-ACS light curves come from (``followup.datasources``)."""

    kind: Literal["local", "mmoda", "isdc"] = "local"
    """``local``: OGIP FITS files in ``directory``; ``mmoda``: MMODA via oda-api
    (``instrument='spi_acs'``, ``product='spi_acs_lc'``); ``isdc``: the ISDC SPI-ACS web
    service. The embedded default is ``local`` on the bundled real light curve, so
    the laptop demo reaches no network; ``deploy/presets/production.toml`` uses MMODA."""
    directory: Path | None = REPO_ROOT / "tests" / "data" / "integral"
    """Folder searched recursively for light-curve FITS files (``kind = "local"``)."""
    url: str | None = None
    """Service URL; None → the MMODA dispatcher or ISDC service URL of ``followup``."""
    time_bin_s: float = 0.1
    """Light-curve bin requested from MMODA, s."""


class FollowupRuleSettings(_Section):
    """One trigger rule: which Events start an INTEGRAL follow-up (``followup.rules``).

    Every non-empty list must contain the Event's value (case-insensitive); an empty
    list matches anything. Retractions match on ``source``/``missions`` alone.
    """

    name: str
    """Label stamped on the requests the rule makes."""
    source: Literal["igwn", "gcn", "ztf", "lsst"] | None = None
    missions: list[str] = Field(default_factory=list)
    instruments: list[str] = Field(default_factory=list)
    alert_types: list[str] = Field(default_factory=list)
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


class FollowupSettings(_Section):
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
    lightcurves: LightCurveSourceSettings = Field(default_factory=LightCurveSourceSettings)
    orbit_directory: Path | None = REPO_ROOT / "tests" / "data" / "integral"
    """Folder of INTEGRAL ``INTL-ORBI-SCP`` orbit/attitude files (None: no attitude).
    Default: the bundled real orbit file (revolution 789)."""
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
    poll_timeout_s: float = 0.5


class Settings(BaseSettings):
    """Root settings of one mma-broker process."""

    model_config = SettingsConfigDict(
        env_prefix="MMA_BROKER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = REPO_ROOT / ".mma-broker"
    """State directory: embedded PostgreSQL, raw store, local Kafka data."""
    group_id: str = "mma-broker"
    """Prefix of every consumer group of this broker."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    upstreams: list[UpstreamSettings] = Field(default_factory=_default_upstreams)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    followup: FollowupSettings = Field(default_factory=FollowupSettings)
    limits: DecodeLimits = Field(default_factory=DecodeLimits)
    """Bounds on the work one message may cause (:mod:`broker.limits`)."""
    events_topic: str = "mma.events"
    dlq_topic: str = "mma.dlq"
    followup_requests_topic: str = "mma.followup.requests"
    followup_results_topic: str = "mma.followup.results"
    secrets_file: Path | None = None
    """TOML file (mode 0600) with secrets as top-level keys: ``database_url = "..."``,
    ``<upstream name>_client_secret = "..."`` (e.g. ``gcn_client_secret``) and
    ``kafka_sasl_password = "..."`` (``sasl.password`` of ``[kafka] config``)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(exc) from None
        except PydanticSettingsError as exc:  # e.g. a variable that is not valid JSON
            raise SettingsError(scrub_secrets(f"invalid settings: {exc}")) from None
        except (OSError, ValueError) as exc:  # the TOML preset: unreadable, or not TOML
            toml = self.model_config.get("toml_file") or os.environ.get("MMA_BROKER_CONFIG")
            if not toml:
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not valid TOML ({exc})"
            raise SettingsError(f"config file {toml}: {scrub_secrets(reason)}") from None

    @field_validator("home")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = settings_cls.model_config.get("toml_file") or os.environ.get("MMA_BROKER_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml)))
        return tuple(sources)

    def topic(self, name: str) -> str:
        """A topic name of ours with the configured prefix."""
        return f"{self.kafka.topic_prefix}{name}"

    def config_hash(self) -> str:
        """Short digest of the non-secret settings, stamped on outputs for provenance.

        Leaves out the database URL, client secrets, and every librdkafka setting
        (``[kafka] config``, an upstream's ``config``) whose name contains "password"
        or "secret" (e.g. ``sasl.password``, ``ssl.key.password``).
        """
        data = self.model_dump(mode="json", exclude={"archive": {"database_url"}})
        for section in [data.get("kafka", {}), *data.get("upstreams", [])]:
            section.pop("client_secret", None)
            cfg = section.get("config") or {}
            for key in [k for k in cfg if "password" in k.lower() or "secret" in k.lower()]:
                cfg.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def read_secrets_file(path: Path) -> dict[str, str]:
    """Read a TOML secrets file, refusing one that others can read.

    Raises
    ------
    BrokerError
        If the file is readable or writable by group/others (mode must be 0600 or 0400).
    """
    import tomllib

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise BrokerError(f"secrets file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerError(f"secrets file {path} has mode {oct(mode & 0o777)}; run: chmod 600 {path}")
    try:
        with path.open("rb") as fh:
            return {k: str(v) for k, v in tomllib.load(fh).items()}
    except OSError as exc:
        raise BrokerError(f"secrets file {path}: {exc.strerror}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError; its message holds no value, scrubbed anyway
        raise BrokerError(f"secrets file {path}: not valid TOML ({scrub_secrets(str(exc))})") from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, for the CLI (file → env → overrides), applying secrets_file.

    Parameters
    ----------
    config_file : Path, optional
        TOML preset (see ``deploy/presets/``); same as ``MMA_BROKER_CONFIG``.
    **overrides
        Values that win over everything else.

    Notes
    -----
    An upstream's client secret comes from ``MMA_BROKER_<NAME>_CLIENT_SECRET`` (e.g.
    ``MMA_BROKER_GCN_CLIENT_SECRET`` for the upstream named ``gcn``) or from the
    0600 ``secrets_file`` key ``<name>_client_secret``; never from the TOML preset.
    """
    cls = Settings
    env_config = os.environ.get("MMA_BROKER_CONFIG")
    if config_file is None and env_config and not Path(env_config).is_file():
        raise BrokerError(f"config file {env_config} (MMA_BROKER_CONFIG) not found")
    if config_file is not None:
        if not Path(config_file).is_file():
            raise BrokerError(f"config file {config_file} not found")

        class _FromFile(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": Path(config_file)})

        cls = _FromFile
    settings = cls(**overrides)
    for up in settings.upstreams:
        env_secret = os.environ.get(f"MMA_BROKER_{up.name.upper().replace('-', '_')}_CLIENT_SECRET")
        if env_secret and up.client_secret is None:
            up.client_secret = SecretStr(env_secret)
    if settings.secrets_file is not None:
        secrets = read_secrets_file(settings.secrets_file)
        if "database_url" in secrets and settings.archive.database_url is None:
            settings.archive.database_url = SecretStr(secrets["database_url"])
        for up in settings.upstreams:
            key = f"{up.name}_client_secret"
            if key in secrets and up.client_secret is None:
                up.client_secret = SecretStr(secrets[key])
        if "kafka_sasl_password" in secrets:
            settings.kafka.config.setdefault("sasl.password", secrets["kafka_sasl_password"])
    return settings
