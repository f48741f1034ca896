"""The ``hermes`` channel: HERMES messages published with hop-client (SCiMMA Hopskotch).

A HERMES message (the submission format of LCOGT/hermes: ``title``, ``topic``,
``submitter``, ``authors``, ``message_text``, ``data``) is checked by
:func:`validate_message` against ``broker/schemas/hermes/hermes_message.json`` — HERMES's
own rules (``hermes/serializers.py``) written as JSON Schema — plus the cross-field rules
a schema cannot state, then written with hop-client
(``hop.io.Stream(auth).open("kafka://host:port/", "w")``) to the message's ``topic`` as
a hop JSON record (``_format: json``), which ``hop subscribe`` and HERMES's own
ingester read. Locally the topic is ``hermes.test`` on our Kafka with hop's
unauthenticated mode (``auth=False``); in production the Hopskotch broker with the
SCRAM credential of ``[publish.hermes]`` (the password is a ``SecretStr``: never logged).

Each record carries the outbox entry's idempotency key as its Kafka key and in the
header ``mma_outbox_key`` (:data:`broker.sinks.channels.OUTBOX_KEY_HEADER`).
:meth:`HermesChannel.recover` searches the topic for that header from shortly before
the entry was claimed (:func:`broker.sinks.channels.find_key_on_topic`, with the same
credential), so an entry a crash left in ``sending`` is recognised as sent (its receipt
rebuilt) or as not sent.

The schema is the core's (a wire format, like the upstream schemas under
``broker/schemas/upstream``): the report builders in ``followup/reports`` validate with
the same function, and the core imports nothing of ``followup/``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import uuid
from datetime import timedelta
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from broker.sinks.channels import OUTBOX_KEY_HEADER, ChannelError, find_key_on_topic

log = logging.getLogger(__name__)

KEY_HEADER = OUTBOX_KEY_HEADER
"""Header holding the outbox entry's idempotency key on every published record."""

SCHEMA_RESOURCE = ("broker.schemas", "hermes/hermes_message.json")
"""Where :func:`validate_message` reads the schema (package data)."""

_NUMERIC = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


