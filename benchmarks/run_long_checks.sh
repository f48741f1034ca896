#!/usr/bin/env bash
# Checks too long or too memory-hungry for the default test run (deploy/test.sh):
# tests/long/ (e.g. the unseen 12.6-million-pixel S190814bv map, ~1.4 GB, ~35 s).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$("$ROOT/deploy/setup.sh")
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" tests/long
