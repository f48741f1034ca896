"""Settings: environment, TOML presets, secrets (env and 0600 file), config hash, topics.

Expected preset values are read independently from the preset files with ``tomllib``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker import plugins
from broker.config import Settings, SettingsError, default_home, load_settings, read_secrets_file, settings_class
from broker.errors import BrokerError

PRESETS = Path(__file__).resolve().parents[2] / "deploy" / "presets"
LOCAL = PRESETS / "local.toml"
PRODUCTION = PRESETS / "production.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No MMA_BROKER_* variable of the developer's shell leaks into these tests."""
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)


def _toml(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _secret_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


# ---------------------------------------------------------------- defaults and environment
def test_defaults_run_on_one_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = settings_class()()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.topic_prefix == ""
    assert s.home == (tmp_path / "xdg" / "mma-broker").resolve()
    assert s.archive.database_url is None
    assert [(u.name, u.kind) for u in s.upstreams] == [("notices", "kafka"), ("ztf", "kafka")]
    assert (s.events_topic, s.dlq_topic) == ("mma.events", "mma.dlq")


def test_environment_nested_with_double_underscore(monkeypatch, tmp_path):
    monkeypatch.setenv("MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS", "kafka-a:9093,kafka-b:9093")
    monkeypatch.setenv("MMA_BROKER_KAFKA__TOPIC_PREFIX", "t1.")
    monkeypatch.setenv("MMA_BROKER_GROUP_ID", "g-env")
    monkeypatch.setenv("MMA_BROKER_INGEST__BATCH_SIZE", "17")
    monkeypatch.setenv("MMA_BROKER_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("MMA_BROKER_UPSTREAMS", json.dumps([{"name": "only", "topics": ["igwn.gwalert"]}]))
    s = settings_class()()
    assert s.kafka.bootstrap_servers == "kafka-a:9093,kafka-b:9093"
    assert s.kafka.topic_prefix == "t1."
    assert s.group_id == "g-env"
    assert s.ingest.batch_size == 17
    assert s.home == (tmp_path / "h").resolve()
    assert [(u.name, u.kind, u.topics) for u in s.upstreams] == [("only", "kafka", ["igwn.gwalert"])]


@pytest.mark.parametrize("xdg", [None, "", "relative/data"])
def test_default_home_is_the_user_data_folder(monkeypatch, tmp_path, xdg):
    """Never inside the installation: ``~/.local/share/mma-broker`` when XDG_DATA_HOME is
    unset, empty or relative (the XDG Base Directory specification ignores those)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert default_home() == tmp_path / ".local" / "share" / "mma-broker"
    assert settings_class()().home == (tmp_path / ".local" / "share" / "mma-broker").resolve()


def test_home_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert settings_class()(home=Path("rel/state")).home == tmp_path.resolve() / "rel" / "state"


def test_unknown_keys_are_rejected():
    with pytest.raises(BrokerError, match=r"^invalid setting kafka\.bootstrap_server: Extra inputs"):
        settings_class()(kafka={"bootstrap_server": "typo:9092"})
    with pytest.raises(BrokerError, match=r"^invalid setting no_such_setting: "):
        settings_class()(no_such_setting=1)


# ---------------------------------------------------------------- presets
def test_local_preset_is_the_embedded_defaults():
    """local.toml says it is the defaults written out: same settings, same hash."""
    s = load_settings(LOCAL)
    raw = _toml(LOCAL)
    assert s.kafka.bootstrap_servers == raw["kafka"]["bootstrap_servers"]
    assert [u.model_dump() for u in s.upstreams] == [u.model_dump() for u in settings_class()().upstreams]
    assert s.config_hash() == settings_class()().config_hash()


def test_production_preset_values():
    raw = _toml(PRODUCTION)
    s = load_settings(PRODUCTION)
    assert s.kafka.bootstrap_servers == raw["kafka"]["bootstrap_servers"]
    assert s.archive.raw_store == raw["archive"]["raw_store"] == "postgres"
    assert [(u.name, u.kind) for u in s.upstreams] == [(u["name"], u["kind"]) for u in raw["upstreams"]]
    by_name = {u.name: u for u in s.upstreams}
    raw_by_name = {u["name"]: u for u in raw["upstreams"]}
    assert by_name["gcn"].topics == raw_by_name["gcn"]["topics"]
    assert by_name["gcn"].client_id == raw_by_name["gcn"]["client_id"]
    assert by_name["ztf"].bootstrap_servers == raw_by_name["ztf"]["bootstrap_servers"]
    assert by_name["ztf"].group_id == raw_by_name["ztf"]["group_id"]
    assert by_name["igwn"].batch_size == raw_by_name["igwn"]["batch_size"]
    # no secret in the preset: nothing is set until env or secrets_file provide it
    assert all(u.client_secret is None for u in s.upstreams)
    assert s.archive.database_url is None


def test_config_file_via_environment_variable(monkeypatch):
    monkeypatch.setenv("MMA_BROKER_CONFIG", str(PRODUCTION))
    assert settings_class()().archive.raw_store == "postgres"


def test_environment_wins_over_preset_and_overrides_win_over_environment(monkeypatch):
    monkeypatch.setenv("MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("MMA_BROKER_GROUP_ID", "env-group")
    s = load_settings(PRODUCTION)
    assert s.kafka.bootstrap_servers == "from-env:9092"
    assert s.group_id == "env-group"
    assert s.archive.raw_store == "postgres"  # the rest of the preset still applies
    s = load_settings(PRODUCTION, group_id="override-group")
    assert s.group_id == "override-group"


def test_missing_config_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(BrokerError, match="nope.toml") as info:
        load_settings(missing)
    assert "\n" not in str(info.value)


def test_preset_with_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbootstrap_servers = "x:1"\nbootstrap_server = "typo"\n')
    with pytest.raises(BrokerError, match=r"^invalid setting kafka\.bootstrap_server: Extra inputs are not permitted$"):
        load_settings(bad)


# ---------------------------------------------------------------- secrets
def test_client_secret_from_environment(monkeypatch):
    monkeypatch.setenv("MMA_BROKER_GCN_CLIENT_SECRET", "env-gcn-secret-123")
    s = load_settings(PRODUCTION)
    gcn = next(u for u in s.upstreams if u.name == "gcn")
    assert gcn.client_secret.get_secret_value() == "env-gcn-secret-123"
    assert all(u.client_secret is None for u in s.upstreams if u.name != "gcn")


def test_hyphenated_upstream_name_maps_to_underscore_variable(monkeypatch):
    monkeypatch.setenv("MMA_BROKER_GCN_TEST_CLIENT_SECRET", "hyphen-secret")
    s = load_settings(upstreams=[{"name": "gcn-test", "kind": "gcn", "client_id": "cid", "topics": ["gcn.x"]}])
    assert s.upstreams[0].client_secret.get_secret_value() == "hyphen-secret"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_secrets_file_owner_only_is_read(tmp_path, mode):
    path = _secret_file(
        tmp_path, 'gcn_client_secret = "file-gcn-secret"\ndatabase_url = "postgresql+psycopg://u:pw-file@db/x"\n', mode
    )
    s = load_settings(PRODUCTION, secrets_file=path)
    gcn = next(u for u in s.upstreams if u.name == "gcn")
    assert gcn.client_secret.get_secret_value() == "file-gcn-secret"
    assert s.archive.database_url.get_secret_value() == "postgresql+psycopg://u:pw-file@db/x"
    assert read_secrets_file(path) == {
        "gcn_client_secret": "file-gcn-secret",
        "database_url": "postgresql+psycopg://u:pw-file@db/x",
    }


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o070])
def test_secrets_file_readable_by_others_is_refused(tmp_path, mode):
    path = _secret_file(tmp_path, 'gcn_client_secret = "must-not-leak"\n', mode)
    with pytest.raises(BrokerError) as info:
        load_settings(PRODUCTION, secrets_file=path)
    msg = str(info.value)
    assert str(path) in msg and oct(mode) in msg and "chmod 600" in msg
    assert "must-not-leak" not in msg
    assert "\n" not in msg


def test_environment_secret_wins_over_secrets_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MMA_BROKER_GCN_CLIENT_SECRET", "env-wins")
    monkeypatch.setenv("MMA_BROKER_ARCHIVE__DATABASE_URL", "postgresql+psycopg://u:env@db/x")
    path = _secret_file(tmp_path, 'gcn_client_secret = "file"\ndatabase_url = "postgresql+psycopg://u:file@db/x"\n', 0o600)
    s = load_settings(PRODUCTION, secrets_file=path)
    assert next(u for u in s.upstreams if u.name == "gcn").client_secret.get_secret_value() == "env-wins"
    assert s.archive.database_url.get_secret_value() == "postgresql+psycopg://u:env@db/x"


def test_secrets_never_appear_in_repr_or_json(monkeypatch, tmp_path):
    monkeypatch.setenv("MMA_BROKER_GCN_CLIENT_SECRET", "zz-gcn-secret-zz")
    path = _secret_file(tmp_path, 'database_url = "postgresql+psycopg://u:zz-db-pw-zz@db/x"\n', 0o600)
    s = load_settings(PRODUCTION, secrets_file=path, followup={"mmoda_token": "zz-mmoda-zz"})
    assert isinstance(s.followup.mmoda_token, SecretStr)
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))):
        for secret in ("zz-gcn-secret-zz", "zz-db-pw-zz", "zz-mmoda-zz"):
            assert secret not in text


# ---------------------------------------------------------------- config hash and topics
def test_config_hash_ignores_secret_values():
    base = load_settings(PRODUCTION)
    h = base.config_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    a = load_settings(PRODUCTION, archive={"database_url": "postgresql+psycopg://u:aaa@db/x", "raw_store": "postgres"})
    b = load_settings(PRODUCTION, archive={"database_url": "postgresql+psycopg://u:bbb@db/x", "raw_store": "postgres"})
    assert a.config_hash() == b.config_hash()
    ups = _toml(PRODUCTION)["upstreams"]
    c = load_settings(PRODUCTION, upstreams=[dict(u, client_secret="one") if u["name"] == "gcn" else u for u in ups])
    d = load_settings(PRODUCTION, upstreams=[dict(u, client_secret="two") if u["name"] == "gcn" else u for u in ups])
    assert c.config_hash() == d.config_hash() == h


def test_config_hash_follows_non_secret_settings():
    s = load_settings(PRODUCTION)
    assert load_settings(PRODUCTION).config_hash() == s.config_hash()  # deterministic
    assert load_settings(PRODUCTION, group_id="other").config_hash() != s.config_hash()
    assert load_settings(PRODUCTION, kafka={"bootstrap_servers": "x:1"}).config_hash() != s.config_hash()
    assert load_settings(LOCAL).config_hash() != s.config_hash()


def test_topic_prefix():
    assert settings_class()().topic("mma.events") == "mma.events"
    s = settings_class()(kafka={"topic_prefix": "tabc."})
    assert s.topic("mma.events") == "tabc.mma.events"
    assert s.topic(s.dlq_topic) == "tabc.mma.dlq"


# ---------------------------------------------------------------- sections from plugins
def test_followup_section_comes_from_its_entry_point():
    from followup.config import FollowupSettings

    assert "followup" in plugins.available(plugins.SETTINGS)
    assert "followup" not in Settings.model_fields  # the core knows no plugin
    cls = settings_class()
    assert cls is settings_class() and issubclass(cls, Settings)  # built once
    s = cls()
    assert isinstance(s.followup, FollowupSettings)
    assert (s.followup.requests_topic, s.followup.results_topic) == ("mma.followup.requests", "mma.followup.results")


def test_followup_section_from_toml_and_environment(tmp_path, monkeypatch):
    preset = tmp_path / "p.toml"
    preset.write_text('[followup]\nwindow_s = 120.0\nrequests_topic = "x.requests"\n'
                      '[followup.lightcurves]\nkind = "isdc"\n')
    monkeypatch.setenv("MMA_BROKER_FOLLOWUP__BATCH_SIZE", "7")
    s = load_settings(preset)
    assert (s.followup.window_s, s.followup.requests_topic, s.followup.batch_size) == (120.0, "x.requests", 7)
    assert s.followup.lightcurves.kind == "isdc"
    assert s.config_hash() != load_settings().config_hash()


def test_followup_error_is_one_line_without_the_value(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[followup]\nwindow_s = "zz-not-a-number-zz"\nno_such_key = 1\n')
    with pytest.raises(SettingsError) as info:
        load_settings(preset)
    lines = str(info.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["invalid setting followup.no_such_key",
                                                            "invalid setting followup.window_s"]
    assert "zz-not-a-number-zz" not in str(info.value)


def test_mmoda_token_from_secrets_file_and_environment(tmp_path, monkeypatch):
    path = _secret_file(tmp_path, 'mmoda_token = "zz-file-token-zz"\n', 0o600)
    s = load_settings(secrets_file=path)
    assert s.followup.mmoda_token.get_secret_value() == "zz-file-token-zz"
    assert "zz-file-token-zz" not in s.model_dump_json() and "zz-file-token-zz" not in repr(s)
    monkeypatch.setenv("MMA_BROKER_FOLLOWUP__MMODA_TOKEN", "zz-env-token-zz")
    assert load_settings(secrets_file=path).followup.mmoda_token.get_secret_value() == "zz-env-token-zz"


def test_broken_settings_plugin_is_named_and_does_not_stop_the_rest(monkeypatch, caplog):
    from importlib.metadata import EntryPoint

    broken = EntryPoint("broken", "no_such_module_zz:Model", plugins.SETTINGS)
    clash = EntryPoint("kafka", "followup.config:FollowupSettings", plugins.SETTINGS)
    real = plugins.available(plugins.SETTINGS)
    monkeypatch.setattr(plugins, "available", lambda group: {**real, "broken": broken, "kafka": clash}
                        if group == plugins.SETTINGS else {})
    settings_class.cache_clear()
    try:
        s = settings_class()(broken={"anything": 1})
        assert s.broken == {"anything": 1} and s.followup.window_s == 300.0
        assert s.kafka.bootstrap_servers == "127.0.0.1:9092"  # the core field wins over the clash
        text = caplog.text
        assert "'broken'" in text and "no_such_module_zz" in text and "'kafka'" in text
    finally:
        settings_class.cache_clear()
