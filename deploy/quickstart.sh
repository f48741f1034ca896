#!/usr/bin/env bash
# The README's first command: set everything up and run the broker on the bundled real
# alerts. Idempotent: run it again and it reuses the venv, Kafka and PostgreSQL, replays
# the alerts again and the archive still holds each alert exactly once.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$("$ROOT/deploy/setup.sh")
export PATH="$VENV/bin:$PATH" MMA_BROKER_PYTHON="$VENV/bin/python"
# The demo's state (Kafka, PostgreSQL, raw store) stays in the clone; an installed
# mma-broker defaults to ~/.local/share/mma-broker instead.
export MMA_BROKER_HOME="$ROOT/.mma-broker"
export MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=${MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:${MMA_BROKER_KAFKA_PORT:-9092}}

"$ROOT/deploy/kafka/kafka.sh" start
echo "quickstart: replaying the bundled real alerts (deploy/demo-alerts.txt) into Kafka" >&2
mma-broker replay --manifest "$ROOT/deploy/demo-alerts.txt"
echo "quickstart: running the broker until every replayed alert is consumed" >&2
mma-broker run --until-caught-up
cat >&2 <<MSG

Kafka ($MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS) and the embedded PostgreSQL ($MMA_BROKER_HOME/postgres) keep running. Try:
  export MMA_BROKER_HOME=$MMA_BROKER_HOME     # the demo's state; without it mma-broker uses ~/.local/share/mma-broker
  $VENV/bin/mma-broker events list --source igwn
  $VENV/bin/mma-broker subscribe mma.events --timeout 5
  $VENV/bin/mma-broker subscribe mma.dlq --timeout 5
  $VENV/bin/mma-broker followup results
  $VENV/bin/mma-broker followup excess followup/data/spiacs_lc_GRB230307A.fits --t0 2023-03-07T15:44:06.67 --plot lc.png
Stop everything with: deploy/stop.sh
MSG
