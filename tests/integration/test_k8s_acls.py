"""The Kafka users and ACLs of deploy/k8s/kafka/users.yaml, applied to a real Kafka.

A Kafka of the project's own jars (deploy/kafka) is started for this module in a
temporary folder, with SASL/SCRAM-SHA-512 and Kafka's ACL authorizer
(``StandardAuthorizer``), one SCRAM user per ``KafkaUser`` of the manifests, and the ACLs
of each user translated one for one from the manifest (as Strimzi's User Operator does).
Then each stage's user does, through the broker's own client factories
(``broker.kafka.ensure_topics``, ``make_consumer``, ``stage_producer``) and with the
cluster's preset, what its stage does on Kafka: the start-up topic check, joining its
consumer group, a transaction that produces to each output and commits the consumed
offsets. It must be served; and refused when it reads a topic that is not its input,
writes one that is not its output, or takes another stage's transactional id. KEDA's
user may read the groups' offsets and the topics' ends, and no message.

The listener is SASL_PLAINTEXT on 127.0.0.1 (the manifests add TLS on top; the README's
"Sharing the machine" section checked SCRAM over TLS with the same jars).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifests(kind: str, path: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / path).read_text()) if d and d["kind"] == kind}


def kafka_lib() -> Path:
    home = Path(os.environ.get("MMA_BROKER_HOME") or ROOT / ".mma-broker")
    lib = home / "kafka" / "lib"
    if not any(lib.glob("kafka_*.jar")):
        subprocess.run([str(ROOT / "deploy" / "kafka" / "kafka.sh"), "fetch"], check=True,
                       env=dict(os.environ, MMA_BROKER_HOME=str(home)))
    return lib


@pytest.fixture(scope="module")
def acl_kafka(tmp_path_factory):
    """A SASL/SCRAM Kafka with the authorizer on; yields (bootstrap, {user: password})."""
    if shutil.which("java") is None:
        pytest.fail("java is needed for the Kafka of this test (Java 17, as deploy/kafka/kafka.sh)")
    lib = kafka_lib()
    d = tmp_path_factory.mktemp("aclkafka")
    port, cport = free_port(), free_port()
    users = {name: secrets.token_hex(16) for name in manifests("KafkaUser", "kafka/users.yaml")}
    admin_pw = secrets.token_hex(16)
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="admin" password="{admin_pw}";')
    (d / "server.properties").write_text("\n".join([
        "process.roles=broker,controller", "node.id=1", f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}", "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512", "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={jaas}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # the broker's own requests: as admin on its SASL listener, as ANONYMOUS on the
        # loopback-only controller listener
        "super.users=User:admin;User:ANONYMOUS", "allow.everyone.if.no.acl.found=false",
        f"log.dirs={d / 'data'}", "num.partitions=1", "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=2",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=2", "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1", "group.initial.rebalance.delay.ms=0",
        "message.max.bytes=16777216", "replica.fetch.max.bytes=16777216", ""]))
    (d / "server.properties").chmod(0o600)
    (d / "log4j2.properties").write_text("\n".join([
        "appender.file.type = File", "appender.file.name = FILE", f"appender.file.fileName = {d / 'server.log'}",
        "appender.file.layout.type = PatternLayout", "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = info", "rootLogger.appenderRef.file.ref = FILE", ""]))
    cp = f"{lib}/*"
    log4j = f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}"
    cid = subprocess.run(["java", "-cp", cp, "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    args = d / "format.args"  # a java @argfile: the passwords never show in the process list
    args.write_text("\n".join([f"kafka.tools.StorageTool format --config {d / 'server.properties'} --cluster-id {cid}",
                               f"--add-scram SCRAM-SHA-512=[name=admin,password={admin_pw}]",
                               *(f"--add-scram SCRAM-SHA-512=[name={u},password={p}]" for u, p in users.items())]))
    args.chmod(0o600)
    subprocess.run(["java", "-Xmx256m", log4j, "-cp", cp, f"@{args}"], check=True, capture_output=True)
    args.unlink()
    proc = subprocess.Popen(["java", "-Xmx512m", "-XX:+UseG1GC", "-XX:ParallelGCThreads=2", "-XX:CICompilerCount=2",
                             log4j, "-cp", cp, "kafka.Kafka", str(d / "server.properties")],
                            stdout=(d / "kafka.out").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Kafka Server started" not in ((d / "server.log").read_text() if (d / "server.log").exists() else ""):
            assert proc.poll() is None, (d / "kafka.out").read_text()[-2000:]
            assert time.monotonic() < deadline, "the SASL Kafka did not start within 120 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", users, admin_pw
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sasl(bootstrap: str, user: str, password: str) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": password}


def acl_bindings(user: dict) -> list:
    """The Kafka ACL bindings Strimzi's User Operator makes from one KafkaUser (type simple)."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    types = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER,
             "transactionalId": ResourceType.TRANSACTIONAL_ID}
    ops = {"Read": AclOperation.READ, "Write": AclOperation.WRITE, "Describe": AclOperation.DESCRIBE,
           "IdempotentWrite": AclOperation.IDEMPOTENT_WRITE, "Create": AclOperation.CREATE, "All": AclOperation.ALL,
           "DescribeConfigs": AclOperation.DESCRIBE_CONFIGS, "Alter": AclOperation.ALTER,
           "AlterConfigs": AclOperation.ALTER_CONFIGS, "Delete": AclOperation.DELETE}
    out = []
    for acl in user["spec"]["authorization"]["acls"]:
        r = acl["resource"]
        rtype = types[r["type"]]
        name = "kafka-cluster" if r["type"] == "cluster" else r["name"]
        pattern = ResourcePatternType.PREFIXED if r.get("patternType") == "prefix" else ResourcePatternType.LITERAL
        perm = AclPermissionType.DENY if acl.get("type") == "deny" else AclPermissionType.ALLOW
        for op in acl["operations"]:
            out.append(AclBinding(rtype, name, pattern, f"User:{user['metadata']['name']}", acl.get("host", "*"),
                                  ops[op], perm))
    return out


