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

Plugins add their own sections: every entry point of the group
``mma_broker.settings`` (:mod:`broker.plugins`) names a pydantic model, which becomes
the field of that name in the root settings class that :func:`settings_class` builds
(``followup = "followup.config:FollowupSettings"`` gives the ``[followup]`` table and
the ``MMA_BROKER_FOLLOWUP__*`` variables). The core :class:`Settings` knows no plugin;
build settings with :func:`load_settings` or ``settings_class()(...)``, never with
``Settings(...)`` when a plugin's section matters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as PydanticSettingsError

from broker import plugins
from broker.errors import BrokerError
from broker.event import Source
from broker.limits import DecodeLimits

log = logging.getLogger(__name__)


def default_home() -> Path:
    """The default state directory, a per-user data folder (XDG Base Directory
    specification): ``$XDG_DATA_HOME/mma-broker``, else ``~/.local/share/mma-broker``.
    A relative ``XDG_DATA_HOME`` is ignored, as the specification says.

    Never inside the installation (site-packages may be read-only and is shared by every
    user of the venv). The repository's scripts (``deploy/``) set
    ``MMA_BROKER_HOME=<repository>/.mma-broker`` so the demo stays in the clone.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "mma-broker"


class SettingsError(BrokerError):
    """Invalid settings: one line per problem, ``invalid setting <path>: <problem>``.

    Never holds an input value: a wrong value may be (or sit next to) a secret.
    """


_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|database_url|sasl|api_key", re.IGNORECASE)
_SECRET_KEY = re.compile(r"password|secret|token|credential", re.IGNORECASE)
"""librdkafka keys whose values are secrets (``sasl.password``, ``ssl.key.password``, ...)."""
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^\s/:@]*:)(?!<password>@)[^\s@]*@")
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>(?:secret|password|passwd|token|api_key)[\w.-]*['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}\]]+", re.IGNORECASE)


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


class Section(BaseModel):
    """Base of a settings section: unknown keys are errors (a typo must not pass silently).

    Plugins' sections (entry-point group ``mma_broker.settings``) derive from it too.
    """

    model_config = ConfigDict(extra="forbid")

    def __repr_args__(self) -> Any:
        # librdkafka tables (``[kafka] config``, an upstream's ``config``) are plain dicts
        # that may hold ``sasl.password``: a repr (a log line, a traceback's locals) shows
        # their secret-named values as '**********', like a SecretStr.
        for name, value in super().__repr_args__():
            if isinstance(value, dict) and any(isinstance(k, str) and _SECRET_KEY.search(k) for k in value):
                value = {k: "**********" if isinstance(k, str) and _SECRET_KEY.search(k) else v
                         for k, v in value.items()}
            yield name, value


class KafkaSettings(Section):
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
    transactions: bool = True
    """Produce each stage batch and commit its offsets in one Kafka transaction, so
    ``read_committed`` readers see every output exactly once (needs a Kafka with the
    transaction coordinator: any Kafka >= 2.5). False: at least once."""
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,200}$")
    """Names this process in transactional ids (default: the host name). Give each
    process on one host its own when several run the same stage there."""
    replication_factor: int = Field(1, ge=1, le=32)
    """Replicas of each topic a stage creates (``ensure_topics``; an existing topic keeps
    its own). 1 for the one-node local Kafka; 3 on a three-broker cluster
    (``deploy/kafka/cluster.sh``, Strimzi), where the cluster's ``min.insync.replicas``
    (2) with the producers' ``acks=all`` lets one broker go without losing a write."""
    retention_ms: dict[str, int] = Field(default_factory=dict)
    """Kafka ``retention.ms`` per topic of ours, by name without the prefix
    (``{"mma.events" = 2592000000}``: 30 days; -1: forever). Applied by every stage when
    it ensures its topics: set at creation, and changed on an existing topic whose value
    differs (needs the AlterConfigs permission; without it, one warning). Topics not
    named keep the cluster's default (``log.retention.hours``, 7 days by default)."""

    @field_validator("retention_ms")
    @classmethod
    def _retention(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k, ms in v.items() if ms < -1 or ms == 0]
        if bad:
            raise ValueError(f"retention.ms must be -1 (forever) or > 0, not for {', '.join(sorted(bad))}")
        return v


class UpstreamSettings(Section):
    """One upstream alert stream consumed by the ingest stage.

    ``kind`` picks the protocol module: ``kafka`` (any Kafka, e.g. the local one that
    ``mma-broker replay`` fills), ``gcn`` (NASA GCN Kafka via gcn-kafka, OIDC client
    credentials), ``hop`` (SCiMMA Hopskotch via hop-client credentials, for
    ``igwn.gwalert``), ``ztf`` (ZTF public stream via confluent-kafka).
    """

    name: str
    """Label used in logs and metrics."""
    kind: Literal["kafka", "gcn", "hop", "ztf"] = "kafka"
    """Protocol of the upstream: ``kafka``, ``gcn``, ``hop`` or ``ztf`` (see above)."""
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
    fill_s: float | None = Field(None, ge=0)
    """Once a message arrived, how long to wait for more before handing the batch over, s
    (0: at once, with whatever came with it — for a stream idle most of the time, such as
    the notices; unset: up to ``poll_timeout_s`` or ``batch_size`` messages)."""


