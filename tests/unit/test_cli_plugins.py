"""CLI sub-commands are plugins (entry-point group ``mma_broker.cli``) and the CLI has
no module state: the App of an invocation is the click context's ``obj``.

Broken plugins are installed for real: a ``*.dist-info`` folder with an
``entry_points.txt`` on ``PYTHONPATH`` is what ``importlib.metadata`` reads for any
installed distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.app import App, current_app
from broker.config import settings_class
from tests.conftest import ROOT

GBM = ROOT / "tests" / "data" / "voevent" / "pygcn" / "gbm_flt_pos.xml"


def _fake_distribution(folder: Path, entry_points: str) -> Path:
    info = folder / "zz_fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


def _cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "broker", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_followup_is_a_registered_cli_plugin():
    from broker import plugins

    assert plugins.available(plugins.CLI)["followup"].value == "followup.cli:app"


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> Path:
    return _fake_distribution(tmp_path_factory.mktemp("plugins"), "[mma_broker.cli]\n"
                              "broken = no_such_module_zz.cli:app\n"
                              "run = followup.cli:app\n")


def test_a_broken_cli_plugin_is_one_line_and_the_rest_works(broken_plugins):
    proc = _cli("--help", pythonpath=broken_plugins)
    assert proc.returncode == 0, proc.stderr
    assert "followup" in proc.stdout and "inspect" in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr  # one per bad plugin, no traceback
    broken = next(line for line in lines if "'broken'" in line)
    assert "no_such_module_zz" in broken and "ModuleNotFoundError" in broken
    assert any("'run'" in line and "name of a core command" in line for line in lines)
    assert "Traceback" not in proc.stderr

    proc = _cli("inspect", str(GBM), pythonpath=broken_plugins)
    assert proc.returncode == 0 and "Fermi/GBM" in proc.stdout
    proc = _cli("followup", "--help", pythonpath=broken_plugins)
    assert proc.returncode == 0 and "excess" in proc.stdout


def test_debug_flag_is_read_from_the_app(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[followup]\nwindow_s = "zz-not-a-number-zz"\n')
    plain = _cli("--config", str(bad), "inspect", str(GBM))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") == 1 and "followup.window_s" in plain.stderr
    assert "zz-not-a-number-zz" not in plain.stderr
    debug = _cli("--debug", "--config", str(bad), "inspect", str(GBM))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "SettingsError" in debug.stderr


def _probe_app() -> tuple[typer.Typer, list]:
    """A Typer with one command that records what it finds in the click context."""
    seen: list = []
    probe = typer.Typer()

    @probe.callback()
    def _cb() -> None:
        pass

    @probe.command()
    def show() -> None:
        from broker.cli import settings

        seen.append((current_app(), settings()))

    return probe, seen


def test_commands_get_the_app_passed_as_obj():
    probe, seen = _probe_app()
    given = settings_class()(group_id="from-the-app")
    app = App(given)
    result = CliRunner().invoke(probe, ["show"], obj=app)
    assert result.exit_code == 0, result.output
    assert seen == [(app, given)]


def test_a_command_outside_mma_broker_gets_a_default_app():
    probe, seen = _probe_app()
    result = CliRunner().invoke(probe, ["show"])
    assert result.exit_code == 0, result.output
    (found, settings), = seen
    assert isinstance(found, App) and settings.group_id == "mma-broker"


def test_current_app_outside_a_command_is_an_error():
    with pytest.raises(RuntimeError, match="inside an mma-broker command"):
        current_app()


def test_mma_broker_callback_puts_config_and_debug_on_the_app(tmp_path):
    from broker.cli import app

    preset = tmp_path / "p.toml"
    preset.write_text('group_id = "from-preset"\n[followup]\nwindow_s = 42.0\n')
    application = App()
    result = CliRunner().invoke(app, ["--debug", "--config", str(preset), "inspect", str(GBM)], obj=application)
    assert result.exit_code == 0, result.output
    assert application.debug is True and application.config == preset
    assert application.settings.group_id == "from-preset" and application.settings.followup.window_s == 42.0