@pytest.fixture(scope="module")
def provisioned(acl_kafka):
    """Topics of kafka/topics.yaml (one replica: one node) and the ACLs of kafka/users.yaml."""
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap, users, admin_pw = acl_kafka
    admin = AdminClient(sasl(bootstrap, "admin", admin_pw))
    topics = manifests("KafkaTopic", "kafka/topics.yaml")
    new = [NewTopic(name, num_partitions=2, replication_factor=1,
                    config={"max.message.bytes": str(t["spec"]["config"]["max.message.bytes"])})
           for name, t in topics.items()]
    for f in admin.create_topics(new, request_timeout=60).values():
        f.result()
    bindings = [b for u in manifests("KafkaUser", "kafka/users.yaml").values() for b in acl_bindings(u)]
    for f in admin.create_acls(bindings, request_timeout=60).values():
        f.result()
    # the controller has the ACLs now; the broker applies them from the metadata log a
    # moment later (here, up to a second): wait until each user sees its topics
    for name, user in manifests("KafkaUser", "kafka/users.yaml").items():
        mine = {n for n in topics for acl in user["spec"]["authorization"]["acls"]
                if acl["resource"]["type"] == "topic"
                and (n == acl["resource"]["name"] or acl["resource"].get("patternType") == "prefix"
                     and n.startswith(acl["resource"]["name"]))}
        client = AdminClient(sasl(bootstrap, name, users[name]))
        deadline = time.monotonic() + 30
        while not mine <= set(client.list_topics(timeout=30).topics):
            assert time.monotonic() < deadline, f"the ACLs of {name} were not applied within 30 s"
            time.sleep(0.2)
    return acl_kafka


@pytest.fixture
def stage_settings(provisioned, tmp_path, monkeypatch):
    """Settings of one stage's pod: the ConfigMap's preset, its Kafka user, this Kafka."""
    bootstrap, users, _ = provisioned
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)
    preset = tmp_path / "mma-broker.toml"
    cm = manifests("ConfigMap", "broker/settings.yaml")["mma-broker-settings"]
    preset.write_text(cm["data"]["mma-broker.toml"])

    def make(user: str):
        from broker.config import load_settings

        s = load_settings(config_file=preset, home=tmp_path / "home")
        s.kafka.bootstrap_servers = bootstrap
        s.kafka.config.pop("ssl.ca.location")
        s.kafka.config.update({"security.protocol": "SASL_PLAINTEXT", "sasl.username": user,
                               "sasl.password": users[user]})
        return s
    return make


