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
# kubeconform (tests/unit/test_deploy_manifests.py validates deploy/k8s with it), built once from
# the Go module proxy into the venv; without Go the test says it skipped and why
KUBECONFORM_VERSION=v0.7.0
if [ ! -x "$VENV/bin/kubeconform" ] && command -v go >/dev/null 2>&1; then
  echo "setup: building kubeconform $KUBECONFORM_VERSION into $VENV/bin (once)" >&2
  GOBIN="$VENV/bin" GOFLAGS=-buildvcs=false go install \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2 \
    || echo "setup: warning: could not build kubeconform; the manifest validation tests will skip" >&2
fi
"$ROOT/deploy/web_assets.sh" >&2 || echo "setup: warning: the Aladin Lite bundle was not installed (deploy/web_assets.sh)" >&2
echo "$VENV"
