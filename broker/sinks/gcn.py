"""GCN channels: machine-readable notices on a GCN Kafka topic, Circulars by e-mail.

``gcn-notice``
    A JSON notice valid against the GCN unified schema (the core schemas of
    nasa-gcn/gcn-schema v7.2.1, vendored byte for byte in ``broker/schemas/gcn/core/``,
    and the mission schema of the broker's INTEGRAL SPI-ACS follow-up built on them,
    ``broker/schemas/gcn/integral/spiacs_followup.schema.json``; see the README there).
    Produced with confluent-kafka to ``[publish.gcn_notice] topic`` with the outbox
    entry's idempotency key as the Kafka key; GCN's producer credentials (client id and
    secret) come from settings. :meth:`GcnNoticeChannel.recover` reads the topic for that
    key, so an entry left in ``sending`` by a crash is either found (sent) or not (send
    again): never doubled, never lost.
``gcn-circular``
    A GCN Circular (``{"subject", "body", "references"}``, see
    :func:`followup.reports.gcn.circular_draft`) submitted by e-mail over SMTP
    (``smtplib``; STARTTLS or implicit TLS and the log-in from ``[publish.gcn_circular]``).
    Sent only once the outbox entry was approved (the outbox's business: approval is
    required for circulars by default). An e-mail cannot be looked up after the fact, so
    :meth:`GcnCircularChannel.recover` raises ``ChannelError(retryable=False)``: the entry
    becomes ``unknown`` and is never re-sent automatically.

The schemas are read from the core's own package data: the core never imports the
follow-up (``followup.reports.gcn`` builds the notices and validates them with
:func:`validate_notice` from here).

Credentials never reach a log line, an exception message or a receipt: the SMTP and
Kafka secrets are ``SecretStr`` until the moment they are handed to the library, and
every error text passes through :func:`broker.config.scrub_secrets`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import smtplib
import socket
import ssl
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from broker.config import scrub_secrets
from broker.sinks.channels import ChannelError

log = logging.getLogger(__name__)

__all__ = [
    "AUTHORS_MISSING", "GCN_SCHEMA_DIR", "NOTICE_SCHEMA_ID", "GcnCircularChannel", "GcnNoticeChannel", "gcn_circular_channel",
    "gcn_notice_channel", "gcn_schema_registry", "validate_circular", "validate_notice",
]

GCN_SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "gcn"
"""Vendored GCN unified schemas (``core/``) and the broker's mission schema (``integral/``)."""

NOTICE_SCHEMA_ID = "https://mma-broker.org/schemas/gcn/notices/integral/spiacs_followup.schema.json"
"""``$id`` of the INTEGRAL SPI-ACS follow-up notice schema (the notices' ``$schema``)."""

AUTHORS_MISSING = "[authors: set [publish.gcn_circular] authors]"
"""First line of a circular draft made without authors; :func:`validate_circular` refuses it."""

MAX_SUBJECT_CHARS = 200
"""Longest circular subject accepted (real ones are one line of 40-120 characters)."""