STAGES = {
    # stage user: (loop, inputs, outputs), as the stages' factories subscribe and produce
    # enrich and filters run as the lanes of the preset ([lanes] notices, optical; one loop each)
    "mma-enrich": ("enrich.optical", ["mma.events"], ["mma.events.enriched", "mma.coincidences", "mma.dlq"]),
    "mma-filters": ("filters.notices", ["mma.events.enriched"],
                    ["mma.filter.ztf-decent", "mma.filter.optical-counterpart", "mma.followup.requests", "mma.dlq"]),
    "mma-followup": ("followup.worker", ["mma.followup.requests"], ["mma.followup.results", "mma.dlq"]),
    "mma-reports": ("reports", ["mma.followup.results", "mma.coincidences", "mma.filter.optical-counterpart"],
                    ["mma.dlq"]),
    "mma-ingest": ("ingest.ztf", [], ["mma.events", "mma.dlq"]),
}


def assigned(consumer, n: int, timeout_s: float = 60.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error():
            raise AssertionError(msg.error().str())
        if len(consumer.assignment()) >= n:
            return consumer.assignment()
    raise AssertionError(f"no assignment of {n} partitions within {timeout_s} s")


@pytest.mark.parametrize("user", sorted(STAGES))
def test_each_stage_user_is_served_for_what_its_stage_does(stage_settings, user):
    from broker.kafka import InstanceSlot, ensure_topics, make_consumer, stage_producer

    loop, inputs, outputs = STAGES[user]
    s = stage_settings(user)
    ensure_topics(s, inputs + outputs, timeout_s=30)  # the stage's start-up check
    producer = stage_producer(s, loop, InstanceSlot("mma-stage-5d8f7b9c4-x2x7q.0"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic in outputs:
        producer.produce(topic, key=b"k", value=b"{}")
    if inputs:
        consumer = make_consumer(s, f"{s.group_id}.{loop}")
        consumer.subscribe(inputs)
        parts = assigned(consumer, 2 * len(inputs))
        offsets = [type(p)(p.topic, p.partition, 0) for p in parts]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    if inputs:
        consumer.close()


@pytest.mark.parametrize("user, topic", [("mma-enrich", "mma.followup.requests"), ("mma-reports", "mma.events"),
                                         ("mma-followup", "mma.events.enriched")])
def test_a_stage_user_cannot_read_another_stages_input(stage_settings, user, topic):
    import confluent_kafka

    from broker.kafka import make_consumer

    s = stage_settings(user)
    consumer = make_consumer(s, f"{s.group_id}.{STAGES[user][0]}")
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error():
                assert msg.error().code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, msg.error().str()
                return
        raise AssertionError(f"{user} was not refused reading {topic}")
    finally:
        consumer.close()


@pytest.mark.parametrize("user, topic", [("mma-enrich", "mma.followup.results"), ("mma-reports", "mma.events"),
                                         ("mma-ingest", "mma.filter.ztf-decent")])
def test_a_stage_user_cannot_write_another_stages_output(stage_settings, user, topic):
    import confluent_kafka

    from broker.kafka import make_producer

    s = stage_settings(user)
    errors = []
    producer = make_producer(s)
    producer.produce(topic, value=b"{}", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(30)
    assert [e.code() for e in errors] == [confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED], errors


def test_a_stage_user_cannot_take_another_stages_transactional_id(stage_settings):
    import confluent_kafka

    from broker.kafka import InstanceSlot, stage_producer

    s = stage_settings("mma-enrich")
    producer = stage_producer(s, "filters", InstanceSlot("mma-enrich-5d8f7b9c4-x2x7q.0"))
    with pytest.raises(confluent_kafka.KafkaException) as exc:
        producer.init_transactions(30)
    assert exc.value.args[0].code() == confluent_kafka.KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_keda_reads_the_lag_and_no_message(provisioned, stage_settings):
    import confluent_kafka
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    test_each_stage_user_is_served_for_what_its_stage_does(stage_settings, "mma-enrich")  # a committed offset
    bootstrap, users, _ = provisioned
    admin = AdminClient(sasl(bootstrap, "mma-keda", users["mma-keda"]))
    (fut,) = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("mma-broker.enrich.optical")], request_timeout=30).values()
    committed = {(tp.topic, tp.partition): tp.offset for tp in fut.result().topic_partitions}
    assert committed == {("mma.events", 0): 0, ("mma.events", 1): 0}
    ends = admin.list_offsets({TopicPartition("mma.events", p): OffsetSpec.latest() for p in (0, 1)},
                              request_timeout=30)
    assert all(f.result().offset >= 0 for f in ends.values())  # the ends: what lag is computed from
    consumer = confluent_kafka.Consumer({**sasl(bootstrap, "mma-keda", users["mma-keda"]),
                                         "group.id": "mma-broker.enrich.optical", "auto.offset.reset": "earliest"})
    consumer.subscribe(["mma.events"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error():
                assert msg.error().code() in (confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                              confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED), msg.error()
                return
        raise AssertionError("mma-keda was not refused reading mma.events")
    finally:
        consumer.close()


def test_a_reader_given_one_filter_topic_reads_it_and_nothing_else(provisioned):
    """docs/deploy-cluster.md: a KafkaUser with Read on mma.filter.<name> and its own group."""
    import confluent_kafka
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType,
                                       ResourceType, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion)

    bootstrap, users, admin_pw = provisioned
    admin = AdminClient(sasl(bootstrap, "admin", admin_pw))
    password = secrets.token_hex(16)
    upsert = UserScramCredentialUpsertion("partner", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                          password.encode())
    for f in admin.alter_user_scram_credentials([upsert]).values():
        f.result()
    grants = [AclBinding(ResourceType.TOPIC, "mma.filter.gw-significant", ResourcePatternType.LITERAL, "User:partner",
                         "*", AclOperation.READ, AclPermissionType.ALLOW),
              AclBinding(ResourceType.GROUP, "partner.", ResourcePatternType.PREFIXED, "User:partner", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)]
    for f in admin.create_acls(grants).values():
        f.result()
    producer = confluent_kafka.Producer(sasl(bootstrap, "admin", admin_pw))
    for topic in ("mma.filter.gw-significant", "mma.filter.ztf-decent"):
        producer.produce(topic, key=b"S230518h", value=b'{"id": "igwn:S230518h:preliminary:1"}')
    assert producer.flush(30) == 0

    def read(topic: str) -> bytes | confluent_kafka.KafkaError:
        consumer = confluent_kafka.Consumer({**sasl(bootstrap, "partner", password), "group.id": "partner.alerts",
                                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None:
                    return msg.error() or msg.value()
            raise AssertionError(f"nothing from {topic} within 60 s")
        finally:
            consumer.close()

    assert read("mma.filter.gw-significant") == b'{"id": "igwn:S230518h:preliminary:1"}'
    refused = read("mma.filter.ztf-decent")
    assert isinstance(refused, confluent_kafka.KafkaError)
    assert refused.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, refused.str()


def test_the_publish_user_sends_a_gcn_notice_and_finds_it_again(stage_settings):
    """The gcn-notice channel on our cluster, built from the cluster's settings as the
    publish stage builds it: an idempotent send, then recover() reading the topic back."""
    import uuid
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from broker.sinks.gcn import GcnNoticeChannel

    notice = {  # a no-data notice as followup.reports.gcn makes them
        "$schema": "https://mma-broker.org/schemas/gcn/notices/integral/spiacs_followup.schema.json",
        "mission": "INTEGRAL", "instrument": "SPI-ACS", "messenger": "EM",
        "alert_datetime": "2025-05-20T10:09:00.000Z", "alert_tense": "current", "alert_type": "initial",
        "event_name": "SVOM ECLAIRs trigger sb25052005", "id": "6517e8839d5543cfb88bd65f3ff661e2",
        "followup_id": "6517e8839d5543cfb88bd65f3ff661e2", "status": "no_data",
        "trigger_time": "2025-05-20T10:07:36.473Z", "ref_ID": "sb25052005",
        "no_data": {"kind": "outside_mission", "reason": "after the end of INTEGRAL science operations"},
    }
    channel = GcnNoticeChannel.from_settings(stage_settings("mma-publish"))
    assert channel.topic == "mma.gcn.notices.integral"
    entry = SimpleNamespace(key=f"gcn-notice:followup:{uuid.uuid4().hex}", payload=notice,
                            created_at=datetime.now(timezone.utc))
    receipt = channel.send(entry)
    channel.close()
    found = channel.recover(entry)
    assert found is not None and (found["partition"], found["offset"]) == (receipt["partition"], receipt["offset"])
