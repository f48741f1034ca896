"""Upstream alert streams: one consumer factory per protocol, chosen by configuration.

* ``kafka`` — any Kafka (the local one ``mma-broker replay`` fills): confluent-kafka.
* ``gcn``   — NASA GCN Kafka via ``gcn_kafka.Consumer`` (OIDC client credentials).
* ``hop``   — SCiMMA Hopskotch (``igwn.gwalert``) with hop-client's stored SCRAM
  credentials (``hop auth add``); we read them with ``hop.auth.load_auth``.
* ``ztf``   — the ZTF public alert stream (plain Kafka, a group id of your own).

Real upstreams are configuration, not code: see ``deploy/presets/*.toml``.
"""

from __future__ import annotations

import logging
from typing import Any

import confluent_kafka

from broker.config import Settings, UpstreamSettings
from broker.errors import BrokerError
from broker.kafka import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

HOPSKOTCH_BOOTSTRAP = "kafka.scimma.org:9092"


def _base(settings: Settings, up: UpstreamSettings) -> dict[str, Any]:
    from broker.kafka import LIBRDKAFKA_LOGGER

    return {
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        "group.id": up.group_id or f"{settings.group_id}.ingest.{up.name}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
        "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
        # prefetch up to 128 MB (≈ 3 batches of 500 ZTF alerts of ~77 kB): a smaller
        # queue than one batch halves a worker's rate (docs/benchmarks.md)
        "queued.max.messages.kbytes": 131_072,
        "isolation.level": "read_committed",
        "topic.metadata.refresh.interval.ms": 5000,
        "partition.assignment.strategy": "cooperative-sticky",
    }


def _hop_config(up: UpstreamSettings, bootstrap: str) -> dict[str, Any]:
    from hop.auth import load_auth, select_matching_auth

    try:
        creds = load_auth(up.hop_auth_file) if up.hop_auth_file else load_auth()
        auth = select_matching_auth(creds, bootstrap.split(",")[0])
    except Exception as exc:  # hop raises RuntimeError/FileNotFoundError variants
        raise BrokerError(f"upstream {up.name!r}: no usable hop-client credential for {bootstrap} "
                          f"({type(exc).__name__}); run `hop auth add`") from None
    cfg = {
        "security.protocol": str(auth.protocol),
        "sasl.mechanism": str(auth.mechanism),
        "sasl.username": auth.username,
        "sasl.password": auth.password,
    }
    if auth.ssl_ca_location:
        cfg["ssl.ca.location"] = auth.ssl_ca_location
    return cfg


def consumer_config(settings: Settings, up: UpstreamSettings) -> dict[str, Any]:
    """The librdkafka consumer config for one upstream (contains secrets: never log it)."""
    cfg = _base(settings, up)
    if up.kind == "kafka":
        cfg["bootstrap.servers"] = up.bootstrap_servers or settings.kafka.bootstrap_servers
        cfg.update(settings.kafka.config)
    elif up.kind == "gcn":
        from gcn_kafka.core import get_config

        if not up.client_id or up.client_secret is None:
            raise BrokerError(
                f"upstream {up.name!r} (gcn) needs client_id and client_secret: set "
                f"MMA_BROKER_UPSTREAMS or secrets_file ({up.name}_client_secret)"
            )
        if up.bootstrap_servers:
            cfg["bootstrap.servers"] = up.bootstrap_servers
        cfg = get_config(
            "consumer", cfg, client_id=up.client_id, client_secret=up.client_secret.get_secret_value(), domain=up.domain
        )
    elif up.kind == "hop":
        bootstrap = up.bootstrap_servers or HOPSKOTCH_BOOTSTRAP
        cfg["bootstrap.servers"] = bootstrap
        cfg.update(_hop_config(up, bootstrap))
    elif up.kind == "ztf":
        if not up.bootstrap_servers:
            raise BrokerError(f"upstream {up.name!r} (ztf) needs bootstrap_servers (the ZTF public stream host)")
        cfg["bootstrap.servers"] = up.bootstrap_servers
    cfg.update(up.config)
    return cfg


def make_admin(settings: Settings, up: UpstreamSettings):
    """An AdminClient on the same cluster and credentials as the upstream consumer
    (used to read end offsets for ``--until-caught-up``)."""
    from confluent_kafka.admin import AdminClient

    consumer_only = {"group.id", "enable.auto.commit", "auto.offset.reset", "fetch.max.bytes",
                     "max.partition.fetch.bytes", "queued.max.messages.kbytes", "fetch.queue.backoff.ms", "isolation.level",
                     "topic.metadata.refresh.interval.ms", "partition.assignment.strategy"}
    cfg = {k: v for k, v in consumer_config(settings, up).items() if k not in consumer_only}
    return AdminClient(cfg)


def make_upstream_consumer(settings: Settings, up: UpstreamSettings) -> confluent_kafka.Consumer:
    """A subscribed consumer for one upstream (topic prefix applied to ``kafka`` kind)."""
    consumer = confluent_kafka.Consumer(consumer_config(settings, up))
    consumer.subscribe(upstream_topics(settings, up))
    log.info("upstream %s (%s): subscribed to %s", up.name, up.kind, upstream_topics(settings, up))
    return consumer


def upstream_topics(settings: Settings, up: UpstreamSettings) -> list[str]:
    """Topic names/patterns with the local topic prefix applied (``kafka`` kind only).

    Patterns are POSIX extended regular expressions (what librdkafka uses): no ``\\d``,
    no ``(?:``.
    """
    import re

    if up.kind != "kafka" or not settings.kafka.topic_prefix:
        return list(up.topics)
    prefix = settings.kafka.topic_prefix
    out = []
    for t in up.topics:
        if t.startswith("^"):
            body = t[1:]
            anchored = body.endswith("$") and not body.endswith("\\$")
            out.append("^" + re.escape(prefix) + "(" + (body[:-1] if anchored else body) + ")" + ("$" if anchored else ""))
        else:
            out.append(prefix + t)
    return out