@functools.cache
def gcn_schema_registry() -> Registry:
    """A :class:`referencing.Registry` of every vendored schema, keyed by its ``$id``.

    Offline: a ``$ref`` to a schema that is not vendored is an error, never a download.
    """
    resources = []
    for path in sorted(GCN_SCHEMA_DIR.rglob("*.schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["$id"], Resource.from_contents(contents, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


@functools.cache
def _validator(schema_id: str) -> jsonschema.Draft202012Validator:
    registry = gcn_schema_registry()
    schema = registry.contents(schema_id)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _first_error(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError | None:
    """The error to report: the best match among those that name a field, before
    ``unevaluatedProperties`` (a property of a failing ``allOf`` branch counts as
    unevaluated, which would hide the real error behind the root path)."""
    named = [e for e in errors if e.validator != "unevaluatedProperties"]
    return jsonschema.exceptions.best_match(named or errors)


def validate_notice(payload: Mapping[str, Any]) -> None:
    """Check a GCN notice against the vendored schema its ``$schema`` names.

    Parameters
    ----------
    payload : mapping
        The notice (JSON-ready dict).

    Raises
    ------
    ValueError
        ``GCN notice invalid at <JSON path>: <what>`` for the first (best-matching)
        error; also when ``$schema`` is missing or names no vendored schema, or when a
        value is not JSON (NaN, infinity, a non-string key).
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"GCN notice invalid at $: not an object ({type(payload).__name__})")
    schema_id = payload.get("$schema")
    known = {uri for uri in gcn_schema_registry()}  # noqa: C416 - Registry iterates over its URIs
    if schema_id not in known:
        raise ValueError(f"GCN notice invalid at $['$schema']: {schema_id!r} is not a vendored GCN schema "
                         f"(expected {NOTICE_SCHEMA_ID})")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"GCN notice invalid at $: not JSON ({exc})") from None
    error = _first_error(list(_validator(schema_id).iter_errors(payload)))
    if error is not None:
        raise ValueError(f"GCN notice invalid at {error.json_path}: {error.message}")


def validate_circular(payload: Mapping[str, Any]) -> None:
    """Check a circular draft: ``subject`` one line, ``body`` text, ``references`` strings.

    Raises
    ------
    ValueError
        Naming the field (``$.subject``, ``$.body``, ``$.references[2]``) and what is wrong.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"GCN circular invalid at $: not an object ({type(payload).__name__})")
    subject, body, refs = payload.get("subject"), payload.get("body"), payload.get("references", [])
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("GCN circular invalid at $.subject: missing or empty")
    if "\n" in subject or "\r" in subject or len(subject) > MAX_SUBJECT_CHARS:
        raise ValueError(f"GCN circular invalid at $.subject: not one line of at most {MAX_SUBJECT_CHARS} characters")
    if not isinstance(body, str) or not body.strip():
        raise ValueError("GCN circular invalid at $.body: missing or empty")
    if body.startswith(AUTHORS_MISSING):
        raise ValueError("GCN circular invalid at $.body: no authors ([publish.gcn_circular] authors is empty)")
    if not isinstance(refs, list):
        raise ValueError("GCN circular invalid at $.references: not a list")
    for i, ref in enumerate(refs):
        if not isinstance(ref, str):
            raise ValueError(f"GCN circular invalid at $.references[{i}]: not a string")
    for name in ("subject", "body"):
        if "\x00" in payload[name]:
            raise ValueError(f"GCN circular invalid at $.{name}: holds a NUL character")


def _section(settings: Any, name: str) -> Any:
    """``settings.publish.<name>`` of the broker's Settings, or ``settings.<name>`` of a
    PublishSettings, or ``settings`` itself when it already is that section."""
    publish = getattr(settings, "publish", settings)
    return getattr(publish, name, publish)


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def _created_ms(entry: Any) -> int | None:
    created = getattr(entry, "created_at", None)
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(created, datetime):
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return int((created - timedelta(minutes=5)).timestamp() * 1000)


class GcnNoticeChannel:
    """The ``gcn-notice`` channel: JSON notices produced to a Kafka topic.

    Parameters
    ----------
    topic : str
        Topic of the notices (full name, prefix included).
    config : dict
        librdkafka settings of the producer (``bootstrap.servers``, ``security.protocol``,
        ``sasl.*``...). Secrets inside stay out of every log line and error.
    timeout_s : float
        How long a send waits for the broker's acknowledgement, and recover() reads.
    """

    name = "gcn-notice"

    def __init__(self, topic: str, config: Mapping[str, Any], *, timeout_s: float = 30.0) -> None:
        self.topic = topic
        self._config = dict(config)
        self.timeout_s = timeout_s
        self._producer: Any = None

    @classmethod
    def from_settings(cls, settings: Any) -> "GcnNoticeChannel | None":
        """The channel of ``[publish.gcn_notice]``; None when it is disabled.

        ``bootstrap_servers`` unset: our own Kafka (``[kafka] bootstrap_servers`` and
        ``[kafka] config``) and the topic gets ``[kafka] topic_prefix``. ``client_id`` and
        ``password`` become ``sasl.username`` / ``sasl.password`` (GCN Kafka's producer
        credentials; add ``security.protocol`` and ``sasl.mechanisms`` in ``config``).
        """
        s = _section(settings, "gcn_notice")
        if not getattr(s, "enabled", True):
            return None
        kafka = getattr(settings, "kafka", None)
        config: dict[str, Any]
        if s.bootstrap_servers is None and kafka is not None:
            config = {"bootstrap.servers": kafka.bootstrap_servers, **dict(kafka.config)}
            topic = f"{kafka.topic_prefix}{s.topic}"
        else:
            config = {"bootstrap.servers": s.bootstrap_servers or "127.0.0.1:9092"}
            topic = s.topic
        config.update(s.config)
        if s.client_id:
            config["sasl.username"] = s.client_id
        password = _secret(s.password)
        if password is not None:
            config["sasl.password"] = password
        return cls(topic, config)

    def _client_config(self, **extra: Any) -> dict[str, Any]:
        return {**self._config, "logger": logging.getLogger("broker.librdkafka"), **extra}

    def _get_producer(self) -> Any:
        if self._producer is None:
            import confluent_kafka

            self._producer = confluent_kafka.Producer(self._client_config(**{
                "enable.idempotence": True, "acks": "all", "linger.ms": 0}))
        return self._producer

    def validate(self, payload: dict) -> None:
        """See :func:`validate_notice`."""
        validate_notice(payload)

    def send(self, entry: Any) -> dict:
        """Produce ``entry.payload`` under the key ``entry.key``; wait for the acknowledgement.

        Returns
        -------
        dict
            ``{"topic", "partition", "offset", "key"}``.

        Raises
        ------
        ChannelError
            ``retryable=False`` for an invalid notice; ``retryable=True`` when Kafka did not
            acknowledge it within ``timeout_s`` or refused it with a retriable error.
        """
        try:
            self.validate(entry.payload)
        except ValueError as exc:
            raise ChannelError(str(exc), retryable=False) from None
        value = json.dumps(entry.payload, separators=(",", ":"), allow_nan=False).encode()
        outcome: dict[str, Any] = {}

        def delivered(err: Any, msg: Any) -> None:
            outcome["err"], outcome["msg"] = err, msg

        producer = self._get_producer()
        try:
            producer.produce(self.topic, value=value, key=entry.key.encode(), on_delivery=delivered,
                             headers=[("content-type", b"application/json"),
                                      ("mma.outbox.key", entry.key.encode())])
        except BufferError as exc:
            raise ChannelError(f"gcn-notice: producer queue full ({exc})", retryable=True) from None
        except Exception as exc:  # KafkaException: bad topic name, message too large, ...
            raise ChannelError(scrub_secrets(f"gcn-notice: produce to {self.topic} refused: {exc}"),
                               retryable=False) from None
        producer.flush(self.timeout_s)
        if "err" not in outcome:
            raise ChannelError(f"gcn-notice: no acknowledgement from Kafka for {self.topic} within "
                               f"{self.timeout_s:g} s", retryable=True)
        err, msg = outcome["err"], outcome["msg"]
        if err is not None:
            retryable = bool(getattr(err, "retriable", lambda: True)())
            raise ChannelError(scrub_secrets(f"gcn-notice: delivery to {self.topic} failed: {err.str()}"),
                               retryable=retryable)
        return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "key": entry.key}

    def recover(self, entry: Any) -> dict | None:
        """Whether a notice left in ``sending`` went out: read the topic for its key.

        Reads every partition from five minutes before ``entry.created_at`` (from the
        start when unknown) up to the end.

        Returns
        -------
        dict or None
            The receipt (as :meth:`send`) when a message with the key is on the topic;
            None when it demonstrably is not (the topic was read to its end).

        Raises
        ------
        ChannelError
            ``retryable=True`` when the topic could not be read (Kafka unreachable).
        """
        import confluent_kafka

        key = entry.key.encode()
        consumer = confluent_kafka.Consumer(self._client_config(**{
            "group.id": f"mma-broker.gcn-notice.recover.{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": True, "isolation.level": "read_committed"}))
        try:
            try:
                meta = consumer.list_topics(self.topic, timeout=self.timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise ChannelError(scrub_secrets(f"gcn-notice: cannot read {self.topic}: {exc}"),
                                   retryable=True) from None
            topic_meta = meta.topics.get(self.topic)
            if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
                return None  # no topic: nothing was ever produced to it
            since = _created_ms(entry)
            parts = [confluent_kafka.TopicPartition(self.topic, p, since if since is not None
                                                    else confluent_kafka.OFFSET_BEGINNING)
                     for p in sorted(topic_meta.partitions)]
            if since is not None:
                parts = consumer.offsets_for_times(parts, timeout=self.timeout_s)
            todo = set()
            start = []
            for tp in parts:
                low, high = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(self.topic, tp.partition),
                                                           timeout=self.timeout_s)
                offset = tp.offset if tp.offset >= 0 else (high if since is not None else low)
                if offset < high:
                    todo.add(tp.partition)
                    start.append(confluent_kafka.TopicPartition(self.topic, tp.partition, offset))
            if not todo:
                return None
            consumer.assign(start)
            deadline = datetime.now(timezone.utc) + timedelta(seconds=self.timeout_s)
            while todo:
                if datetime.now(timezone.utc) > deadline:
                    raise ChannelError(f"gcn-notice: reading {self.topic} for {entry.key!r} timed out",
                                       retryable=True)
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                        continue
                    raise ChannelError(scrub_secrets(f"gcn-notice: reading {self.topic}: {msg.error().str()}"),
                                       retryable=True)
                if msg.key() == key:
                    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                            "key": entry.key, "recovered": True}
            return None
        finally:
            consumer.close()

    def poll(self, entry: Any) -> dict | None:
        """Notices have no asynchronous reply."""
        return None

    def close(self) -> None:
        """Flush and drop the producer."""
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None


