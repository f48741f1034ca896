"""Make (once) the separate virtual environment with AMPEL's ``ampel-ztf`` from PyPI.

AMPEL is the reference ``ztf-decent`` is checked against (decision for decision) and
timed against; it lives in its own venv so that its dependencies never mix with ours.
``deploy/test.sh`` calls this with ``$MMA_BROKER_HOME/ampel-venv`` before the tests; the
parity test and ``benchmarks/bench_filters.py`` find the venv there (or at
``$MMA_BROKER_AMPEL_VENV``). A venv that already holds :data:`AMPEL_ZTF` is reused.

Run: ``python benchmarks/ampel_venv.py [DIR]``; prints the venv's python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: The AMPEL release checked against (Ampel-ZTF commit 7c36cdc2 has the same DecentFilter).
AMPEL_ZTF = "ampel-ztf==0.10.2"


def default_dir() -> Path:
    """``$MMA_BROKER_AMPEL_VENV``, else ``$MMA_BROKER_HOME/ampel-venv``, else ``.mma-broker/ampel-venv`` of the checkout."""
    if os.environ.get("MMA_BROKER_AMPEL_VENV"):
        return Path(os.environ["MMA_BROKER_AMPEL_VENV"])
    home = os.environ.get("MMA_BROKER_HOME") or str(Path(__file__).resolve().parents[1] / ".mma-broker")
    return Path(home) / "ampel-venv"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path) -> bool:
    """True when ``venv`` holds :data:`AMPEL_ZTF` (its stamp file says so)."""
    stamp = venv / ".mma-broker-ampel"
    return python_of(venv).exists() and stamp.exists() and stamp.read_text().strip() == AMPEL_ZTF


def ensure(venv: Path | None = None) -> Path:
    """Create the venv and install :data:`AMPEL_ZTF` unless done; return its python.

    Raises
    ------
    subprocess.CalledProcessError
        venv creation or pip failed (pip's output went to stderr).
    """
    venv = venv or default_dir()
    if not ready(venv):
        t0 = time.monotonic()
        print(f"ampel venv: installing {AMPEL_ZTF} into {venv.name} (about a minute)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python_of(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check", AMPEL_ZTF],
                       check=True, stdout=sys.stderr)
        (venv / ".mma-broker-ampel").write_text(AMPEL_ZTF + "\n")
        print(f"ampel venv: ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return python_of(venv)


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
