"""Settings of publishing: the ``[publish]`` section of the broker's settings.

A settings plugin like ``[enrich]``: ``pyproject.toml`` registers
:class:`PublishSettings` under the entry-point group ``mma_broker.settings`` as
``publish``, so the TOML tables ``[publish]``, ``[publish.hermes]``,
``[publish.gcn_notice]``, ``[publish.gcn_circular]``, ``[publish.tns]``,
``[publish.approval]`` and the variables ``MMA_BROKER_PUBLISH__*`` (nested with
``__``, e.g. ``MMA_BROKER_PUBLISH__HERMES__PASSWORD``) reach it.

Secrets (the Hopskotch SCRAM password, the GCN Kafka client secret, the SMTP password,
the TNS API key) are ``SecretStr``: never printed, logged or put in an error. They come
from the environment or from the 0600 ``secrets_file`` under the keys of
:attr:`PublishSettings.secrets_file_keys` (``hermes_password``, ``gcn_notice_password``,
``smtp_password``, ``tns_api_key``), never from the TOML preset by convention.

Imports pydantic and :mod:`broker.config` only: settings load on every command.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from broker.config import Section

CHANNEL_NAMES = ("hermes", "gcn-notice", "gcn-circular", "tns")
"""The channels the broker knows by name (an outbox entry's ``channel``)."""


class HermesSettings(Section):
    """HERMES messages over Hopskotch (hop-client).

    Locally the default is the topic ``hermes.test`` on our own Kafka with hop's
    unauthenticated mode; in production ``url = "kafka://kafka.scimma.org/"``,
    ``auth = "scram"`` and the SCRAM user name and password of a Hopskotch credential.
    """

    enabled: bool = True
    """Publish HERMES messages (the reports stage writes them to the outbox)."""
    topic: str = "hermes.test"
    """Topic the messages go to (``hermes.test`` or ``hermes.discovery`` on Hopskotch).
    Not prefixed with ``[kafka] topic_prefix``: it is HERMES's name."""
    url: str | None = None
    """hop URL of the broker, ``kafka://host:port/``; None: ``kafka://<[kafka] bootstrap_servers>/``."""
    auth: Literal["none", "scram"] = "none"
    """``none``: hop's unauthenticated mode (local Kafka); ``scram``: SCRAM user name and password."""
    username: str | None = None
    """SCRAM user name of a Hopskotch credential (not secret)."""
    password: SecretStr | None = None
    """SCRAM password: ``MMA_BROKER_PUBLISH__HERMES__PASSWORD`` or secrets_file ``hermes_password``."""
    mechanism: str = "SCRAM-SHA-512"
    """SASL mechanism of the credential (Hopskotch: SCRAM-SHA-512)."""
    test_topics: list[str] = Field(default_factory=lambda: ["hermes.test"])
    """Topics counted as test topics for ``[publish.approval] hermes_test``."""
    submitter: str = "mma-broker"
    """HERMES ``submitter`` field."""
    authors: str = ""
    """HERMES ``authors`` field (free text, e.g. "A. Person (Inst.), B. Person (Inst.)")."""


class GcnNoticeSettings(Section):
    """Machine-readable GCN notices (JSON, GCN unified schema) produced to a Kafka topic.

    Locally our own Kafka; for GCN, ``bootstrap_servers`` and the producer credentials
    GCN issues (``config`` for librdkafka settings such as ``security.protocol``,
    ``sasl.mechanisms``, ``sasl.username``; the secret in ``password``).
    """

    enabled: bool = True
    topic: str = "mma.gcn.notices.integral"
    """Topic of the notices. On our own Kafka ``[kafka] topic_prefix`` goes in front. Not
    under ``gcn.``: the default notices upstream subscribes to ``^gcn\\..+`` on the same
    Kafka, and would read our own notices back as alerts. For GCN, the topic GCN assigns."""
    bootstrap_servers: str | None = None
    """None: our own Kafka (``[kafka] bootstrap_servers``, with ``[kafka] config``)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka producer settings (keep secrets out: use ``password``)."""
    client_id: str | None = None
    """Producer credential id / SASL user name (not secret)."""
    password: SecretStr | None = None
    """Producer secret (``sasl.password``): ``MMA_BROKER_PUBLISH__GCN_NOTICE__PASSWORD`` or
    secrets_file ``gcn_notice_password``."""


class GcnCircularSettings(Section):
    """GCN Circulars submitted by e-mail (SMTP), after approval."""

    enabled: bool = True
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    """Upgrade the connection with STARTTLS before logging in."""
    ssl: bool = False
    """Implicit TLS (SMTPS, usually port 465)."""
    username: str | None = None
    password: SecretStr | None = None
    """SMTP password: ``MMA_BROKER_PUBLISH__GCN_CIRCULAR__PASSWORD`` or secrets_file ``smtp_password``."""
    from_address: str = "mma-broker@localhost"
    """``From`` of the e-mail: GCN accepts Circulars only from a registered address."""
    to: list[str] = Field(default_factory=list)
    """Recipients (GCN: ``circulars@gcn.nasa.gov``). Empty: a circular cannot be sent."""
    authors: str = ""
    """Author line of the circular (first line of the body)."""
    timeout_s: float = Field(30.0, gt=0, le=600)


class TnsSettings(Section):
    """AT reports to the Transient Name Server (bulk-report API). Off by default."""

    enabled: bool = False
    base_url: str = "https://sandbox.wis-tns.org/api"
    """API base URL: the sandbox by default; production ``https://www.wis-tns.org/api``."""
    api_key: SecretStr | None = None
    """Bot API key: ``MMA_BROKER_PUBLISH__TNS__API_KEY`` or secrets_file ``tns_api_key``."""
    bot_id: int | None = None
    """TNS bot id (the ``tns_marker`` User-Agent names it)."""
    bot_name: str | None = None
    reporting_group: str = ""
    """TNS id (digits) of the group the AT reports are made for (``reporting_group_id``);
    required to report. TNS lists its groups by id."""
    source_group: str = ""
    """TNS id of the discovery data-source group (``discovery_data_source_id``); empty:
    ZTF's (48), whose public alerts the candidates come from."""
    reporter: str = ""
    """``reporter`` of the AT reports: names and affiliations ("A. Person (Inst.) on
    behalf of ..."); required to report."""
    at_type: str = "PSN"
    """AT type by TNS name (``PSN``, ``PNV``, ``AGN``, ``NUC``, ``Other``) or id."""
    observer: str = "Robot"
    """``observer`` of the photometry (ZTF's bots say "Robot")."""
    remarks: str = ""
    """Text put before the generated remarks (which name the multi-messenger event)."""
    report_path: str = "bulk-report"
    """Report endpoint under ``base_url`` (``set/bulk-report`` on TNS's newer API paths)."""
    reply_path: str = "bulk-report-reply"
    """Reply endpoint under ``base_url`` (``get/bulk-report-reply`` on the newer paths)."""
    timeout_s: float = Field(30.0, gt=0, le=600)
    poll_interval_s: float = Field(30.0, gt=0)
    """How often a pending bulk report's reply is asked for, s."""


class ApprovalSettings(Section):
    """Which channels need ``mma-broker outbox approve ID`` before anything is sent."""

    gcn_circular: bool = True
    tns: bool = True
    gcn_notice: bool = False
    hermes_test: bool = False
    """HERMES messages to a test topic (``[publish.hermes] test_topics``)."""
    hermes: bool = True
    """HERMES messages to any other topic (``hermes.discovery``, ...)."""


class PublishSettings(Section):
    """Publishing: the outbox, the sender stage ``publish`` and its channels (docs/publishing.md)."""

    enabled: bool = True
    """Run the sender loop; false: ``mma-broker run`` starts none (entries wait in the outbox)."""
    public_base_url: str = "http://127.0.0.1:8008"
    """Base URL under which ``mma-broker serve`` is reachable from outside; messages link
    artifacts as ``<public_base_url>/artifacts/sha256/<hex>``."""
    serve_host: str = "127.0.0.1"
    """Address ``mma-broker serve`` listens on."""
    serve_port: int = Field(8008, ge=0, le=65535)
    """Port of ``mma-broker serve``."""
    batch_size: int = Field(20, ge=1, le=10_000)
    """Entries claimed per round of the sender."""
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    """Longest wait of the sender between rounds when nothing is due, s. A new due entry
    (put, approved, retried) wakes it at once (PostgreSQL ``NOTIFY``); entries that
    become due by their ``retry_at`` and replies to poll are found within this."""
    attempts_per_claim: int = Field(3, ge=1, le=20)
    """Sends tried per claim (exponential backoff with jitter in between) before the
    entry goes to ``failed`` with a ``retry_at``."""
    retry_initial_s: float = Field(1.0, ge=0)
    """First wait between two tries of one claim, s (then doubled, with jitter)."""
    retry_max_s: float = Field(30.0, ge=0)
    """Longest wait between two tries of one claim, s."""
    failed_retry_initial_s: float = Field(60.0, ge=0)
    """Delay before a failed entry is claimed again, s, doubled per failed claim."""
    failed_retry_max_s: float = Field(3600.0, ge=0)
    """Longest delay before a failed entry is claimed again, s."""
    max_attempts: int = Field(30, ge=1)
    """After this many sends in all, a failed entry gets no ``retry_at``: only
    ``mma-broker outbox retry ID`` sends it again."""
    channels: dict[str, str] = Field(default_factory=dict)
    """Extra channels by name, each ``"module:factory"``; ``factory(settings)`` returns a
    :class:`broker.sinks.channels.Channel` (or None when disabled). Channels of installed
    packages register under the entry-point group ``mma_broker.channels`` instead."""
    hermes: HermesSettings = Field(default_factory=HermesSettings)
    gcn_notice: GcnNoticeSettings = Field(default_factory=GcnNoticeSettings)
    gcn_circular: GcnCircularSettings = Field(default_factory=GcnCircularSettings)
    tns: TnsSettings = Field(default_factory=TnsSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)

    secrets_file_keys: ClassVar[dict[str, str]] = {
        "hermes_password": "hermes.password",
        "gcn_notice_password": "gcn_notice.password",
        "smtp_password": "gcn_circular.password",
        "tns_api_key": "tns.api_key",
    }
    """Keys of the ``secrets_file`` that fill fields of this section (key → dotted field),
    when the field is not set otherwise (:func:`broker.config.load_settings`)."""

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    def channel_settings(self, channel: str) -> Section | None:
        """The sub-section of a built-in channel (``"gcn-notice"`` → ``gcn_notice``), else None."""
        return getattr(self, channel.replace("-", "_"), None) if channel in CHANNEL_NAMES else None

    def requires_approval(self, channel: str, payload: dict | None = None) -> bool:
        """Whether an entry for ``channel`` waits for approval by default.

        Parameters
        ----------
        channel : str
            ``hermes``, ``gcn-notice``, ``gcn-circular``, ``tns`` or an extra channel
            (extra channels: no approval).
        payload : dict, optional
            For ``hermes``: its ``topic`` (else ``[publish.hermes] topic``) decides
            between ``hermes_test`` and ``hermes``.
        """
        a = self.approval
        if channel == "hermes":
            topic = (payload or {}).get("topic") or self.hermes.topic
            return a.hermes_test if topic in self.hermes.test_topics else a.hermes
        return {"gcn-circular": a.gcn_circular, "tns": a.tns, "gcn-notice": a.gcn_notice}.get(channel, False)

    def artifact_url(self, sha256: str) -> str:
        """Public link of a content-addressed artifact (served by ``mma-broker serve``)."""
        return f"{self.public_base_url}/artifacts/sha256/{sha256}"