def _default_upstreams() -> list[UpstreamSettings]:
    # Notices (GW, GRB, neutrino) and ZTF in separate consumers: a GCN notice must
    # not wait behind a 500-alert ZTF batch (~40 MB of raw bytes to archive).
    return [
        UpstreamSettings(
            name="notices", kind="kafka", topics=[r"^(igwn\.gwalert|gcn\..+|voevent\..+)$"], batch_size=50, poll_timeout_s=0.05,
            fill_s=0.0,  # a notice is handed over as it arrives (docs/publishing-latency.md)
        ),
        # optical surveys share the large-batch consumer: ZTF (and ZTF alerts relayed by
        # brokers, replayed onto the original's topic) and Rubin (lsst-alerts-v<M>.<m>)
        UpstreamSettings(name="ztf", kind="kafka",
                         topics=[r"^(ztf_[0-9]{8}_programid[0-9]+|lsst-alerts-v[0-9]+\.[0-9]+)$"]),
    ]


class ArchiveSettings(Section):
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
    shared file system when workers run on several hosts) or a PostgreSQL table. With
    ``file``, the sources in ``raw_store_postgres_sources`` still go to the table."""
    raw_store_postgres_sources: list[Source] = Field(
        default_factory=lambda: ["gcn", "igwn", "voevent", "user"])
    """With ``raw_store = "file"``: Event sources whose raw bytes go to the PostgreSQL table
    in the rows' own transaction, not to a segment file. Default: the notices (every
    source but the surveys ztf and lsst). A notice is a few kB on the latency path; its
    segment file's ``fsync`` waited, on one file system, behind the survey ingest's
    ~80 MB/s of segment data (p99 124 ms under 1,000 ZTF alerts/s), while in the table it
    costs no flush beyond its commit's. The surveys' bytes stay in segment files: in the
    table they would go through the WAL that every commit flushes
    (docs/publishing-latency.md). ``[]``: everything in segment files. Dead letters and
    follow-up artifacts (bytes without an Event) go to the segment files; every reader
    finds bytes by their ref, so changing this list needs no migration."""
    raw_retention_days: float | None = Field(None, gt=0)
    """``mma-broker archive gc`` also removes the raw bytes of Events archived more than
    this many days ago (the Events stay; their raw bytes are gone). None: keep forever."""
    gc_grace_hours: float = Field(168.0, ge=0)
    """``mma-broker archive gc`` keeps raw bytes no row refers to for this long, h: the
    bytes of dead letters are referenced from ``mma.dlq`` only, so keep it at least the
    retention of that topic (Kafka's default: 168 h)."""


class IngestSettings(Section):
    """The ingest stage (decode → archive → publish)."""

    batch_size: int = 500
    """Messages per consume() call and per archive transaction."""
    poll_timeout_s: float = 0.5
    """Longest wait for a batch to fill, s; a batch is whatever arrived by then."""


class MetricsSettings(Section):
    """Prometheus metrics and health endpoints of a broker process (:mod:`broker.metrics`).

    ``GET /metrics`` (Prometheus text format), ``GET /health`` (JSON; 200 or 503) and
    ``GET /ready`` while ``mma-broker run`` runs. Every process needs its own port: a
    port in use logs one warning and the broker runs on without the endpoints.
    """

    enabled: bool = True
    """Serve the endpoints."""
    host: str = "127.0.0.1"
    """Address to listen on; ``0.0.0.0`` (or ``::``) lets a Prometheus on another host scrape."""
    port: int = Field(default=9108, ge=0, le=65535)
    """TCP port; 0 picks a free one (the log says which)."""
    max_poll_age_s: float = Field(default=300.0, gt=0)
    """``/health`` calls a stage unhealthy when its poll loop has not polled for longer
    than this, s. The default equals librdkafka's ``max.poll.interval.ms`` (300 s), after
    which Kafka takes the consumer's partitions away anyway."""


class Settings(BaseSettings):
    """Root settings of one mma-broker process: the core's sections.

    The class the broker builds adds one field per settings plugin
    (:func:`settings_class`); a section model may name the ``secrets_file`` keys that
    fill its fields in a class variable ``secrets_file_keys`` (key → field).
    """

    model_config = SettingsConfigDict(
        env_prefix="MMA_BROKER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=default_home)
    """State directory: embedded PostgreSQL, raw store, follow-up cache and plots (and the
    local Kafka of ``deploy/kafka/kafka.sh``, which reads ``MMA_BROKER_HOME`` too).
    Default :func:`default_home` (``~/.local/share/mma-broker``)."""
    group_id: str = "mma-broker"
    """Prefix of every consumer group of this broker."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    upstreams: list[UpstreamSettings] = Field(default_factory=_default_upstreams)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    limits: DecodeLimits = Field(default_factory=DecodeLimits)
    """Bounds on the work one message may cause (:mod:`broker.limits`)."""
    events_topic: str = "mma.events"
    """Topic of the normalized Events (``[kafka] topic_prefix`` goes in front)."""
    dlq_topic: str = "mma.dlq"
    """Dead-letter topic of every stage (``[kafka] topic_prefix`` goes in front)."""
    lanes: dict[str, list[str]] = Field(default_factory=dict)
    """Lanes of the enrich and filters stages: lane name → the Event sources it handles
    (``"*"``: every source no other lane names; exactly one lane holds it). Each lane
    runs its own loop of each stage (consumer group ``<group_id>.enrich.<lane>``,
    transactional ids ``<group_id>.enrich.<lane>.<instance>``), skipping the other
    lanes' records by their ``mma.event.id`` header, so a GCN notice never waits behind
    ZTF Events: ``{notices = ["*"], optical = ["ztf", "lsst"]}``. ``mma-broker run
    --lane NAME`` runs one lane's loops (:mod:`broker.lanes`,
    docs/publishing-latency.md). Empty (the default): one loop per stage, for every source."""
    secrets_file: Path | None = None
    """TOML file (mode 0600) with secrets as top-level keys: ``database_url = "..."``,
    ``<upstream name>_client_secret = "..."`` (e.g. ``gcn_client_secret``) and
    ``kafka_sasl_password = "..."`` (``sasl.password`` of ``[kafka] config``), plus the
    keys plugins' sections declare (``mmoda_token`` of ``[followup]``)."""

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

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from broker.lanes import check_lanes

        return check_lanes(v)

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


@lru_cache(maxsize=None)
def settings_class() -> type[Settings]:
    """The root settings class: :class:`Settings` plus one field per settings plugin.

    Each entry point ``NAME = "module:Model"`` of the group ``mma_broker.settings``
    becomes the field ``NAME: Model`` with ``Model()`` as default, so its TOML table
    ``[NAME]``, its variables ``MMA_BROKER_NAME__*``, the one-line errors and
    :meth:`Settings.config_hash` work as for the core's sections. Built once per
    process (pydantic's ``create_model``; the plugins' metadata is read once).

    A plugin whose model fails to load, or whose name is a core field, does not stop
    the broker: a warning names it (:class:`broker.plugins.PluginError`) and its
    section is kept as an unchecked table, so a preset that configures it still loads
    and the commands that do not need it still work.
    """
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name in plugins.available(plugins.SETTINGS):
        try:
            if name in Settings.model_fields:
                raise plugins.PluginError(f"plugin {name!r} ({plugins.SETTINGS}) has the name of a core setting")
            model = plugins.load(plugins.SETTINGS, name)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise plugins.PluginError(f"plugin {name!r} ({plugins.SETTINGS}) is not a pydantic model")
        except plugins.PluginError as exc:
            log.warning("%s; its [%s] settings are not checked", exc, name)
            if name not in Settings.model_fields:
                fields[name] = (dict[str, Any], Field(default_factory=dict))
            continue
        fields[name] = (model, Field(default_factory=model))
    if not fields:
        return Settings
    return create_model("Settings", __base__=Settings, __module__=__name__,
                        __doc__=f"{Settings.__doc__.strip()}\n\n    Plugin sections: {', '.join(fields)}.",
                        **fields)


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

    The class is :func:`settings_class`: the core's sections and the plugins'.

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
    A plugin's section names its own ``secrets_file`` keys (``secrets_file_keys``,
    e.g. ``mmoda_token`` for ``followup.mmoda_token``); the environment
    (``MMA_BROKER_FOLLOWUP__MMODA_TOKEN``) wins over the file.
    """
    cls = settings_class()
    env_config = os.environ.get("MMA_BROKER_CONFIG")
    if config_file is None and env_config and not Path(env_config).is_file():
        raise BrokerError(f"config file {env_config} (MMA_BROKER_CONFIG) not found")
    if config_file is not None:
        if not Path(config_file).is_file():
            raise BrokerError(f"config file {config_file} not found")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(**{**cls.model_config, "toml_file": Path(config_file)})

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
        for name in type(settings).model_fields.keys() - Settings.model_fields.keys():
            section = getattr(settings, name)
            for key, field in getattr(type(section), "secrets_file_keys", {}).items():
                *parents, field = field.split(".")  # "hermes.password": a field of a sub-section
                target = section
                for p in parents:
                    target = getattr(target, p, None)
                if key in secrets and target is not None and getattr(target, field, None) is None:
                    setattr(target, field, SecretStr(secrets[key]))
    return settings
