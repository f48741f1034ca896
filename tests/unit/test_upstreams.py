"""Upstream consumer configuration per protocol, topic prefixing, admin config.

No server is contacted: configs are checked as data, the hop-client credentials come
from a temporary ``auth.toml`` in hop-client's own format, and the Kafka client
classes are replaced by recorders where a client would be built.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import confluent_kafka
import confluent_kafka.admin
import pytest

from broker.config import Settings, UpstreamSettings
from broker.errors import BrokerError
from broker.kafka import MAX_MESSAGE_BYTES
from broker.upstreams import HOPSKOTCH_BOOTSTRAP, consumer_config, make_admin, make_upstream_consumer, upstream_topics

FAKE_USER = "fake-hop-user-7f3a"
FAKE_PASSWORD = "fake-hop-password-c91e"
GCN_SECRET = "fake-gcn-secret-51d0"

CONSUMER_ONLY = {"group.id", "enable.auto.commit", "auto.offset.reset", "fetch.max.bytes",
                 "max.partition.fetch.bytes", "queued.max.messages.kbytes", "fetch.queue.backoff.ms", "isolation.level",
                 "topic.metadata.refresh.interval.ms", "partition.assignment.strategy"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)


def _auth_toml(tmp_path: Path, *, hostname: str = "kafka.scimma.org", mode: int = 0o600, body: str | None = None) -> Path:
    """An auth.toml as ``hop auth add`` writes it (a list of [[auth]] tables)."""
    path = tmp_path / "auth.toml"
    path.write_text(body if body is not None else (
        "[[auth]]\n"
        f'username = "{FAKE_USER}"\n'
        f'password = "{FAKE_PASSWORD}"\n'
        f'hostname = "{hostname}"\n'
        'protocol = "SASL_SSL"\n'
        'mechanism = "SCRAM-SHA-512"\n'
    ))
    os.chmod(path, mode)
    return path


def _no_secret(exc: BaseException, *secrets: str) -> None:
    text = str(exc) + repr(exc.args)
    for s in secrets:
        assert s not in text


# ---------------------------------------------------------------- common consumer settings
def test_kafka_kind_uses_our_cluster_and_its_extra_config():
    s = Settings(group_id="gid", kafka={"bootstrap_servers": "k1:9092,k2:9092", "config": {"security.protocol": "SSL"}})
    up = UpstreamSettings(name="notices", topics=["igwn.gwalert"], config={"auto.offset.reset": "latest"})
    cfg = consumer_config(s, up)
    assert cfg["bootstrap.servers"] == "k1:9092,k2:9092"
    assert cfg["group.id"] == "gid.ingest.notices"
    assert cfg["enable.auto.commit"] is False
    assert cfg["security.protocol"] == "SSL"
    assert cfg["auto.offset.reset"] == "latest"  # the upstream's own config wins
    assert cfg["max.partition.fetch.bytes"] == MAX_MESSAGE_BYTES
    assert cfg["fetch.max.bytes"] >= cfg["max.partition.fetch.bytes"]


def test_kafka_kind_own_bootstrap_and_group():
    s = Settings()
    up = UpstreamSettings(name="x", topics=["t"], bootstrap_servers="elsewhere:19092", group_id="my-group")
    cfg = consumer_config(s, up)
    assert cfg["bootstrap.servers"] == "elsewhere:19092"
    assert cfg["group.id"] == "my-group"


# ---------------------------------------------------------------- gcn
def test_gcn_kind_gives_oidc_settings():
    up = UpstreamSettings(name="gcn", kind="gcn", topics=["gcn.classic.voevent.FERMI_GBM_FLT_POS"],
                          client_id="my-client-id", client_secret=GCN_SECRET)
    cfg = consumer_config(Settings(group_id="g"), up)
    assert cfg["bootstrap.servers"] == "kafka.gcn.nasa.gov"
    assert cfg["security.protocol"].lower() == "sasl_ssl"
    assert cfg["sasl.mechanisms"] == "OAUTHBEARER"
    assert cfg["sasl.oauthbearer.method"] == "oidc"
    assert cfg["sasl.oauthbearer.client.id"] == "my-client-id"
    assert cfg["sasl.oauthbearer.client.secret"] == GCN_SECRET
    assert cfg["sasl.oauthbearer.token.endpoint.url"] == "https://auth.gcn.nasa.gov/oauth2/token"
    assert cfg["group.id"] == "g.ingest.gcn"  # ours, not gcn-kafka's random uuid
    assert cfg["enable.auto.commit"] is False
    assert "client_secret" not in cfg and "client_id" not in cfg and "domain" not in cfg


def test_gcn_kind_test_domain_and_explicit_bootstrap():
    up = UpstreamSettings(name="gcn", kind="gcn", topics=["t"], client_id="cid", client_secret=GCN_SECRET,
                          domain="test.gcn.nasa.gov")
    cfg = consumer_config(Settings(), up)
    assert cfg["bootstrap.servers"] == "kafka.test.gcn.nasa.gov"
    assert cfg["sasl.oauthbearer.token.endpoint.url"] == "https://auth.test.gcn.nasa.gov/oauth2/token"
    up = up.model_copy(update={"bootstrap_servers": "my-gcn-mirror:9092"})
    assert consumer_config(Settings(), up)["bootstrap.servers"] == "my-gcn-mirror:9092"


@pytest.mark.parametrize("client_id, client_secret", [(None, GCN_SECRET), ("cid", None), (None, None), ("", GCN_SECRET)])
def test_gcn_kind_without_credentials_is_refused(client_id, client_secret):
    up = UpstreamSettings(name="gcn", kind="gcn", topics=["t"], client_id=client_id, client_secret=client_secret)
    with pytest.raises(BrokerError, match="'gcn'.*client_id and client_secret") as info:
        consumer_config(Settings(), up)
    _no_secret(info.value, GCN_SECRET)


# ---------------------------------------------------------------- hop
def test_hop_kind_reads_hop_client_credentials(tmp_path):
    up = UpstreamSettings(name="igwn", kind="hop", topics=["igwn.gwalert"], hop_auth_file=_auth_toml(tmp_path))
    cfg = consumer_config(Settings(), up)
    assert cfg["bootstrap.servers"] == HOPSKOTCH_BOOTSTRAP == "kafka.scimma.org:9092"
    assert cfg["security.protocol"] == "SASL_SSL"
    assert cfg["sasl.mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl.username"] == FAKE_USER
    assert cfg["sasl.password"] == FAKE_PASSWORD
    assert cfg["group.id"] == "mma-broker.ingest.igwn"


def test_hop_kind_picks_the_credential_of_its_host(tmp_path):
    body = (
        '[[auth]]\nusername = "other-user"\npassword = "other-pw"\nhostname = "kafka.other.org"\n'
        'protocol = "SASL_SSL"\nmechanism = "SCRAM-SHA-256"\n'
        f'[[auth]]\nusername = "{FAKE_USER}"\npassword = "{FAKE_PASSWORD}"\nhostname = "kafka.scimma.org"\n'
        'protocol = "SASL_SSL"\nmechanism = "SCRAM-SHA-512"\n'
    )
    up = UpstreamSettings(name="igwn", kind="hop", topics=["igwn.gwalert"], hop_auth_file=_auth_toml(tmp_path, body=body))
    cfg = consumer_config(Settings(), up)
    assert (cfg["sasl.username"], cfg["sasl.mechanism"]) == (FAKE_USER, "SCRAM-SHA-512")


@pytest.mark.parametrize("case", ["missing", "world-readable", "malformed", "no-auth-section"])
def test_hop_kind_unusable_credentials_error_has_no_password(tmp_path, case):
    if case == "missing":
        path = tmp_path / "absent" / "auth.toml"
    elif case == "world-readable":
        path = _auth_toml(tmp_path, mode=0o644)
    elif case == "malformed":
        path = _auth_toml(tmp_path, body=f'[[auth]]\nusername = "{FAKE_USER}"\npassword = "{FAKE_PASSWORD}\n')
    else:
        path = _auth_toml(tmp_path, body=f'[other]\nusername = "{FAKE_USER}"\npassword = "{FAKE_PASSWORD}"\n')
    up = UpstreamSettings(name="igwn", kind="hop", topics=["igwn.gwalert"], hop_auth_file=path)
    with pytest.raises(BrokerError, match="'igwn'.*hop") as info:
        consumer_config(Settings(), up)
    _no_secret(info.value, FAKE_PASSWORD)
    assert "\n" not in str(info.value)


def test_hop_kind_no_credential_for_the_host_is_a_broker_error(tmp_path):
    """A stored credential for another host: a BrokerError naming the upstream, no password."""
    up = UpstreamSettings(name="igwn", kind="hop", topics=["igwn.gwalert"],
                          hop_auth_file=_auth_toml(tmp_path, hostname="kafka.elsewhere.org"))
    with pytest.raises(BrokerError, match="'igwn'") as info:
        consumer_config(Settings(), up)
    _no_secret(info.value, FAKE_PASSWORD)


# ---------------------------------------------------------------- ztf
def test_ztf_kind_requires_bootstrap():
    with pytest.raises(BrokerError, match="'ztf'.*bootstrap_servers"):
        consumer_config(Settings(), UpstreamSettings(name="ztf", kind="ztf", topics=["^ztf_.*$"]))


def test_ztf_kind_does_not_inherit_our_cluster_settings():
    s = Settings(kafka={"config": {"security.protocol": "SSL"}})
    up = UpstreamSettings(name="ztf", kind="ztf", topics=["^ztf_.*$"], bootstrap_servers="public.alerts.ztf.uw.edu:9092",
                          group_id="inst-group")
    cfg = consumer_config(s, up)
    assert cfg["bootstrap.servers"] == "public.alerts.ztf.uw.edu:9092"
    assert cfg["group.id"] == "inst-group"
    assert "security.protocol" not in cfg


# ---------------------------------------------------------------- topics
NOTICE_TOPICS = ["igwn.gwalert", "gcn.classic.voevent.FERMI_GBM_FLT_POS", "gcn.notices.swift.bat.guano"]
ZTF_TOPICS = ["ztf_20231012_programid1", "ztf_20200202_programid2"]
OTHER_TOPICS = ["mma.events", "mma.dlq", "igwn.gwalert.test", "ztf_2023101_programid1", "ztf_20231012_programid",
                "xgcn.classic", "lvk.gwalert"]


def test_topics_without_prefix_are_unchanged():
    s = Settings()
    for up in s.upstreams:
        assert upstream_topics(s, up) == up.topics


@pytest.mark.parametrize("prefix", ["t1a2b3c4.", "tenant_x."])
def test_prefixed_default_patterns_match_the_right_topics(prefix):
    s = Settings(kafka={"topic_prefix": prefix})
    notices, ztf = s.upstreams
    (p_notices,) = upstream_topics(s, notices)
    (p_ztf,) = upstream_topics(s, ztf)
    for pattern in (p_notices, p_ztf):
        assert pattern.startswith("^") and pattern.endswith("$")
        assert "(?:" not in pattern and "\\d" not in pattern  # POSIX ERE, as librdkafka reads it
    for t in NOTICE_TOPICS:
        assert re.search(p_notices, prefix + t), t
        assert not re.search(p_ztf, prefix + t), t
        assert not re.search(p_notices, t), t  # the unprefixed topic is someone else's
    for t in ZTF_TOPICS:
        assert re.search(p_ztf, prefix + t), t
        assert not re.search(p_notices, prefix + t), t
        assert not re.search(p_ztf, t), t
    for t in OTHER_TOPICS:
        assert not re.search(p_notices, prefix + t), t
        assert not re.search(p_ztf, prefix + t), t
    assert not re.search(p_notices, "zz" + prefix + "igwn.gwalert")


def test_prefixed_literal_topics():
    s = Settings(kafka={"topic_prefix": "t9."})
    up = UpstreamSettings(name="n", topics=["igwn.gwalert", "gcn.notices.swift.bat.guano"])
    assert upstream_topics(s, up) == ["t9.igwn.gwalert", "t9.gcn.notices.swift.bat.guano"]


def test_prefixed_pattern_without_end_anchor_keeps_prefix_semantics():
    """``^gcn\\.classic\\.voevent\\.`` subscribes to every Classic VOEvent topic; with a
    prefix it must still match them, not only the bare topic ``gcn.classic.voevent.``."""
    s = Settings(kafka={"topic_prefix": "t1."})
    up = UpstreamSettings(name="n", topics=[r"^gcn\.classic\.voevent\."])
    (pattern,) = upstream_topics(s, up)
    assert re.search(pattern, "t1.gcn.classic.voevent.FERMI_GBM_FLT_POS")
    assert re.search(pattern, "t1.gcn.classic.voevent.INTEGRAL_WAKEUP")
    assert not re.search(pattern, "gcn.classic.voevent.FERMI_GBM_FLT_POS")


@pytest.mark.parametrize("kind, extra", [("ztf", {"bootstrap_servers": "z:9092"}), ("hop", {}), ("gcn", {})])
def test_prefix_only_applies_to_our_kafka(kind, extra):
    s = Settings(kafka={"topic_prefix": "t1."})
    up = UpstreamSettings(name="u", kind=kind, topics=["igwn.gwalert", r"^ztf_[0-9]{8}_programid1$"], **extra)
    assert upstream_topics(s, up) == ["igwn.gwalert", r"^ztf_[0-9]{8}_programid1$"]


# ---------------------------------------------------------------- clients
class _Recorder:
    def __init__(self):
        self.configs: list[dict] = []
        self.subscriptions: list[list[str]] = []

    def factory(self, cfg):
        self.configs.append(dict(cfg))
        return self

    def subscribe(self, topics):
        self.subscriptions.append(list(topics))


def test_make_admin_drops_consumer_only_keys(monkeypatch, tmp_path):
    rec = _Recorder()
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", rec.factory)
    s = Settings(kafka={"config": {"security.protocol": "SSL"}})
    make_admin(s, s.upstreams[0])
    up = UpstreamSettings(name="igwn", kind="hop", topics=["igwn.gwalert"], hop_auth_file=_auth_toml(tmp_path))
    make_admin(s, up)
    kafka_cfg, hop_cfg = rec.configs
    full = consumer_config(s, s.upstreams[0])
    assert kafka_cfg == {k: v for k, v in full.items() if k not in CONSUMER_ONLY}
    assert set(_base_keys(s)) <= CONSUMER_ONLY | {"logger"}  # every consumer key of _base is dropped
    assert kafka_cfg["bootstrap.servers"] == "127.0.0.1:9092" and kafka_cfg["security.protocol"] == "SSL"
    assert not CONSUMER_ONLY & set(hop_cfg)
    assert (hop_cfg["sasl.username"], hop_cfg["sasl.password"]) == (FAKE_USER, FAKE_PASSWORD)


def _base_keys(s: Settings) -> list[str]:
    from broker.upstreams import _base

    return list(_base(s, s.upstreams[0]))


def test_make_upstream_consumer_subscribes_with_prefix(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(confluent_kafka, "Consumer", rec.factory)
    s = Settings(kafka={"topic_prefix": "t5."})
    make_upstream_consumer(s, s.upstreams[1])
    assert rec.configs[0]["group.id"] == "mma-broker.ingest.ztf"
    assert rec.subscriptions == [upstream_topics(s, s.upstreams[1])]
    assert re.search(rec.subscriptions[0][0], "t5.ztf_20231012_programid1")
