#!/usr/bin/env bash
# serve_ctl.sh stop PIDFILE: stop the `mma-broker serve` that quickstart.sh started, if the
# pid in PIDFILE is still that process (a stale file or a reused pid is left alone), and
# remove PIDFILE. SIGTERM first (serve ends its open live streams and exits), SIGKILL
# after 10 s.
set -euo pipefail
[ "${1:-}" = stop ] && [ -n "${2:-}" ] || { echo "usage: $0 stop PIDFILE" >&2; exit 2; }
PID_FILE=$2
[ -f "$PID_FILE" ] || exit 0
pid=$(tr -dc '0-9' <"$PID_FILE")
if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "mma-broker serve"; then
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "serve_ctl: mma-broker serve (pid $pid) did not stop in 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "stopped mma-broker serve (pid $pid)" >&2
fi
rm -f "$PID_FILE"
