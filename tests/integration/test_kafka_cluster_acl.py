"""A private filter topic on the local three-node cluster with SASL/SCRAM, ACLs and TLS
(issue 14, "Private streams"), through the broker's own settings and client factories.

``deploy/kafka/cluster.sh start --tls`` makes a CA and a server certificate (openssl),
listens with SASL_SSL, turns on Kafka's ACL authorizer (``StandardAuthorizer``) and
creates the SCRAM users it is given, each with a 0600 secrets file the broker reads
(``secrets_file``, key ``kafka_sasl_password``). Each client here is built as a stage
builds its own: ``load_settings()`` from ``MMA_BROKER_*`` variables (security protocol,
mechanism, user name and CA in ``[kafka] config``, the password from the secrets file),
then ``broker.kafka.ensure_topics`` / ``make_producer`` / ``make_consumer``. The admin
creates two filter topics (3 replicas) and grants ``partner`` Read on one of them and on
its own consumer groups: ``partner`` reads that topic and is refused the other, and a
user without grants is refused both.
"""

from __future__ import annotations

import json
import time

import confluent_kafka
import pytest

from tests.integration.test_kafka_cluster import Cluster

pytestmark = pytest.mark.integration

USERS = "partner,outsider"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("kacl"))
    c.env["MMA_BROKER_KAFKA_CLUSTER_USERS"] = USERS
    try:
        c("start", "--tls")
        yield c
    finally:
        for n in "123":
            c("kill", n, ok=(0, 1))
        c("stop", "--purge")


@pytest.fixture
def settings_of(tls_cluster, monkeypatch, tmp_path):
    """Settings of one user, from the environment as a deployment gives them."""
    import os

    from broker.config import load_settings

    state = tls_cluster.env["MMA_BROKER_KAFKA_CLUSTER_DIR"]

    def make(user: str):
        for key in list(os.environ):
            if key.startswith("MMA_BROKER_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("MMA_BROKER_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS", tls_cluster.bootstrap)
        monkeypatch.setenv("MMA_BROKER_KAFKA__REPLICATION_FACTOR", "3")
        monkeypatch.setenv("MMA_BROKER_KAFKA__CONFIG", json.dumps({
            "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": user,
            "ssl.ca.location": f"{state}/tls/ca.pem"}))
        monkeypatch.setenv("MMA_BROKER_SECRETS_FILE", f"{state}/secrets/{user}.toml")
        s = load_settings()
        password = s.kafka.config["sasl.password"]
        assert len(password) >= 32 and password not in repr(s)
        return s
    return make


def first_message(settings, group: str, topic: str, timeout_s: float = 60.0):
    """The first record of ``topic`` for a new consumer of ``group``, or the error Kafka gave."""
    from broker.kafka import make_consumer

    consumer = make_consumer(settings, group)
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                return msg.error() or msg.value()
        raise AssertionError(f"nothing from {topic} within {timeout_s:.0f} s")
    finally:
        consumer.close()


def test_a_filter_topic_restricted_to_one_user(settings_of):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType,
                                       ResourceType)

    from broker.kafka import DeliveryTracker, client_config, ensure_topics, flush_or_raise, make_producer

    admin_settings = settings_of("admin")
    private, other = admin_settings.topic("mma.filter.gw-significant"), admin_settings.topic("mma.filter.ztf-decent")
    ensure_topics(admin_settings, [private, other], timeout_s=60)
    admin = AdminClient(client_config(admin_settings))
    assert all(len(p.replicas) == 3 for t in (private, other)
               for p in admin.list_topics(timeout=30).topics[t].partitions.values())
    grants = [AclBinding(ResourceType.TOPIC, private, ResourcePatternType.LITERAL, "User:partner", "*",
                         AclOperation.READ, AclPermissionType.ALLOW),
              AclBinding(ResourceType.GROUP, "partner.", ResourcePatternType.PREFIXED, "User:partner", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)]
    for fut in admin.create_acls(grants, request_timeout=60).values():
        fut.result()
    producer, tracker = make_producer(admin_settings), DeliveryTracker()
    for topic in (private, other):
        producer.produce(topic, key=b"S230518h", value=b'{"id": "igwn:S230518h:preliminary:1"}',
                         on_delivery=tracker.callback)
    flush_or_raise(producer, tracker, 60)

    partner = settings_of("partner")
    # the three nodes apply the new ACLs from the metadata log a moment after the controller
    deadline = time.monotonic() + 30
    while isinstance(got := first_message(partner, "partner.alerts", private), confluent_kafka.KafkaError):
        assert got.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, got.str()
        assert time.monotonic() < deadline, "partner was still refused its topic 30 s after the grant"
    assert got == b'{"id": "igwn:S230518h:preliminary:1"}'
    refused = first_message(partner, "partner.other", other)
    assert isinstance(refused, confluent_kafka.KafkaError), "partner read a topic it was not granted"
    assert refused.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, refused.str()
    outsider = first_message(settings_of("outsider"), "partner.outsider", private)
    assert isinstance(outsider, confluent_kafka.KafkaError), "a user without grants read the private topic"
    assert outsider.code() in (confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                               confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED), outsider.str()