class GcnCircularChannel:
    """The ``gcn-circular`` channel: a circular submitted by e-mail (SMTP).

    Parameters
    ----------
    host, port : str, int
        SMTP server.
    from_address : str
        ``From``: GCN accepts circulars only from a registered address.
    to : list of str
        Recipients (GCN: ``circulars@gcn.nasa.gov``).
    starttls, ssl_implicit : bool
        Upgrade with STARTTLS before logging in; or connect with implicit TLS (SMTPS).
    username, password : str or None, SecretStr or None
        Log-in, when set (after STARTTLS when that is on).
    timeout_s : float
    tls_context : ssl.SSLContext, optional
        Default: :func:`ssl.create_default_context` (system CAs, host name checked).
    """

    name = "gcn-circular"

    def __init__(self, host: str, port: int, from_address: str, to: list[str], *, starttls: bool = False,
                 ssl_implicit: bool = False, username: str | None = None, password: Any = None,
                 timeout_s: float = 30.0, tls_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.from_address, self.to = host, int(port), from_address, list(to)
        self.starttls, self.ssl_implicit, self.username = starttls, ssl_implicit, username
        self._password = password
        self.timeout_s = timeout_s
        self.tls_context = tls_context

    def __repr__(self) -> str:  # never the password
        return (f"GcnCircularChannel(host={self.host!r}, port={self.port}, to={self.to!r}, "
                f"starttls={self.starttls}, username={self.username!r})")

    @classmethod
    def from_settings(cls, settings: Any) -> "GcnCircularChannel | None":
        """The channel of ``[publish.gcn_circular]``; None when it is disabled."""
        s = _section(settings, "gcn_circular")
        if not getattr(s, "enabled", True):
            return None
        return cls(s.smtp_host, s.smtp_port, s.from_address, list(s.to), starttls=s.starttls,
                   ssl_implicit=getattr(s, "ssl", False), username=s.username, password=s.password,
                   timeout_s=getattr(s, "timeout_s", 30.0))

    def validate(self, payload: dict) -> None:
        """See :func:`validate_circular`."""
        validate_circular(payload)

    def message(self, entry: Any) -> EmailMessage:
        """The e-mail of an entry: plain-text UTF-8, a Message-ID derived from its key."""
        msg = EmailMessage()
        msg["From"] = self.from_address
        msg["To"] = ", ".join(self.to)
        msg["Subject"] = entry.payload["subject"]
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        digest = hashlib.sha256(entry.key.encode()).hexdigest()[:32]
        msg["Message-ID"] = f"<{digest}@mma-broker>"
        msg.set_content(entry.payload["body"])
        return msg

    def send(self, entry: Any) -> dict:
        """Submit the circular by e-mail.

        Returns
        -------
        dict
            ``{"message_id", "to", "smtp_host", "refused"}`` (``refused``: recipients the
            server refused while accepting others).

        Raises
        ------
        ChannelError
            ``retryable=False``: invalid draft, no recipients, log-in refused, sender or all
            recipients refused, a permanent (5xx) reply. ``retryable=True``: connection
            failures, time-outs, temporary (4xx) replies.
        """
        try:
            self.validate(entry.payload)
        except ValueError as exc:
            raise ChannelError(str(exc), retryable=False) from None
        if not self.to:
            raise ChannelError("gcn-circular: no recipients ([publish.gcn_circular] to is empty)", retryable=False)
        msg = self.message(entry)
        where = f"{self.host}:{self.port}"
        try:
            context = self.tls_context or ssl.create_default_context()
            if self.ssl_implicit:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                smtp.ehlo()
                if self.starttls and not self.ssl_implicit:
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.username:
                    self._login(smtp)
                refused = smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelError(f"gcn-circular: {where} refused the log-in of {self.username!r} "
                               f"({exc.smtp_code})", retryable=False) from None
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            raise ChannelError(scrub_secrets(f"gcn-circular: {where} refused the message: {exc}"),
                               retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise ChannelError(scrub_secrets(f"gcn-circular: {where} replied {exc.smtp_code}: "
                                             f"{exc.smtp_error!r}"), retryable=exc.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise ChannelError(scrub_secrets(f"gcn-circular: cannot submit through {where}: "
                                             f"{type(exc).__name__}: {exc}"), retryable=True) from None
        log.info("gcn-circular: %s submitted to %s through %s", msg["Message-ID"], ", ".join(self.to), where)
        return {"message_id": msg["Message-ID"], "to": list(self.to), "smtp_host": where,
                "refused": sorted(refused)}

    def _login(self, smtp: smtplib.SMTP) -> None:
        """AUTH PLAIN when offered (one exchange), else smtplib's choice of mechanism."""
        password = _secret(self._password) or ""
        if "plain" in smtp.esmtp_features.get("auth", "").lower().split():
            smtp.user, smtp.password = self.username, password
            try:
                smtp.auth("PLAIN", smtp.auth_plain)
            finally:
                smtp.password = ""
        else:
            smtp.login(self.username or "", password)

    def recover(self, entry: Any) -> dict | None:
        """An e-mail cannot be looked up once sent: always unknowable.

        Raises
        ------
        ChannelError
            Always, ``retryable=False``: the outbox marks the entry ``unknown``; check the
            GCN Circulars archive, then ``mma-broker outbox retry ID`` if it is not there.
        """
        raise ChannelError("gcn-circular: whether the e-mail went out cannot be checked; look for the circular "
                           "in the GCN archive (https://gcn.nasa.gov/circulars) before retrying", retryable=False)

    def poll(self, entry: Any) -> dict | None:
        """Circulars have no reply to poll (the archive number comes by e-mail)."""
        return None


def gcn_notice_channel(settings: Any) -> GcnNoticeChannel | None:
    """Factory of the ``gcn-notice`` channel (entry point ``mma_broker.channels``)."""
    return GcnNoticeChannel.from_settings(settings)


def gcn_circular_channel(settings: Any) -> GcnCircularChannel | None:
    """Factory of the ``gcn-circular`` channel (entry point ``mma_broker.channels``)."""
    return GcnCircularChannel.from_settings(settings)
