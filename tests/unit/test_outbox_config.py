"""[publish] settings, channel building, serve's app and the outbox's pure helpers."""

from __future__ import annotations

import hashlib
import os
import sys
import types

import pytest

from broker import plugins
from broker.config import load_settings, scrub_secrets
from broker.sinks.build import build_channels, load_factory
from broker.sinks.config import PublishSettings
from broker.sinks.outbox import STATES, OutboxEntry, canonical_sha256


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("MMA_BROKER_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("MMA_BROKER_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_approval_defaults_gcn_circular_and_tns_but_not_hermes_test_or_gcn_notices():
    p = PublishSettings()
    assert p.requires_approval("gcn-circular") and p.requires_approval("tns")
    assert not p.requires_approval("gcn-notice")
    assert not p.requires_approval("hermes")  # hermes.test by default
    assert p.requires_approval("hermes", {"topic": "hermes.discovery"})
    assert not p.requires_approval("my-own-channel")
    assert not PublishSettings(approval={"gcn_circular": False}).requires_approval("gcn-circular")
    assert PublishSettings(hermes={"topic": "hermes.discovery"}).requires_approval("hermes")


def test_states_are_the_published_vocabulary():
    assert STATES == ("pending_approval", "queued", "sending", "sent", "failed", "withdrawn", "rejected", "unknown")


def test_publish_section_from_toml_and_env(clean_env, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[publish]\npublic_base_url = "https://broker.example.org/"\n'
                    '[publish.hermes]\ntopic = "hermes.discovery"\nauth = "scram"\nusername = "u"\n'
                    '[publish.tns]\nenabled = true\nbot_id = 12\n')
    clean_env.setenv("MMA_BROKER_PUBLISH__GCN_CIRCULAR__TO", '["circulars@example.org"]')
    s = load_settings(toml)
    assert s.publish.public_base_url == "https://broker.example.org"
    assert s.publish.artifact_url("ab" * 32) == "https://broker.example.org/artifacts/sha256/" + "ab" * 32
    assert s.publish.hermes.topic == "hermes.discovery" and s.publish.tns.bot_id == 12
    assert s.publish.gcn_circular.to == ["circulars@example.org"]


def test_a_bad_publish_setting_is_one_line_naming_it(clean_env, tmp_path):
    from broker.config import SettingsError

    toml = tmp_path / "c.toml"
    toml.write_text('[publish]\npublic_base_url = "ftp://x"\n')
    with pytest.raises(SettingsError, match=r"invalid setting publish.public_base_url: must start with http"):
        load_settings(toml)


def test_secrets_of_sub_sections_come_from_the_secrets_file_and_never_show(clean_env, tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('hermes_password = "hop-pw-123"\ntns_api_key = "tns-key-456"\nsmtp_password = "smtp-789"\n')
    secrets.chmod(0o600)
    clean_env.setenv("MMA_BROKER_SECRETS_FILE", str(secrets))
    clean_env.setenv("MMA_BROKER_PUBLISH__GCN_NOTICE__PASSWORD", "gcn-secret-000")
    s = load_settings()
    p = s.publish
    assert p.hermes.password.get_secret_value() == "hop-pw-123"
    assert p.tns.api_key.get_secret_value() == "tns-key-456"
    assert p.gcn_circular.password.get_secret_value() == "smtp-789"
    assert p.gcn_notice.password.get_secret_value() == "gcn-secret-000"
    text = repr(s) + str(s.model_dump(mode="json"))
    for secret in ("hop-pw-123", "tns-key-456", "smtp-789", "gcn-secret-000"):
        assert secret not in text
    clean_env.setenv("MMA_BROKER_PUBLISH__TNS__API_KEY", "tns-env-key-1")
    assert scrub_secrets("HTTP 401 for key tns-env-key-1") == "HTTP 401 for key ***"
    assert scrub_secrets("api_key=abcdef123") == "api_key=***"


class _Ch:
    def __init__(self, name):
        self.name = name


def test_channels_from_publish_channels_and_entry_points(clean_env, monkeypatch):
    mod = types.ModuleType("fake_outbox_channels")
    mod.make = lambda settings: _Ch("mine")
    mod.off = lambda settings: None
    monkeypatch.setitem(sys.modules, "fake_outbox_channels", mod)
    s = load_settings(publish={"channels": {"mine": "fake_outbox_channels:make",
                                            "gone": "fake_outbox_channels:off"}})
    chans = build_channels(s)
    assert chans["mine"].name == "mine" and "gone" not in chans
    with pytest.raises(plugins.PluginError, match="expected 'module:factory'"):
        load_factory("nocolon")
    with pytest.raises(plugins.PluginError, match="failed to load"):
        load_factory("fake_outbox_channels:absent")
    mod.broken = lambda settings: (_ for _ in ()).throw(RuntimeError("password=hunter22 refused"))
    s = load_settings(publish={"channels": {"b": "fake_outbox_channels:broken"}})
    with pytest.raises(plugins.PluginError, match=r"channel 'b' .* failed to start: RuntimeError") as exc:
        build_channels(s)
    assert "hunter22" not in str(exc.value)


def test_a_disabled_built_in_channel_is_not_even_loaded(clean_env, monkeypatch):
    loaded = []
    s = load_settings()  # tns: enabled = false by default (built before the plugins are faked)
    monkeypatch.setattr(plugins, "available", lambda group: {"tns": None, "hermes": None}
                        if group == "mma_broker.channels" else {})
    monkeypatch.setattr(plugins, "load", lambda group, name: loaded.append(name) or (lambda s: _Ch(name)))
    assert list(build_channels(s)) == ["hermes"] and loaded == ["hermes"]


def test_canonical_sha256_ignores_key_order_and_refuses_nan():
    assert canonical_sha256({"a": 1, "b": [1, "é"]}) == canonical_sha256({"b": [1, "é"], "a": 1})
    assert canonical_sha256({"a": 1}) != canonical_sha256({"a": 1.5})
    with pytest.raises(ValueError):
        canonical_sha256({"x": float("nan")})


def test_entry_to_json_has_utc_times():
    from datetime import datetime, timezone

    e = OutboxEntry(id=1, key="k", channel="hermes", payload={}, state="sent",
                    sent_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert e.to_json()["sent_at"] == "2026-01-02T03:04:05Z"


def test_serve_app_answers_artifacts_by_sha256():
    from fastapi.testclient import TestClient

    from broker.sinks.web import make_app

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    digest = hashlib.sha256(png).hexdigest()
    corrupt = "0" * 64
    store = {digest: (png, "image/png"), corrupt: (b"other bytes", "image/png")}

    def fetch(h):
        if h == "f" * 64:
            raise OSError("/secret/host/path/raw.seg: I/O error")
        return store.get(h)

    client = TestClient(make_app(fetch, "https://broker.example.org"))
    r = client.get(f"/artifacts/sha256/{digest}")
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{digest}"' and "immutable" in r.headers["cache-control"]
    meta = client.get(f"/artifacts/sha256/{digest}.json").json()
    assert meta == {"sha256": digest, "bytes": len(png), "media_type": "image/png",
                    "url": f"https://broker.example.org/artifacts/sha256/{digest}"}
    assert client.get("/artifacts/sha256/" + "1" * 64).status_code == 404
    assert client.get("/artifacts/sha256/../../etc/passwd").status_code in (400, 404)
    assert client.get("/artifacts/sha256/ABC").status_code == 400
    bad = client.get(f"/artifacts/sha256/{corrupt}")  # bytes do not match their address
    assert bad.status_code == 500 and b"other bytes" not in bad.content
    err = client.get("/artifacts/sha256/" + "f" * 64)
    assert err.status_code == 500 and "/secret" not in err.text
    assert client.get("/health").json() == {"status": "ok"}


def test_outbox_revision_is_a_core_branch_from_0001():
    from pathlib import Path

    from alembic.script import ScriptDirectory

    from broker.archive.store import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_revision("0009")
    assert rev.down_revision == "0001"
    # 0012 (the web logins and the outbox's audit trail) continues that branch and is its head
    assert script.get_revision("0012").down_revision == "0009" and "0012" in script.get_heads()
    root = Path(__file__).resolve().parents[2]
    assert Path(rev.path).resolve().parent == root / "broker" / "archive" / "migrations" / "versions"


def test_our_published_topics_are_not_read_back_by_the_default_upstreams():
    """The GCN notices and HERMES messages we produce on our own Kafka must not match an
    ingest subscription: a quickstart once dead-lettered its own 13 notices that way."""
    import re

    from broker.config import load_settings

    s = load_settings()
    ours = [s.topic(s.publish.gcn_notice.topic), s.publish.hermes.topic]
    patterns = [p for up in s.upstreams for p in up.topics]
    for topic in ours:
        for p in patterns:
            assert not (re.fullmatch(p[1:] if p.startswith("^") else p, topic) if p.startswith("^") else p == topic), \
                (topic, p)
