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
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from broker.errors import BrokerError

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """The Kafka cluster that carries our own topics (and, locally, the replayed upstream ones)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka settings for every client (e.g. security.protocol); no secrets here."""
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


def _default_upstreams() -> list[UpstreamSettings]:
    return [
        UpstreamSettings(
            name="local",
            kind="kafka",
            topics=[r"^(igwn\.gwalert|gcn\..+|ztf_[0-9]{8}_programid[0-9]+)$"],
        )
    ]


class ArchiveSettings(_Section):
    """Where the archive lives."""

    database_url: SecretStr | None = None
    """SQLAlchemy URL (``postgresql+psycopg://...``). None → embedded PostgreSQL
    (pgserver) under ``<home>/postgres``."""
    raw_store: Literal["file", "postgres"] = "file"
    """Raw upstream bytes: append-only segment files under ``<home>/raw`` (fast; needs a
    shared file system when workers run on several hosts) or a PostgreSQL table."""


class IngestSettings(_Section):
    """The ingest stage (decode → archive → publish)."""

    batch_size: int = 500
    """Messages per consume() call and per archive transaction."""
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
    events_topic: str = "mma.events"
    dlq_topic: str = "mma.dlq"
    followup_requests_topic: str = "mma.followup.requests"
    followup_results_topic: str = "mma.followup.results"
    secrets_file: Path | None = None
    """TOML file (mode 0600) with secrets as top-level keys: ``database_url = "..."`` and
    ``<upstream name>_client_secret = "..."`` (e.g. ``gcn_client_secret``)."""

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
        toml = os.environ.get("MMA_BROKER_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml)))
        return tuple(sources)

    def topic(self, name: str) -> str:
        """A topic name of ours with the configured prefix."""
        return f"{self.kafka.topic_prefix}{name}"

    def config_hash(self) -> str:
        """Short digest of the non-secret settings, stamped on outputs for provenance."""
        data = self.model_dump(mode="json", exclude={"archive": {"database_url"}})
        for up in data.get("upstreams", []):
            up.pop("client_secret", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def read_secrets_file(path: Path) -> dict[str, str]:
    """Read a TOML secrets file, refusing one that others can read.

    Raises
    ------
    BrokerError
        If the file is readable or writable by group/others (mode must be 0600 or 0400).
    """
    import tomllib

    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerError(f"secrets file {path} has mode {oct(mode & 0o777)}; run: chmod 600 {path}")
    with path.open("rb") as fh:
        return {k: str(v) for k, v in tomllib.load(fh).items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, for the CLI (file → env → overrides), applying secrets_file.

    Parameters
    ----------
    config_file : Path, optional
        TOML preset (see ``deploy/presets/``); same as ``MMA_BROKER_CONFIG``.
    **overrides
        Values that win over everything else.
    """
    if config_file is not None:
        os.environ["MMA_BROKER_CONFIG"] = str(config_file)
    settings = Settings(**overrides)
    if settings.secrets_file is not None:
        secrets = read_secrets_file(settings.secrets_file)
        if "database_url" in secrets and settings.archive.database_url is None:
            settings.archive.database_url = SecretStr(secrets["database_url"])
        for up in settings.upstreams:
            key = f"{up.name}_client_secret"
            if key in secrets and up.client_secret is None:
                up.client_secret = SecretStr(secrets[key])
    return settings
