"""The built wheel, installed into a fresh venv outside the repository, is a working
``mma-broker``: it finds its schemas, demo alerts and INTEGRAL files as package data,
keeps its state outside the installation, decodes a real alert, and replays the demo
alerts into the real Kafka and archives them.

The module builds the wheel from a copy of the sources (``pip wheel --no-deps``; a copy,
so a stale ``build/`` in the clone cannot leak into it), creates a venv in a temporary
folder and installs the wheel there with its dependencies from PyPI (pip's cache makes
that ~1 min here; it needs the network or a warm cache). Every command then runs from a
folder outside the repository, with no ``PYTHONPATH`` and no ``MMA_BROKER_*`` variable of
the caller, a temporary ``MMA_BROKER_HOME`` and its own topic prefix and consumer group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SOURCES = ("pyproject.toml", "README.md", "broker", "followup", "filters")
"""What the wheel is built from (the rest of the clone is not part of the package)."""


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could point into the clone."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MMA_BROKER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", **extra)
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv, outside the repository, with the built wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = _clean_env()
    timings = {}

    t = time.monotonic()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)],
         env=env, cwd=base)
    timings["wheel build"] = time.monotonic() - t
    (wheel,) = (base / "dist").glob("mma_broker-*.whl")

    t = time.monotonic()
    _run([sys.executable, "-m", "venv", str(base / "venv")], env=env, cwd=base)
    # dependencies from PyPI (through pip's cache); no .pyc compilation: faster, and
    # Python compiles what it imports anyway
    _run([str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
          "--disable-pip-version-check", str(wheel)], env=env, cwd=base, timeout=1200)
    timings["venv + install"] = time.monotonic() - t
    print("wheel test: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), file=sys.stderr)
    return base / "venv"


@pytest.fixture()
def user_env(venv, kafka_bootstrap):
    """Environment of a user of the installed broker: a short temporary home (the
    embedded PostgreSQL's socket path must fit in 107 bytes), its own topic prefix and
    consumer group. The embedded PostgreSQL it starts is stopped afterwards."""
    tag = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix="mmaw-", dir="/tmp"))
    env = _clean_env(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(home / "user"),
        MMA_BROKER_HOME=str(home / "state"),
        MMA_BROKER_GROUP_ID=f"wheel-{tag}",
        MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
        MMA_BROKER_KAFKA__TOPIC_PREFIX=f"wheel{tag}.",
    )
    env.pop("XDG_DATA_HOME", None)
    try:
        yield env, home
    finally:
        if (home / "state" / "postgres").exists():
            subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys; from pathlib import Path; from broker.archive.embedded import"
                            " stop_embedded_postgres; stop_embedded_postgres(Path(sys.argv[1]))",
                            str(home / "state" / "postgres")], env=env, cwd=home, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _python(venv: Path, code: str, env: dict[str, str], cwd: Path) -> Any:
    return json.loads(_run([str(venv / "bin" / "python"), "-c", code], env=env, cwd=cwd).stdout)


def test_package_and_its_data_come_from_the_venv(venv, user_env):
    env, home = user_env
    env = {k: v for k, v in env.items() if k != "MMA_BROKER_HOME"}  # the default home
    paths = _python(venv, """if True:
        import json, broker, followup
        from broker.config import Settings
        from broker.replay import demo_dir, demo_files
        from broker.serde import EVENT_SCHEMA_PATH
        from broker.validation import UPSTREAM_SCHEMA_DIR, default_validator
        from followup.config import FollowupSettings
        from followup.messages import json_schema
        f = FollowupSettings()
        print(json.dumps({
            "broker": broker.__file__, "followup": followup.__file__,
            "event_schema": str(EVENT_SCHEMA_PATH), "upstream_schemas": str(UPSTREAM_SCHEMA_DIR),
            "n_upstream_schemas": len(default_validator().schema_ids),
            "followup_schema": json_schema("followup_result.json").get("title", ""),
            "demo": str(demo_dir()), "n_demo": len(demo_files()),
            "lightcurves": str(f.lightcurves.directory), "orbits": str(f.orbit_directory),
            "home": str(Settings().home),
        }))""", env, home)
    site = venv.resolve()
    for key in ("broker", "followup", "event_schema", "upstream_schemas", "demo", "lightcurves", "orbits"):
        assert Path(paths[key]).resolve().is_relative_to(site), (key, paths[key])
        assert not Path(paths[key]).resolve().is_relative_to(ROOT), (key, paths[key])
    assert Path(paths["event_schema"]).is_file()
    assert paths["n_upstream_schemas"] >= 40
    assert paths["n_demo"] == 92
    assert (Path(paths["lightcurves"]) / "spiacs_lc_GRB230307A.fits").is_file()
    assert (Path(paths["orbits"]) / "sc_orbit_param.fits.gz").is_file()
    # state goes to the user's data folder, never into the installation
    assert paths["home"] == str((home / "user" / ".local" / "share" / "mma-broker").resolve())


def test_inspect_a_bundled_real_alert(venv, user_env):
    env, home = user_env
    demo = Path(_python(venv, "import json; from broker.replay import demo_dir; print(json.dumps(str(demo_dir())))",
                        env, home))
    igwn = demo / "igwn" / "userguide" / "MS181101ab-preliminary.json"
    gbm = demo / "voevent" / "pygcn" / "gbm_flt_pos.xml"
    out = _run(["mma-broker", "inspect", "--json", str(igwn), str(gbm)], env=env, cwd=home).stdout.splitlines()
    events = [json.loads(line) for line in out]
    assert [e["id"] for e in events] == [
        "igwn:MS181101ab:preliminary:20181101T223449Z",
        "gcn:ivo://nasa.gsfc.gcn/Fermi#GBM_Flt_Pos_2011-09-04T03:54:36.02_336801278_45-956",
    ]
    assert events[0]["localization"]["type"] == "healpix"
    assert round(events[0]["localization"]["area_90"], 1) == 31.0
    assert (events[1]["mission"], events[1]["instrument"], events[1]["alert_type"]) == ("Fermi", "GBM", "flt_pos")
    text = _run(["mma-broker", "inspect", str(gbm)], env=env, cwd=home).stdout
    assert "Fermi/GBM flt_pos T0=2011-09-04T03:54:36.020Z  RA 193.0000° Dec -31.7500° ±17.43°" in text


def test_replay_demo_and_ingest_into_the_archive(venv, user_env):
    env, home = user_env
    replay = _run(["mma-broker", "replay", "--demo"], env=env, cwd=home)
    assert "replayed 92 file(s)" in replay.stderr
    run = _run(["mma-broker", "run", "--until-caught-up", "--stage", "ingest"], env=env, cwd=home, timeout=600)
    out = _run(["mma-broker", "events", "list", "--json", "--limit", "100000"], env=env, cwd=home).stdout
    events = [json.loads(line) for line in out.splitlines()]
    # the run's summary and log, to tell a message never consumed from one dead-lettered
    said = f"run stdout:\n{run.stdout[-3000:]}\nrun stderr:\n{run.stderr[-3000:]}"
    assert len(events) > 0, said
    assert {e["source"] for e in events} == {"igwn", "gcn", "ztf"}, said
    assert "igwn:MS181101ab:preliminary:20181101T223449Z" in {e["id"] for e in events}, said
    # the embedded PostgreSQL lives in the temporary home, not in the venv
    assert (home / "state" / "postgres").is_dir()
