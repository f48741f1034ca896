#!/usr/bin/env bash
# The README's first command: set everything up and run the broker on the bundled real
# alerts, then show an INTEGRAL follow-up with a real detection (GRB 230307A) and an
# honest "no data" (a burst after INTEGRAL's end of science operations, 2025-02-28).
# Idempotent: run it again and it reuses the venv, Kafka and PostgreSQL, replays the
# alerts again, and the archive still holds each alert and each follow-up exactly once.
set -euo pipefail
START_DIR=$PWD  # the user's working directory: the plot goes there
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
# The enrich stage cross-matches every Event with the 50 Mpc Galaxy Catalog (Ohlson et al.
# 2024, tests/data/catalogs), loaded once into PostgreSQL.
export MMA_BROKER_ENRICH__CATALOGS='["50MGC"]'
mma-broker catalog list --json 2>/dev/null | grep -q '"name": "50MGC"' \
  || mma-broker catalog load 50MGC "$ROOT/tests/data/catalogs/50MGC_catalog_short.fits" >&2

# Two follow-ups asked for by hand, through Kafka like the automatic ones, with values
# published in GCN Circulars (not alerts of the bundled set):
#  GRB 230307A: T0 = Fermi GBM trigger time 2023-03-07T15:44:06.67 UTC (GCN Circ. 33405);
#    position = Swift-XRT afterglow 60.85935, -75.3788, 3.4" at 90 % (GCN Circ. 33429;
#    confirmed as the afterglow by the IPN, GCN Circ. 33461). The bundled SPI-ACS light
#    curve (followup/data/spiacs_lc_GRB230307A.fits) covers it.
#  GRB 250702D: T0 = 2025-07-02T13:09:02.03 UTC (Fermi/GBM trigger 773154547), position =
#    centre 285.820, -4.18 of the combined GBM + Swift/BAT-GUANO 90 % region, 142 deg2, given
#    here as the circle of equal area, radius 6.7 deg (GCN Circ. 40903): after INTEGRAL's end
#    of science operations, so "no data".
request_id() { "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["request_id"])'; }
echo "quickstart: asking for the INTEGRAL follow-up of GRB 230307A by name and T0 (published GCN values)" >&2
GRB_ID=$(mma-broker followup request --name "GRB 230307A" --t0 2023-03-07T15:44:06.67 \
  --ra 60.85935 --dec -75.3788 --error-deg 0.00094 \
  --note "T0: Fermi GBM trigger time, GCN Circ. 33405; position: Swift-XRT afterglow, GCN Circ. 33429" \
  --json | request_id)
echo "quickstart: and of GRB 250702D (Fermi GBM, after INTEGRAL's end of science operations on 2025-02-28)" >&2
LATE_ID=$(mma-broker followup request --name "GRB 250702D" --t0 2025-07-02T13:09:02.03 \
  --ra 285.820 --dec -4.18 --error-deg 6.7 \
  --note "T0: Fermi/GBM trigger 773154547; position: GBM + Swift/BAT-GUANO 90% region (142 deg2); GCN Circ. 40903" \
  --json | request_id)

# enrich and filters in two lanes (two loops each, own consumer groups): notices (GCN, LVK,
# IceCube, ...) and optical (ZTF, LSST), so a notice never waits behind ZTF alerts. Here all in
# one process; in production one process per lane, the optical one at lower CPU priority:
#   mma-broker run --stage enrich --stage filters --lane notices &
#   nice -n 10 mma-broker run --stage enrich --stage filters --lane optical &
# (docs/publishing-latency.md#lanes)
export MMA_BROKER_LANES=${MMA_BROKER_LANES:-'{"notices": ["*"], "optical": ["ztf", "lsst"]}'}
echo "quickstart: running the broker until every replayed alert and request is consumed" >&2
mma-broker run --until-caught-up

echo
echo "=== MS181101ab (LVK mock superevent) on mma.events.enriched: its stored sky map and the 50MGC galaxies inside ==="
mma-broker subscribe mma.events.enriched --json --timeout 5 | "$VENV/bin/python" "$ROOT/deploy/enriched_line.py" MS181101ab

PLOT_DIR=$START_DIR
[ -w "$PLOT_DIR" ] || PLOT_DIR=$HOME
echo
echo "=== GRB 230307A, requested by name and T0 from the published GCN values (not a bundled alert) ==="
(cd "$PLOT_DIR" && mma-broker followup show "$GRB_ID" --plot grb230307a-integral.png)
[ "$PLOT_DIR" = "$START_DIR" ] || echo "(in your home folder: ~/grb230307a-integral.png)"
echo
echo "=== GRB 230307A: what the broker published (HERMES, GCN notice) and drafted (GCN Circular) ==="
"$VENV/bin/python" "$ROOT/deploy/published_lines.py" "$GRB_ID"
echo
echo "=== GRB 250702D, after INTEGRAL's end of science operations (2025-02-28) ==="
mma-broker followup show "$LATE_ID"
# The web interface (docs/web.md): `mma-broker serve` in the background, its pid in
# $MMA_BROKER_HOME/serve.pid (deploy/stop.sh stops it). A previous quickstart's serve is
# stopped first, so a second run does not find the port taken by it.
SERVE_PID="$MMA_BROKER_HOME/serve.pid"
SERVE_LOG="$MMA_BROKER_HOME/serve.log"
SERVE_PORT=${MMA_BROKER_SERVE_PORT:-$("$VENV/bin/python" -c 'from broker.config import settings_class; print(settings_class()().publish.serve_port)')}
"$ROOT/deploy/serve_ctl.sh" stop "$SERVE_PID"
# new session (setsid): it outlives this shell; the inner shell writes its pid, then execs serve
# shellcheck disable=SC2016  # $$, $1 and $@ belong to the inner shell
nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$SERVE_PID" mma-broker serve --host 127.0.0.1 \
  --port "$SERVE_PORT" >>"$SERVE_LOG" 2>&1 </dev/null &
if "$VENV/bin/python" - "$SERVE_PORT" "$SERVE_PID" <<'PY'
# wait for /health (60 s at most), giving up at once if serve has exited
import os, sys, time, urllib.request
url, pid_file = f"http://127.0.0.1:{sys.argv[1]}/health", sys.argv[2]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            sys.exit(0 if r.status == 200 else 1)
    except OSError:
        time.sleep(0.3)
    try:
        pid = int(open(pid_file).read().strip() or 0)
    except (OSError, ValueError):
        continue
    if pid and not os.path.exists(f"/proc/{pid}"):
        sys.exit(1)
sys.exit(1)
PY
then
  echo
  echo "web: http://127.0.0.1:$SERVE_PORT/"
else
  echo "quickstart: mma-broker serve did not answer on port $SERVE_PORT (see .mma-broker/serve.log)" >&2
fi
cat >&2 <<MSG

Kafka ($MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS) and the embedded PostgreSQL keep running. Try:
  export MMA_BROKER_HOME=$MMA_BROKER_HOME     # the demo's state; without it mma-broker uses ~/.local/share/mma-broker
  export PATH=$VENV/bin:\$PATH
  mma-broker events list --source igwn
  mma-broker subscribe mma.followup.results --timeout 5
  mma-broker subscribe mma.events.enriched mma.coincidences --timeout 5   # localization, group, cross-match, coincidences
  mma-broker followup results                  # one follow-up per trigger; --all also lists revisions not analysed again
  mma-broker followup show ${GRB_ID:0:12} --json
  mma-broker followup request --t0 2023-03-07T15:44:06.67 --name "my test"   # any T0 2002-10-17 .. 2025-02-28
  mma-broker outbox list                       # every message sent or waiting: HERMES, GCN notices, circular drafts
  hop subscribe --no-auth -s EARLIEST -e kafka://$MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS/hermes.test   # the HERMES messages
  mma-broker filters list                      # the filters enabled (each publishes on mma.filter.<name>)
The web interface (live events, search, group pages, approval desk): http://127.0.0.1:$SERVE_PORT/
Stop everything with: deploy/stop.sh
MSG
