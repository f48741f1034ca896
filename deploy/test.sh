#!/usr/bin/env bash
# The README's second command (and CI's): install everything, start the real Kafka
# (KRaft, jars from Maven Central) it needs, and run the whole test suite, unit and
# integration. The tests start their own embedded PostgreSQL (pgserver) in a temporary
# folder. Kafka is stopped at the end if this script started it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$("$ROOT/deploy/setup.sh")
# The browser tests (tests/browser) drive Debian's headless Chromium with Playwright; a browser
# downloaded by `playwright install` does not run on these machines. Installed here when missing
# (as root, or with sudo); without it those tests skip and say why.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 \
      || echo "test.sh: warning: could not install chromium; the browser tests will skip" >&2
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 \
      || echo "test.sh: warning: could not install chromium; the browser tests will skip" >&2
  else
    echo "test.sh: /usr/bin/chromium is missing and this is not root (no sudo): the browser tests will skip" >&2
  fi
fi
export PATH="$VENV/bin:$PATH" MMA_BROKER_PYTHON="$VENV/bin/python"
export MMA_BROKER_HOME="$ROOT/.mma-broker"   # Kafka's state; the tests give each run its own home
export MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=${MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:${MMA_BROKER_KAFKA_PORT:-9092}}
# AMPEL (ampel-ztf from PyPI) in its own venv: the reference ztf-decent is checked against
# (tests/unit/test_ztf_decent_ampel.py); made once, reused while it holds the pinned version
export MMA_BROKER_AMPEL_VENV=${MMA_BROKER_AMPEL_VENV:-$MMA_BROKER_HOME/ampel-venv}
"$VENV/bin/python" "$ROOT/benchmarks/ampel_venv.py" "$MMA_BROKER_AMPEL_VENV" >/dev/null

started=0
if ! "$ROOT/deploy/kafka/kafka.sh" status >/dev/null 2>&1; then
  started=1
fi
"$ROOT/deploy/kafka/kafka.sh" start
cleanup() { if [ "$started" = 1 ]; then "$ROOT/deploy/kafka/kafka.sh" stop || true; fi; }
trap cleanup EXIT
export MMA_BROKER_TEST_KAFKA=$MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS
# the 25 slowest tests are listed at the end: the whole run must stay under 20 min on 2 cores
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=25 "$@" tests
