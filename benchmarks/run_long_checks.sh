#!/usr/bin/env bash
# Checks too long or too memory-hungry for the default test run (deploy/test.sh):
# tests/long/ (e.g. the unseen 12.6-million-pixel S190814bv map, ~1.4 GB, ~35 s; ztf-decent
# against AMPEL on 586 unseen ZTF alerts, a 92 MB PyPI download once, cached in .mma-broker/;
# 1,577 unseen GCN notices and VOEvents from six git histories, cloned once into .mma-broker/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$("$ROOT/deploy/setup.sh")
# AMPEL in its own venv (reused when made), for tests/long/test_ztf_decent_unseen.py
"$VENV/bin/python" "$ROOT/benchmarks/ampel_venv.py" >/dev/null
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" tests/long
