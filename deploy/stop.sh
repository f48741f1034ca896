#!/usr/bin/env bash
# Stop mma-broker serve, the local Kafka and the embedded PostgreSQL started by quickstart.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMA_BROKER_VENV:-$ROOT/.venv}
export MMA_BROKER_HOME="$ROOT/.mma-broker"   # where quickstart.sh keeps its state
"$ROOT/deploy/serve_ctl.sh" stop "$MMA_BROKER_HOME/serve.pid"   # mma-broker serve, if quickstart started it
"$ROOT/deploy/kafka/kafka.sh" stop
if [ -x "$VENV/bin/python" ]; then
  PYTHONWARNINGS=ignore "$VENV/bin/python" -c "from pathlib import Path; from broker.config import settings_class; from broker.archive.embedded import stop_embedded_postgres; stop_embedded_postgres(settings_class()().home / 'postgres')"
fi
