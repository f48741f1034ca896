"""Operational hardening found by a security review on a fresh clone.

1. settings errors never show input values (secrets given with the wrong type);
2. the embedded PostgreSQL cannot be used by another local user (private socket
   folder, SCRAM password), also for data directories made by older versions;
3. read commands never migrate and fail fast, naming the database host only;
4. replay manifests cannot name files outside their repository;
5. ``inspect`` and ``replay`` report each failing file on one line and go on.

The CLI is run as a user runs it (``python -m broker`` in a subprocess). The PostgreSQL
tests start real servers (pgserver binaries) in short ``/tmp`` folders and try to
connect as ``nobody`` with ``runuser``; they need root and are skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import broker.replay as replay_mod
from broker.config import SettingsError, load_settings, scrub_secrets
from broker.errors import BrokerError, DecodeError
from broker.replay import display_path, expand_paths, read_manifest, replay_files
from tests.conftest import ROOT as REPO_ROOT
from tests.unit.test_replay import RecordingProducer

DATA = REPO_ROOT / "tests" / "data"
GBM = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
IGWN = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json"

SECRET = "zz-Secret-Pw-8734"
"""A password-like value planted in settings; it must never be printed."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker", *map(str, args)], env=env or _env(), cwd=REPO_ROOT,
                          capture_output=True, timeout=timeout)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


@pytest.fixture()
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)


# ================================================================ 1. settings errors
SETTINGS_CASES = [
    # (id, environment, TOML preset or None, setting path named in the error)
    ("db-url-as-list-env", {"MMA_BROKER_ARCHIVE__DATABASE_URL": f'["postgresql://u:{SECRET}@h/db"]'}, None,
     "archive.database_url"),
    ("db-url-in-archive-json", {"MMA_BROKER_ARCHIVE": f'{{"database_url": ["postgresql://u:{SECRET}@h/db"]}}'},
     None, "archive.database_url"),
    ("db-url-bad-port", {"MMA_BROKER_ARCHIVE__DATABASE_URL": f"postgresql+psycopg://u:{SECRET}@h:port/db"}, None,
     "archive.database_url"),
    ("client-secret-list-env",
     {"MMA_BROKER_UPSTREAMS": f'[{{"name": "gcn", "kind": "gcn", "topics": ["x"], "client_secret": ["{SECRET}"]}}]'},
     None, "upstreams.0.client_secret"),
    ("client-secret-list-toml", {},
     f'[[upstreams]]\nname = "gcn"\nkind = "gcn"\ntopics = ["x"]\nclient_secret = ["{SECRET}"]\n',
     "upstreams.0.client_secret"),
    ("client-secret-table-toml", {},
     f'[[upstreams]]\nname = "gcn"\nkind = "gcn"\ntopics = ["x"]\nclient_secret = {{ value = "{SECRET}" }}\n',
     "upstreams.0.client_secret"),
    ("db-url-number-toml", {}, '[archive]\ndatabase_url = 8734\n', "archive.database_url"),
    ("mmoda-token-list-toml", {}, f'[followup]\nmmoda_token = ["{SECRET}"]\n', "followup.mmoda_token"),
    ("secret-as-int-field", {"MMA_BROKER_INGEST__BATCH_SIZE": SECRET}, None, "ingest.batch_size"),
]


def _settings_case(tmp_path: Path, env: dict[str, str], toml: str | None) -> tuple[dict[str, str], list[str]]:
    args: list[str] = []
    if toml is not None:
        preset = tmp_path / "preset.toml"
        preset.write_text(toml)
        args = ["--config", str(preset)]
    return _env(**env), args


@pytest.mark.parametrize("env,toml,loc", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_settings_error_names_the_setting_and_never_the_value(tmp_path, env, toml, loc):
    full_env, args = _settings_case(tmp_path, env, toml)
    proc = _cli(*args, "events", "list", env=full_env)
    err = _text(proc.stderr)
    assert proc.returncode == 1, err
    assert SECRET not in err and SECRET not in _text(proc.stdout)
    assert "input_value" not in err and "Traceback" not in err and "8734" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("mma-broker: error: invalid setting ") for line in lines), err
    assert any(line.startswith(f"mma-broker: error: invalid setting {loc}: ") for line in lines), err


