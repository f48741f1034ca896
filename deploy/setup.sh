#!/usr/bin/env bash
# Create (once) the virtual environment in .venv and install mma-broker with its test
# extras and the example filter plugin; re-installs only when a pyproject.toml changed.
# Prints the venv path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMA_BROKER_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mma-broker-installed"
# the example filter plugin (examples/mma-broker-example-filter) is installed too: the tests use it
want=$(cat "$ROOT/pyproject.toml" "$ROOT/examples/mma-broker-example-filter/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing mma-broker and its dependencies into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT/examples/mma-broker-example-filter" >&2
  echo "$want" > "$stamp"
fi
echo "$VENV"