@lru_cache(maxsize=1)
def hermes_schema() -> dict[str, Any]:
    """The HERMES message JSON Schema (Draft 2020-12), read once."""
    package, name = SCHEMA_RESOURCE
    return json.loads(resources.files(package).joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(hermes_schema())


def json_path(parts: Any) -> str:
    """``$.data.photometry[0].brightness`` from a jsonschema ``absolute_path``."""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _explain(error: Any) -> str:
    """One line for a schema error: for the combinators, the rule the schema describes."""
    if error.validator in ("anyOf", "oneOf", "not", "allOf") and isinstance(error.schema, dict):
        rule = error.schema.get("description")
        if rule:
            return f"{rule} (HERMES rule not met)"
    text = error.message
    return text if len(text) <= 300 else text[:297] + "..."


def _numeric_string(value: Any) -> float | None:
    if isinstance(value, str) and _NUMERIC.match(value):
        return float(value)
    return None


def _cross_field_errors(message: dict[str, Any]) -> list[tuple[str, str]]:
    """The serializers' rules a JSON Schema cannot state: (JSON path, what is wrong)."""
    errors: list[tuple[str, str]] = []
    data = message.get("data") or {}
    if not isinstance(data, dict):
        return errors
    targets = data.get("targets") or []
    names = [t.get("name") for t in targets if isinstance(t, dict)]
    for i, name in enumerate(names):
        if names.count(name) > 1:
            errors.append((f"$.data.targets[{i}].name", f"target name {name!r} is not unique within the message"))
    for i, t in enumerate(targets):
        dec = _numeric_string(t.get("dec")) if isinstance(t, dict) else None
        if dec is not None and not (-90.0 <= dec <= 90.0 and math.isfinite(dec)):
            errors.append((f"$.data.targets[{i}].dec", f"dec {dec} is outside -90..90 degrees"))
    for section in ("photometry", "spectroscopy", "astrometry"):
        for i, row in enumerate(data.get(section) or []):
            if not isinstance(row, dict):
                continue
            if row.get("target_name") not in names:
                errors.append((f"$.data.{section}[{i}].target_name",
                               f"target_name {row.get('target_name')!r} names no target of data.targets"))
            jd = _numeric_string(row.get("date_obs"))
            if jd is not None and not (2400000 < jd < 2600000 or 1000 < jd < 150000):
                errors.append((f"$.data.{section}[{i}].date_obs",
                               f"date {jd} is neither a JD (2400000..2600000) nor an MJD (1000..150000)"))
    for i, row in enumerate(data.get("spectroscopy") or []):
        if not isinstance(row, dict):
            continue
        flux = row.get("flux") or []
        if "flux_error" in row and len(row.get("flux_error") or []) != len(flux):
            errors.append((f"$.data.spectroscopy[{i}].flux_error", "flux_error and flux differ in length"))
        if len(flux) != len(row.get("wavelength") or []):
            errors.append((f"$.data.spectroscopy[{i}].wavelength", "wavelength and flux differ in length"))
    return errors


def message_errors(message: Any) -> list[tuple[str, str]]:
    """Every violation of HERMES's rules in ``message``: (JSON path, what is wrong), schema first.

    Parameters
    ----------
    message : dict
        A HERMES message as it will be published (JSON-ready).

    Returns
    -------
    list of (str, str)
        Empty when HERMES would accept the message.
    """
    import jsonschema

    found = [(json_path(e.absolute_path), _explain(e))
             for e in sorted(_validator().iter_errors(message), key=jsonschema.exceptions.relevance)]
    if isinstance(message, dict):
        found += _cross_field_errors(message)
    # a failing branch of an anyOf may also report its inner errors: one line per path
    seen: dict[str, str] = {}
    for path, text in found:
        seen.setdefault(path, text)
    return list(seen.items())


def validate_message(message: Any) -> None:
    """Refuse a message HERMES would refuse.

    Follows LCOGT/hermes ``hermes/serializers.py`` (commit 67083891): the schema
    ``broker/schemas/hermes/hermes_message.json`` and :func:`_cross_field_errors`.

    Raises
    ------
    ValueError
        ``HERMES message refused at <JSON path>: <rule>`` (the first violation; the
        others follow on the same line, ``;``-separated, at most five).
    """
    errors = message_errors(message)
    if errors:
        shown = "; ".join(f"{p}: {t}" for p, t in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"HERMES message refused at {shown}{more}")


def _hop_auth(auth: str, username: str | None, password: Any, mechanism: str) -> Any:
    """``False`` (hop's unauthenticated mode) or a :class:`hop.auth.Auth` for SCRAM."""
    if auth == "none":
        return False
    from hop.auth import Auth, SASLMethod

    if not username or password is None:
        raise ValueError("[publish.hermes] auth = \"scram\" needs username and password "
                         "(MMA_BROKER_PUBLISH__HERMES__PASSWORD or secrets_file hermes_password)")
    secret = password.get_secret_value() if hasattr(password, "get_secret_value") else str(password)
    method = SASLMethod[mechanism.replace("-", "_").upper()]
    return Auth(username, secret, method=method)


def _broker_url(url: str) -> str:
    """``kafka://host:port/`` with no topic and no user (for logs and receipts)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"kafka://{host}{port}/"


class HermesChannel:
    """Publish HERMES messages with hop-client (see the module docstring).

    Parameters
    ----------
    url : str
        hop URL of the Kafka broker, ``kafka://host:port/`` (a topic in it is ignored:
        each message names its own ``topic``).
    auth : False or hop.auth.Auth
        ``False``: hop's unauthenticated mode (local Kafka); an ``Auth``: SCRAM.
    timeout_s : float
        Longest wait for Kafka to acknowledge one message, s.
    """

    name = "hermes"

    def __init__(self, url: str, *, auth: Any = False, timeout_s: float = 15.0) -> None:
        self.url = _broker_url(url)
        self.auth = auth
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> "HermesChannel | None":
        """The channel of ``[publish.hermes]``, or None when it is disabled.

        Parameters
        ----------
        settings : broker.config.Settings
            ``publish.hermes`` (url, auth, username, password, mechanism); the URL
            defaults to ``kafka://<[kafka] bootstrap_servers>/`` (first server).

        Raises
        ------
        ValueError
            SCRAM without user name or password.
        """
        h = settings.publish.hermes
        if not h.enabled:
            return None
        url = h.url or f"kafka://{settings.kafka.bootstrap_servers.split(',')[0].strip()}/"
        return cls(url, auth=_hop_auth(h.auth, h.username, h.password, h.mechanism))

    # ------------------------------------------------------------------ Channel
    def validate(self, payload: dict[str, Any]) -> None:
        """See :func:`validate_message` (raises ValueError naming the JSON path)."""
        validate_message(payload)

    def _open(self) -> Any:
        if self._producer is None:
            from hop import io as hop_io

            # automatic_offload=False: no describe_configs round trip per topic (our
            # messages are a few kB, far below Hopskotch's message size limit)
            self._producer = hop_io.Stream(auth=self.auth).open(
                self.url, "w", produce_timeout=timedelta(seconds=self.timeout_s), automatic_offload=False)
        return self._producer

    def send(self, entry: Any) -> dict[str, Any]:
        """Publish ``entry.payload`` to its ``topic``; the receipt says where it went.

        Returns
        -------
        dict
            ``{"url", "topic", "partition", "offset", "hop_uuid"}`` (``hop_uuid``: the
            record's ``_id`` header, which HERMES uses as the message's UUID).

        Raises
        ------
        ChannelError
            ``retryable=False``: the message breaks a HERMES rule (nothing sent);
            ``retryable=True``: Kafka did not acknowledge it within ``timeout_s``.
        """
        payload = entry.payload
        try:
            validate_message(payload)
        except ValueError as exc:
            raise ChannelError(str(exc), retryable=False) from None
        topic = payload["topic"]
        outcome: dict[str, Any] = {}

        def delivered(err: Any, msg: Any) -> None:
            outcome["err"], outcome["msg"] = err, msg

        with self._lock:
            try:
                producer = self._open()
                # packed here (as Producer.write does) to know the record's hop _id: the
                # delivery report carries no headers
                packed, headers = producer.pack(payload, [(KEY_HEADER, entry.key.encode())],
                                                auth=self.auth or None)
                producer.write_raw(packed, headers, delivery_callback=delivered, topic=topic, key=entry.key.encode())
                producer.flush(timedelta(seconds=self.timeout_s))
            except Exception as exc:  # noqa: BLE001 - any client failure is a failed send
                self._reset()
                raise ChannelError(f"hop-client could not publish to {topic}: {type(exc).__name__}: {exc}",
                                   retryable=True) from None
        if "msg" not in outcome:
            self._reset()
            raise ChannelError(f"Kafka did not acknowledge the message to {topic} within {self.timeout_s} s",
                               retryable=True)
        if outcome["err"] is not None:
            raise ChannelError(f"Kafka refused the message to {topic}: {outcome['err']}", retryable=True)
        msg, hop_id = outcome["msg"], dict(headers).get("_id")
        return {"url": self.url, "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                "hop_uuid": str(uuid.UUID(bytes=hop_id)) if hop_id else None}

    def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close()
            except Exception:  # noqa: BLE001 - a broken producer is dropped either way
                log.debug("hermes: closing the producer failed", exc_info=True)

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka settings reaching the same broker with the same credential (secrets inside)."""
        cfg = {"bootstrap.servers": self.url[len("kafka://"):].rstrip("/")}
        if self.auth:
            cfg.update(self.auth._config)  # hop.auth.Auth is adc's SASLAuth: its librdkafka settings
        return cfg

    def recover(self, entry: Any) -> dict[str, Any] | None:
        """After a crash during :meth:`send`: did ``entry`` reach its topic?

        Searches the message's topic for a record whose ``mma_outbox_key`` header is the
        entry's key, from :data:`broker.sinks.channels.RECOVER_MARGIN_S` before the
        entry was claimed (:func:`broker.sinks.channels.find_key_on_topic`).

        Returns
        -------
        dict or None
            ``{"url", "topic", "partition", "offset", "timestamp_ms", "recovered": True}``
            of the record found, or None: the topic holds no such record, the message
            was not sent.

        Raises
        ------
        ChannelError
            ``retryable=True``: the topic could not be read now (ask again later).
        """
        topic = entry.payload.get("topic") if isinstance(entry.payload, dict) else None
        if not topic:
            return None
        found = find_key_on_topic(self.kafka_config(), topic, entry.key, entry.claimed_at,
                                  timeout_s=self.timeout_s, header=KEY_HEADER)
        return None if found is None else {"url": self.url, **found}

    def poll(self, entry: Any) -> dict[str, Any] | None:
        """HERMES sends no asynchronous reply: nothing to poll."""
        return None

    def close(self) -> None:
        """Flush and close the producer."""
        with self._lock:
            self._reset()


def build(settings: Any) -> HermesChannel | None:
    """Channel factory (``module:factory`` form): :meth:`HermesChannel.from_settings`."""
    return HermesChannel.from_settings(settings)