@pytest.mark.parametrize("env,toml,loc", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_settings_exception_text_holds_no_secret(tmp_path, monkeypatch, clean_env, env, toml, loc):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    preset = None
    if toml is not None:
        preset = tmp_path / "preset.toml"
        preset.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(preset)
    exc = info.value
    assert isinstance(exc, BrokerError)
    assert exc.__cause__ is None and exc.__suppress_context__  # the ValidationError is not chained
    for text in (str(exc), repr(exc)):
        assert SECRET not in text and "input_value" not in text and "8734" not in text
    assert f"invalid setting {loc}: " in str(exc)


def test_one_line_per_problem(clean_env, monkeypatch):
    monkeypatch.setenv("MMA_BROKER_INGEST__BATCH_SIZE", "many")
    monkeypatch.setenv("MMA_BROKER_KAFKA__BOOTSTRAP_SERVER", "typo:1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert sorted(str(info.value).splitlines()) == [
        "invalid setting ingest.batch_size: Input should be a valid integer, unable to parse string as an integer",
        "invalid setting kafka.bootstrap_server: Extra inputs are not permitted",
    ]


def test_env_value_that_is_not_json_is_one_line_without_value(clean_env, monkeypatch):
    monkeypatch.setenv("MMA_BROKER_UPSTREAMS", f'[{{"name": "gcn", "client_secret": "{SECRET}"')
    with pytest.raises(SettingsError, match=r'^invalid settings: error parsing value for field "upstreams"') as info:
        load_settings()
    assert SECRET not in str(info.value)


def test_secrets_file_not_toml_is_one_line(tmp_path, clean_env):
    path = tmp_path / "secrets.toml"
    path.write_text(f'gcn_client_secret = "{SECRET}\n')  # unterminated string
    path.chmod(0o600)
    preset = tmp_path / "p.toml"
    preset.write_text(f'secrets_file = "{path}"\n')
    with pytest.raises(BrokerError, match=r"secrets file .*: not valid TOML") as info:
        load_settings(preset)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text,expected", [
    (f"postgresql+psycopg://user:{SECRET}@db:5432/x", "postgresql+psycopg://user:***@db:5432/x"),
    (f"sasl.password={SECRET} next", "sasl.password=*** next"),
    (f"{{'client_secret': '{SECRET}'}}", "{'client_secret': '***'}"),
    (f'"mmoda_token": "{SECRET}"', '"mmoda_token": "***"'),
    ("nothing secret here", "nothing secret here"),
])
def test_scrub_secrets(text, expected, clean_env):
    assert scrub_secrets(text) == expected


def test_scrub_secrets_removes_values_of_secret_env_vars(monkeypatch, clean_env):
    monkeypatch.setenv("MMA_BROKER_GCN_CLIENT_SECRET", SECRET)
    assert scrub_secrets(f"value {SECRET} was bad") == "value *** was bad"


def test_kafka_password_stays_out_of_config_hash(clean_env, monkeypatch, tmp_path):
    base = load_settings(kafka={"config": {"security.protocol": "SASL_SSL", "sasl.username": "mma"}})
    monkeypatch.setenv("MMA_BROKER_KAFKA__CONFIG__SASL.PASSWORD", SECRET)
    preset = tmp_path / "k.toml"
    preset.write_text('[kafka.config]\n"security.protocol" = "SASL_SSL"\n"sasl.username" = "mma"\n')
    s = load_settings(preset)
    assert s.kafka.config["sasl.password"] == SECRET  # the env variable reaches librdkafka's config
    assert s.config_hash() == base.config_hash()
    other = load_settings(kafka={"config": {"security.protocol": "SASL_SSL", "sasl.username": "other"}})
    assert other.config_hash() != base.config_hash()


def test_kafka_password_from_secrets_file(clean_env, tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'kafka_sasl_password = "{SECRET}"\n')
    secrets.chmod(0o600)
    s = load_settings(secrets_file=secrets, kafka={"config": {"sasl.username": "mma"}})
    assert s.kafka.config == {"sasl.username": "mma", "sasl.password": SECRET}


# ================================================================ 3. read commands
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READ_COMMANDS = [("events", "list"), ("events", "show", "some-id"), ("followup", "results"),
                 ("followup", "run", "some-id")]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=[" ".join(c) for c in READ_COMMANDS])
def test_read_command_fails_fast_on_a_closed_port(command, tmp_path):
    port = _free_port()
    env = _env(MMA_BROKER_HOME=str(tmp_path / "home"),
               MMA_BROKER_ARCHIVE__DATABASE_URL=f"postgresql+psycopg://mma:{SECRET}@127.0.0.1:{port}/archive")
    t0 = time.monotonic()
    proc = _cli(*command, env=env, timeout=60)
    elapsed = time.monotonic() - t0
    err = _text(proc.stderr)
    assert proc.returncode == 1, err
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert err.startswith(f"mma-broker: error: cannot reach the archive database at 127.0.0.1:{port}/archive: "), err
    assert "refused" in err.lower()
    assert len(err.strip().splitlines()) == 1, err
    assert SECRET not in err and "Traceback" not in err and "retry" not in err


def test_read_command_times_out_on_a_silent_server(tmp_path):
    """A port that accepts connections but never answers (a black hole): the read
    command gives up after its connect timeout instead of hanging or retrying."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        env = _env(MMA_BROKER_HOME=str(tmp_path / "home"),
                   MMA_BROKER_ARCHIVE__DATABASE_URL=f"postgresql+psycopg://mma:{SECRET}@127.0.0.1:{port}/archive")
        t0 = time.monotonic()
        proc = _cli("events", "list", env=env, timeout=60)
        elapsed = time.monotonic() - t0
    err = _text(proc.stderr)
    assert proc.returncode == 1, err
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert err.startswith(f"mma-broker: error: cannot reach the archive database at 127.0.0.1:{port}/archive: "), err
    assert "timeout" in err.lower() and SECRET not in err


def test_read_command_on_a_fresh_home_does_not_create_the_database(tmp_path):
    home = tmp_path / "home"
    proc = _cli("events", "list", env=_env(MMA_BROKER_HOME=str(home)), timeout=60)
    assert proc.returncode == 1
    assert _text(proc.stderr) == "mma-broker: error: archive not initialized: run `mma-broker run` once\n"
    assert not (home / "postgres").exists()


# ================================================================ 4. replay manifests
@pytest.fixture()
def repo(tmp_path) -> Path:
    """A small repository: pyproject.toml, alerts/ with real files, deploy/ for manifests,
    and a file outside it."""
    root = tmp_path / "repo"
    (root / "alerts" / "sub").mkdir(parents=True)
    (root / "deploy").mkdir()
    (root / "pyproject.toml").write_text("")
    shutil.copy(GBM, root / "alerts" / "gbm.xml")
    shutil.copy(IGWN, root / "alerts" / "sub" / "igwn.json")
    (tmp_path / "outside.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.json").write_text("{}")
    return root


MANIFEST_REFUSED = [
    # (id, manifest line, setup in the repo, expected error after "m.txt:<line>: ")
    ("dotdot", "../outside.json", None, r"^'\.\./outside\.json' leaves .* \('\.\.' is not allowed\)$"),
    ("dotdot-inside-pattern", "alerts/../../outside.json", None, r"leaves .*'\.\.' is not allowed"),
    ("dotdot-glob", "../*.json", None, r"leaves"),
    ("absolute", "/etc/passwd", None, r"^'/etc/passwd' is an absolute path; give paths relative to "),
    ("absolute-inside", "{root}/alerts/gbm.xml", None, r"is an absolute path"),
    ("symlink-file-out", "alerts/link.json", lambda r: (r / "alerts" / "link.json").symlink_to(r.parent / "outside.json"),
     r"/alerts/link\.json resolves outside "),
    ("symlink-dir-out", "alerts/out/*.json", lambda r: (r / "alerts" / "out").symlink_to(r.parent / "outside"),
     r"/alerts/out/o\.json resolves outside "),
    ("no-match", "alerts/none-*.json", None, r"pattern 'alerts/none-\*\.json' matches no file"),
]


@pytest.mark.parametrize("line,setup,message", [c[1:] for c in MANIFEST_REFUSED], ids=[c[0] for c in MANIFEST_REFUSED])
def test_manifest_entries_outside_the_repo_are_refused(repo, line, setup, message):
    if setup is not None:
        setup(repo)
    manifest = repo / "deploy" / "m.txt"
    manifest.write_text(f"# demo\nalerts/gbm.xml\n\n{line.format(root=repo)}\n")
    with pytest.raises(BrokerError) as info:
        read_manifest(manifest)
    text, prefix = str(info.value), f"{manifest}:4: "
    assert text.startswith(prefix) and re.search(message, text[len(prefix):]), text
    assert "\n" not in text


def test_manifest_absolute_path_is_a_one_line_cli_error(repo):
    manifest = repo / "deploy" / "m.txt"
    manifest.write_text("/etc/passwd\n")
    proc = _cli("replay", "--manifest", manifest, env=_env(MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{_free_port()}"))
    err = _text(proc.stderr)
    assert proc.returncode == 1
    assert err == f"mma-broker: error: {manifest}:1: '/etc/passwd' is an absolute path; give paths relative to {repo}\n"


def test_manifest_inside_entries_still_work(repo):
    (repo / "alerts" / "inner.json").symlink_to(repo / "alerts" / "sub" / "igwn.json")  # a link that stays inside
    manifest = repo / "deploy" / "m.txt"
    manifest.write_text("alerts/*.xml\nalerts/**/*.json\n")
    assert read_manifest(manifest) == [repo / "alerts" / "gbm.xml", repo / "alerts" / "inner.json",
                                       repo / "alerts" / "sub" / "igwn.json"]


def test_manifest_without_repo_root_is_relative_to_its_folder(tmp_path):
    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(GBM, folder / "gbm.xml")
    (folder / "m.txt").write_text("gbm.xml\n")
    if any((p / "pyproject.toml").exists() for p in folder.parents):
        pytest.skip("a pyproject.toml above the temporary folder")
    assert read_manifest(folder / "m.txt") == [folder / "gbm.xml"]
    (folder / "m.txt").write_text("../x.json\n")
    with pytest.raises(BrokerError, match="leaves"):
        read_manifest(folder / "m.txt")


def test_unreadable_manifest_is_one_line(tmp_path):
    (tmp_path / "m.txt").write_bytes(b"\xff\xfe alerts\n")
    with pytest.raises(BrokerError, match=r"manifest .*m\.txt: not UTF-8 text$"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(BrokerError, match=r"manifest .*none\.txt: No such file or directory$"):
        read_manifest(tmp_path / "none.txt")


# ================================================================ 5. one file never stops the others
NON_UTF8_NAME = os.fsdecode(b"bad-name-\xff\xfe.xml")


def _make_files(d: Path) -> dict[str, Path]:
    """One file per failure mode, plus good files before and after them."""
    f = {}
    f["good_first"] = d / "a-good.xml"
    shutil.copy(GBM, f["good_first"])
    f["bad_json"] = d / "b-bad.json"
    f["bad_json"].write_text('{"superevent_id": ')
    f["deep_json"] = d / "c-deep.json"
    f["deep_json"].write_text("[" * 200_000 + "]" * 200_000)
    f["broken_link"] = d / "d-broken.json"
    f["broken_link"].symlink_to(d / "no-such-target.json")
    f["fifo"] = d / "e-fifo.json"
    os.mkfifo(f["fifo"])
    f["folder"] = d / "f-folder.json"
    f["folder"].mkdir()
    f["missing"] = d / "g-missing.json"
    f["non_utf8"] = Path(os.fsdecode(os.fsencode(d) + b"/" + os.fsencode(NON_UTF8_NAME)))
    shutil.copy(GBM, f["non_utf8"])
    f["empty"] = d / "h-empty.avro"
    f["empty"].write_bytes(b"")
    f["good_last"] = d / "z-good.json"
    shutil.copy(IGWN, f["good_last"])
    return f


FAILURES = {
    # file key: expected reason (regular expression, after "<file>: ")
    "bad_json": r"invalid JSON",
    "deep_json": r"nest|depth",
    "broken_link": r"broken symbolic link",
    "fifo": r"not a regular file",
    "missing": r"No such file or directory",
    "empty": r"empty message",
}
"""Failures of files given by name (a folder given by name is walked instead)."""

FILE_FAILURES = dict(FAILURES, folder=r"is a folder")
"""Failures of replay_files, which reads each path it is given as one file."""


@pytest.fixture()
def alert_files(tmp_path) -> dict[str, Path]:
    d = tmp_path / "alerts"
    d.mkdir()
    return _make_files(d)


def test_inspect_reports_each_failure_on_one_line_and_goes_on(alert_files):
    order = ["good_first", *FAILURES, "non_utf8", "good_last"]
    proc = _cli("inspect", *[alert_files[k] for k in order], timeout=120)
    out, err = _text(proc.stdout), _text(proc.stderr)
    assert proc.returncode == 1
    assert "Traceback" not in err
    err_lines = err.splitlines()
    assert len(err_lines) == len(FAILURES), err
    for line, key in zip(err_lines, FAILURES):
        assert line.startswith(f"mma-broker: error: {alert_files[key]}: "), (key, line)
        assert re.search(FAILURES[key], line[len(f"mma-broker: error: {alert_files[key]}: "):]), (key, line)
    out_lines = out.splitlines()
    assert len(out_lines) == 3, out  # the two good files and the one with a non-UTF-8 name
    assert out_lines[0].startswith(f"{alert_files['good_first']}: gcn:")
    assert out_lines[1].startswith(f"{alert_files['non_utf8'].parent}/bad-name-\\xff\\xfe.xml: gcn:"), out_lines[1]
    assert out_lines[2].startswith(f"{alert_files['good_last']}: igwn:")


def test_inspect_walks_folders_and_reports_broken_links(alert_files):
    proc = _cli("inspect", "--json", alert_files["good_first"].parent, timeout=120)
    err = _text(proc.stderr)
    assert proc.returncode == 1
    # in the folder walk: FIFOs and sub-folders are not alert files; broken links are reported
    assert f"mma-broker: error: {alert_files['broken_link']}: broken symbolic link" in err.splitlines()
    assert len(_text(proc.stdout).splitlines()) == 3  # a-good.xml, bad-name.xml, z-good.json


def test_inspect_survives_a_very_deep_folder_tree(tmp_path):
    deep = tmp_path / "t"
    path = deep
    deep.mkdir()
    try:
        for _ in range(1200):  # deeper than Python's recursion limit (os.makedirs would fail)
            path = path / "d"
            path.mkdir()
        shutil.copy(GBM, path / "deep.xml")
        proc = _cli("inspect", deep, timeout=120)
        assert proc.returncode == 0, _text(proc.stderr)[-500:]
        assert _text(proc.stdout).count(": gcn:") == 1
    finally:
        subprocess.run(["rm", "-rf", str(deep)], check=False)  # shutil.rmtree recurses too


def _raising(exc: BaseException, when: bytes):
    real = __import__("broker.sources", fromlist=["upstream_topic"]).upstream_topic

    def fake(data: bytes) -> str:
        if data.startswith(when):
            raise exc
        return real(data)
    return fake


ROUTING_FAILURES = [
    # (id, exception raised by upstream_topic for the JSON file, expected reason)
    ("recursion", RecursionError("maximum recursion depth exceeded"), "nested too deeply (RecursionError)"),
    ("overflow", OverflowError("date value out of range"), "OverflowError: date value out of range"),
    ("value", ValueError("bad\nmulti-line\nmessage"), "ValueError: bad multi-line message"),
    ("key", KeyError("candidate"), "KeyError: 'candidate'"),
    ("decode", DecodeError("unknown format"), "unknown format"),
    ("memory", MemoryError(), "MemoryError"),
]


@pytest.mark.parametrize("exc,reason", [c[1:] for c in ROUTING_FAILURES], ids=[c[0] for c in ROUTING_FAILURES])
def test_replay_guards_upstream_topic_per_file(monkeypatch, tmp_path, exc, reason):
    import broker.sources

    monkeypatch.setattr(broker.sources, "upstream_topic", _raising(exc, b"{"))
    files = [GBM, IGWN, GBM]
    producer, seen = RecordingProducer(), []
    result = replay_files(files, producer, on_error=lambda p, r: seen.append((p, r)))
    assert result.errors == seen == [(IGWN, reason)]
    assert [m[0] for m in producer.messages] == ["gcn.classic.voevent.FERMI_GBM_FLT_POS"] * 2
    assert result.sent == 2


def test_replay_file_failures_table(alert_files):
    order = ["good_first", *FILE_FAILURES, "non_utf8", "good_last"]
    producer = RecordingProducer()
    result = replay_files([alert_files[k] for k in order], producer)
    assert [p for p, _ in result.errors] == [alert_files[k] for k in FILE_FAILURES]
    for (path, reason), key in zip(result.errors, FILE_FAILURES):
        assert re.search(FILE_FAILURES[key], reason), (key, reason)
        assert "\n" not in reason
    assert [m[0] for m in producer.messages] == ["gcn.classic.voevent.FERMI_GBM_FLT_POS"] * 2 + ["igwn.gwalert"]
    headers = [dict(m[2])["mma.replay.file"] for m in producer.messages]
    assert headers == [b"a-good.xml", b"bad-name-\xff\xfe.xml", b"z-good.json"]  # the name's own bytes


def test_replay_permission_errors_are_per_file(monkeypatch, alert_files, tmp_path):
    """Permission denied on a file and on a folder (simulated: root reads everything)."""
    locked_file = alert_files["good_last"]
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    shutil.copy(GBM, locked_dir / "x.xml")
    real_open, real_scandir = open, os.scandir

    def fake_open(path, *args, **kwargs):
        if Path(path) == locked_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def fake_scandir(path="."):
        if Path(path) == locked_dir:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(replay_mod, "open", fake_open, raising=False)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    walk_errors: list = []
    files = list(expand_paths([alert_files["good_first"], locked_dir, locked_file], on_error=lambda p, r: walk_errors.append((p, r))))
    assert walk_errors == [(locked_dir, "cannot read folder: Permission denied")]
    result = replay_files(files, RecordingProducer())
    assert result.errors == [(locked_file, "Permission denied")]
    assert result.sent == 1


def test_replay_cli_without_any_readable_file_needs_no_kafka(alert_files):
    keys = list(FAILURES)
    proc = _cli("replay", *[alert_files[k] for k in keys],
                env=_env(MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{_free_port()}"), timeout=60)
    err = _text(proc.stderr)
    assert proc.returncode == 1
    assert "Traceback" not in err
    prefix = "mma-broker: error: "
    lines = [ln[len(prefix):] for ln in err.splitlines() if ln.startswith(prefix + str(alert_files["good_first"].parent))]
    assert [ln.split(": ", 1)[0] for ln in lines] == [str(alert_files[k]) for k in keys]
    assert "replayed 0 file(s)" in err


def test_display_path_is_printable():
    p = Path(os.fsdecode(b"/tmp/x-\xff.json"))
    assert display_path(p) == "/tmp/x-\\xff.json"
    display_path(p).encode("utf-8")  # never raises


# ================================================================ 2. embedded PostgreSQL privacy
needs_root = pytest.mark.skipif(
    shutil.which("runuser") is None or os.geteuid() != 0,
    reason="needs root and runuser to try the server as another user (nobody)")


def _psql() -> str:
    from broker.archive.embedded import _pgserver

    return str(_pgserver()._commands.POSTGRES_BIN_PATH / "psql")


def _as_nobody(socket_dir: Path, password: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", *[f"{k}={v}" for k, v in env.items()],
                           _psql(), "-w", "-h", str(socket_dir), "-U", "postgres", "-d", "postgres",
                           "-Atc", "select current_user"],
                          capture_output=True, text=True, timeout=30, cwd="/")


def _as_root(socket_dir: Path, password: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([_psql(), "-w", "-h", str(socket_dir), "-U", "postgres", "-d", "mma_broker",
                           "-Atc", "select current_user"], capture_output=True, text=True, timeout=30, env=env)


def _socket_dir(url: str) -> Path:
    import sqlalchemy as sa

    return Path(sa.engine.make_url(url).query["host"])


def _check_private(url: str, pgdata: Path) -> None:
    import sqlalchemy as sa
    from broker.archive.embedded import PASSWORD_FILE, PG_HBA, _server_ids, _server_user

    u = sa.engine.make_url(url)
    password = (pgdata / PASSWORD_FILE).read_text().strip()
    assert u.password == password and len(password) >= 32
    st = os.stat(pgdata / PASSWORD_FILE)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert (pgdata / "pg_hba.conf").read_text() == PG_HBA
    sock_dir = _socket_dir(url)
    st = os.lstat(sock_dir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == _server_ids(_server_user())[0]
    assert len(os.fsencode(sock_dir / ".s.PGSQL.5432")) <= 107
    pid_lines = (pgdata / "postmaster.pid").read_text().splitlines()
    assert pid_lines[5].strip() == "", "the server listens on TCP"
    # another local user: refused at the socket folder (and would need the password)
    other = _as_nobody(sock_dir)
    assert other.returncode != 0 and "Permission denied" in other.stderr, other
    other = _as_nobody(sock_dir, password)
    assert other.returncode != 0 and "Permission denied" in other.stderr, other
    # us without the password, with a wrong one, then with the right one
    assert "no password supplied" in _as_root(sock_dir, None).stderr
    assert "password authentication failed" in _as_root(sock_dir, "wrong").stderr
    ok = _as_root(sock_dir, password)
    assert ok.returncode == 0 and ok.stdout.strip() == "postgres", ok.stderr


@pytest.fixture()
def short_tmp():
    d = Path(tempfile.mkdtemp(prefix="mmaops-", dir="/tmp"))
    try:
        yield d
    finally:
        from broker.archive.embedded import SOCKET_DIR_FILE, stop_embedded_postgres

        for pgdata in [p.parent for p in d.rglob("PG_VERSION")]:
            stop_embedded_postgres(pgdata, mode="immediate")
            with_record = pgdata / SOCKET_DIR_FILE
            if with_record.exists():
                shutil.rmtree(with_record.read_text().strip(), ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_embedded_postgres_is_private(short_tmp):
    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    pgdata = short_tmp / "pg"
    url = ensure_embedded_postgres(pgdata)
    assert _socket_dir(url) == pgdata
    _check_private(url, pgdata)
    assert ensure_embedded_postgres(pgdata) == url  # reuse
    assert stop_embedded_postgres(pgdata)
    assert ensure_embedded_postgres(pgdata) == url  # a restart keeps the URL (workers reconnect)
    _check_private(url, pgdata)


@needs_root
def test_embedded_postgres_long_path_gets_a_private_tmp_socket_folder(short_tmp):
    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    pgdata = short_tmp / ("long-" + "x" * 100) / "pg"
    url = ensure_embedded_postgres(pgdata)
    sock_dir = _socket_dir(url)
    assert sock_dir.parent == Path("/tmp") and sock_dir.name.startswith("mma-pg-")
    _check_private(url, pgdata)
    assert stop_embedded_postgres(pgdata)
    assert ensure_embedded_postgres(pgdata) == url


@needs_root
def test_data_dir_of_an_older_version_is_made_private(short_tmp):
    """pgserver's own start-up (what older versions used): trust authentication and,
    for a long path, a world-writable socket folder that `nobody` can use as superuser.
    The next ensure_embedded_postgres restarts it privately."""
    import warnings

    from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = short_tmp / ("old-" + "y" * 100) / "pg"
    pgdata.parent.mkdir(parents=True)
    old = pgserver.get_server(pgdata, cleanup_mode=None)
    old_socket = old.get_postmaster_info().socket_dir
    assert old_socket != pgdata
    try:
        before = _as_nobody(old_socket)
        assert before.returncode == 0 and before.stdout.strip() == "postgres", "the old set-up was not open?"
        url = ensure_embedded_postgres(pgdata)
        _check_private(url, pgdata)
        assert not (old_socket / ".s.PGSQL.5432").exists()
        assert _as_nobody(old_socket).returncode != 0
    finally:
        stop_embedded_postgres(pgdata, mode="immediate")
        pgserver.postgres_server.PostgresServer._instances.pop(pgdata, None)
        shutil.rmtree(old_socket, ignore_errors=True)


@needs_root
def test_read_command_on_an_empty_embedded_database_does_not_migrate(short_tmp):
    import psycopg

    from broker.archive.embedded import ensure_embedded_postgres

    url = ensure_embedded_postgres(short_tmp / "pg")
    proc = _cli("events", "list", env=_env(MMA_BROKER_ARCHIVE__DATABASE_URL=url,
                                            MMA_BROKER_HOME=str(short_tmp / "home")), timeout=60)
    err = _text(proc.stderr)
    assert proc.returncode == 1
    assert err == "mma-broker: error: archive not initialized: run `mma-broker run` once\n"
    password = url.split(":", 2)[2].split("@")[0]
    with psycopg.connect(host=str(short_tmp / "pg"), user="postgres", password=password, dbname="mma_broker") as c:
        assert c.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None
