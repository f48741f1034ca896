#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller) for mma-broker.
#
# Usage: deploy/kafka/kafka.sh fetch|start|stop [--purge]|purge|status|wait
#
# The jars come from Maven Central through deploy/kafka/pom.xml; Java 17 runs them.
# State lives in ${MMA_BROKER_HOME:-<repo>/.mma-broker}/kafka:
#   lib/            broker jars (fetch; skipped when already complete)
#   data/           log.dirs and KRaft metadata log (formatted once)
#   logs/           server.log (Log4j 2) and kafka.out (JVM stdout/stderr)
#   cluster.id      KRaft cluster id, generated once
#   kafka.pid       pid of the running broker
# See deploy/kafka/README.md for the environment variables.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${SCRIPT_DIR}/../.." && pwd)"
POM="${SCRIPT_DIR}/pom.xml"

STATE_DIR="${MMA_BROKER_HOME:-${REPO_DIR}/.mma-broker}/kafka"
LIB_DIR="${STATE_DIR}/lib"
DATA_DIR="${STATE_DIR}/data"
LOG_DIR="${STATE_DIR}/logs"
PID_FILE="${STATE_DIR}/kafka.pid"
CLUSTER_ID_FILE="${STATE_DIR}/cluster.id"
LOG_OFFSET_FILE="${STATE_DIR}/server.log.offset"
READY_FILE="${STATE_DIR}/kafka.ready"
SERVER_PROPERTIES="${STATE_DIR}/server.properties"
LOG4J_PROPERTIES="${STATE_DIR}/log4j2.properties"
SERVER_LOG="${LOG_DIR}/server.log"
JVM_OUT="${LOG_DIR}/kafka.out"
LOCK_FILE="${STATE_DIR}/.lock"

HOST="127.0.0.1"
PORT="${MMA_BROKER_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${MMA_BROKER_KAFKA_CONTROLLER_PORT:-9093}"
TIMEOUT_S="${MMA_BROKER_KAFKA_TIMEOUT:-120}"
STOP_TIMEOUT_S="${MMA_BROKER_KAFKA_STOP_TIMEOUT:-30}"
PYTHON="${MMA_BROKER_PYTHON:-python3}"
HEAP_OPTS="${MMA_BROKER_KAFKA_HEAP_OPTS:--Xmx768m -Xms256m}"
EXTRA_JAVA_OPTS="${MMA_BROKER_KAFKA_JAVA_OPTS:-}"
# The log line KafkaRaftServer prints once the broker is unfenced and serving.
STARTED_PATTERN='Kafka Server started'

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $(basename "$0") fetch|start|stop [--purge]|purge|status|wait
  fetch    copy the broker jars from Maven Central into ${LIB_DIR} (once)
  start    fetch, format storage once, start the broker, wait until it answers
  stop     SIGTERM, up to ${STOP_TIMEOUT_S} s for a controlled shutdown, then SIGKILL
           (--purge also deletes data, logs and the cluster id)
  purge    same as stop --purge
  status   print running/stopped; exit 0 if running, 3 if stopped
  wait     block until a broker answers on ${HOST}:${PORT} (up to ${TIMEOUT_S} s)
EOF
}

check_port_number() {
    local name="$1" value="$2"
    if ! [[ "${value}" =~ ^[0-9]+$ ]] || (( value < 1 || value > 65535 )); then
        die "${name}=${value} is not a TCP port number"
    fi
}

require_command() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"
}

# The default state dir is inside the work tree: keep it out of `git status`.
ensure_state_dir() {
    mkdir -p "${STATE_DIR}"
    [[ -f "${STATE_DIR}/.gitignore" ]] || printf '# runtime state of deploy/kafka/kafka.sh\n*\n' >"${STATE_DIR}/.gitignore"
}

# Serialise start/stop/purge for one state dir (two shells starting at once).
take_lock() {
    ensure_state_dir
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${LOCK_FILE}"
        flock -w 300 9 || die "could not lock ${LOCK_FILE} within 300 s"
    fi
}

# ---------------------------------------------------------------- process ---

# Prints the pid from the pid file if that process is our broker; else nothing.
our_pid() {
    [[ -f "${PID_FILE}" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"${PID_FILE}")"
    [[ -n "${pid}" ]] || return 0
    [[ -r "/proc/${pid}/cmdline" ]] || return 0
    # Our broker is `java ... kafka.Kafka <this state dir>/server.properties`.
    if tr '\0' '\n' <"/proc/${pid}/cmdline" | grep -qxF "${SERVER_PROPERTIES}"; then
        echo "${pid}"
    fi
}

clean_stale_pid_file() {
    if [[ -f "${PID_FILE}" && -z "$(our_pid)" ]]; then
        say "removing stale pid file ${PID_FILE}"
        rm -f "${PID_FILE}" "${READY_FILE}"
    fi
}

# True if something accepts TCP connections on HOST:$1.
port_open() {
    (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

port_owner() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1 || true
    fi
}

# Sends a Kafka ApiVersions v0 request and checks the response header:
# correlation id 0x4d4d4b41 echoed and error_code 0.
api_versions_ok() {
    local reply
    # shellcheck disable=SC2016  # $1/$2 expand in the inner shell
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        # size=19 | api_key=18 | api_version=0 | correlation_id | client_id="mmabroker"
        printf "\x00\x00\x00\x13\x00\x12\x00\x00\x4d\x4d\x4b\x41\x00\x09mmabroker" >&3
        head -c 10 <&3 | od -An -tx1 | tr -d " \n"
    ' _ "${HOST}" "${PORT}" 2>/dev/null)" || return 1
    [[ "${reply}" =~ ^[0-9a-f]{8}4d4d4b410000$ ]]
}

# Optional deeper check when the chosen Python has confluent_kafka: a metadata
# request must list at least one broker. Exit 0 ok, 1 not ready, 2 unavailable.
python_metadata_ok() {
    command -v "${PYTHON}" >/dev/null 2>&1 || return 2
    "${PYTHON}" - "${HOST}:${PORT}" <<'EOF' 2>/dev/null
import sys
try:
    from confluent_kafka.admin import AdminClient
except ImportError:
    sys.exit(2)
try:
    metadata = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=5)
except Exception:
    sys.exit(1)
sys.exit(0 if metadata.brokers else 1)
EOF
}

started_line_logged() {
    [[ -f "${SERVER_LOG}" ]] || return 1
    local offset=0
    [[ -f "${LOG_OFFSET_FILE}" ]] && offset="$(tr -dc '0-9' <"${LOG_OFFSET_FILE}")"
    local size
    size="$(stat -c %s "${SERVER_LOG}")"
    # The log may have rolled since start: then read it from its beginning.
    (( ${offset:-0} <= size )) || offset=0
    # Not `grep -q`: it would exit at the first match, tail would die of SIGPIPE and,
    # under pipefail, a large log would read as "not started".
    tail -c "+$(( ${offset:-0} + 1 ))" "${SERVER_LOG}" | grep -F "${STARTED_PATTERN}" >/dev/null
}

show_log_tail() {
    local file
    for file in "${SERVER_LOG}" "${JVM_OUT}"; do
        if [[ -s "${file}" ]]; then
            say "last 30 lines of ${file}:"
            tail -n 30 "${file}" >&2
        fi
    done
}

# ------------------------------------------------------------------- fetch ---

cmd_fetch() {
    local pom_sum
    pom_sum="$(sha256sum "${POM}" | cut -d' ' -f1)"
    if [[ -f "${LIB_DIR}/.fetched" && "$(cat "${LIB_DIR}/.fetched")" == "${pom_sum}" ]]; then
        say "jars already in ${LIB_DIR} ($(find "${LIB_DIR}" -name '*.jar' | wc -l) jars)"
        return 0
    fi
    require_command mvn "Maven fetches the Kafka jars from Maven Central"
    ensure_state_dir
    local tmp="${STATE_DIR}/lib.tmp.$$"
    rm -rf "${tmp}"
    say "fetching Kafka jars from Maven Central (pinned in ${POM})"
    local started=${SECONDS}
    if ! (cd "${SCRIPT_DIR}" && mvn -q -B -Dstyle.color=never -f "${POM}" \
            dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="${tmp}") >"${STATE_DIR}/fetch.log" 2>&1; then
        tail -n 30 "${STATE_DIR}/fetch.log" >&2
        rm -rf "${tmp}"
        die "mvn dependency:copy-dependencies failed (full output: ${STATE_DIR}/fetch.log)"
    fi
    ls "${tmp}"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "${tmp}"; die "no kafka_2.13 jar in the mvn output"; }
    echo "${pom_sum}" >"${tmp}/.fetched"
    rm -rf "${LIB_DIR}"
    mv "${tmp}" "${LIB_DIR}"
    say "fetched $(find "${LIB_DIR}" -name '*.jar' | wc -l) jars ($(du -sh "${LIB_DIR}" | cut -f1)) in $(( SECONDS - started )) s"
}

# ------------------------------------------------------------------- start ---

write_config() {
    mkdir -p "${DATA_DIR}" "${LOG_DIR}"
    # Regenerated on every start so that port overrides apply; the data dir is not.
    cat >"${SERVER_PROPERTIES}" <<EOF
# Generated by deploy/kafka/kafka.sh on each start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${CONTROLLER_PORT}
listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${DATA_DIR}

# Two workers of one consumer group must both get partitions.
num.partitions=4
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
# Single node: internal topics with one replica, few partitions (fast start-up).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# IGWN alerts with sky maps reach ~2 MB: allow 16 MiB records.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216

# Keep a week of data for local use and test runs.
log.retention.hours=168
log.segment.bytes=268435456

# Two cores shared with everything else.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
    cat >"${LOG4J_PROPERTIES}" <<EOF
# Generated by deploy/kafka/kafka.sh on each start.
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${SERVER_LOG}
appender.file.filePattern = ${SERVER_LOG}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

java_classpath() { echo "${LIB_DIR}/*"; }

ensure_formatted() {
    if [[ ! -s "${CLUSTER_ID_FILE}" ]]; then
        local cluster_id
        cluster_id="$(java -cp "$(java_classpath)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]')"
        [[ "${cluster_id}" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid gave '${cluster_id}', not a 22-character cluster id"
        echo "${cluster_id}" >"${CLUSTER_ID_FILE}"
        say "new cluster id ${cluster_id}"
    fi
    if [[ -f "${DATA_DIR}/meta.properties" ]]; then
        return 0
    fi
    say "formatting storage in ${DATA_DIR}"
    if ! java -Xmx256m -Dlog4j2.configurationFile="${LOG4J_PROPERTIES}" \
            -cp "$(java_classpath)" kafka.tools.StorageTool format \
            --cluster-id "$(cat "${CLUSTER_ID_FILE}")" --config "${SERVER_PROPERTIES}" \
            --ignore-formatted >"${LOG_DIR}/format.out" 2>&1; then
        cat "${LOG_DIR}/format.out" >&2
        die "kafka.tools.StorageTool format failed for ${DATA_DIR}"
    fi
}

cmd_start() {
    check_port_number MMA_BROKER_KAFKA_PORT "${PORT}"
    check_port_number MMA_BROKER_KAFKA_CONTROLLER_PORT "${CONTROLLER_PORT}"
    require_command java "Java 17 runs the broker"
    take_lock
    local pid
    pid="$(our_pid)"
    if [[ -n "${pid}" ]]; then
        say "already running (pid ${pid}, state ${STATE_DIR})"
        cmd_wait
        return 0
    fi
    clean_stale_pid_file
    local port
    for port in "${PORT}" "${CONTROLLER_PORT}"; do
        if port_open "${port}"; then
            die "${HOST}:${port} is already in use by a process that is not the broker of ${STATE_DIR} $(port_owner "${port}"); stop it or set MMA_BROKER_KAFKA_PORT / MMA_BROKER_KAFKA_CONTROLLER_PORT"
        fi
    done
    cmd_fetch
    write_config
    ensure_formatted
    if [[ -f "${SERVER_LOG}" ]]; then
        stat -c %s "${SERVER_LOG}" >"${LOG_OFFSET_FILE}"
    else
        echo 0 >"${LOG_OFFSET_FILE}"
    fi

    say "starting broker on ${HOST}:${PORT} (controller ${HOST}:${CONTROLLER_PORT}), state ${STATE_DIR}"
    local -a heap_opts extra_opts
    read -r -a heap_opts <<<"${HEAP_OPTS}"
    read -r -a extra_opts <<<"${EXTRA_JAVA_OPTS}"
    local -a java_cmd=(
        java "${heap_opts[@]}"
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
        -XX:+ExplicitGCInvokesConcurrent -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1
        -XX:CICompilerCount=2 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true -Dfile.encoding=UTF-8
        -Dlog4j2.configurationFile="${LOG4J_PROPERTIES}" -Dkafka.logs.dir="${LOG_DIR}"
        "${extra_opts[@]}"
        -cp "$(java_classpath)" kafka.Kafka "${SERVER_PROPERTIES}"
    )
    # New session (setsid) so the broker outlives this shell and its terminal;
    # the inner shell writes its own pid, then becomes java through exec.
    # shellcheck disable=SC2016  # $$, $1 and $@ belong to the inner shell
    nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "${PID_FILE}" "${java_cmd[@]}" \
        >>"${JVM_OUT}" 2>&1 </dev/null 9>&- &
    local waited=0
    while [[ ! -s "${PID_FILE}" ]] && (( waited < 50 )); do sleep 0.1; waited=$(( waited + 1 )); done
    [[ -s "${PID_FILE}" ]] || die "the broker process did not start (see ${JVM_OUT})"
    local started=${SECONDS}
    cmd_wait
    say "ready in $(( SECONDS - started )) s (pid $(our_pid))"
}

# -------------------------------------------------------------------- wait ---

cmd_wait() {
    check_port_number MMA_BROKER_KAFKA_PORT "${PORT}"
    local deadline=$(( SECONDS + TIMEOUT_S ))
    local had_pid=""
    [[ -f "${PID_FILE}" ]] && had_pid="yes"
    say "waiting up to ${TIMEOUT_S} s for the broker on ${HOST}:${PORT}"
    while (( SECONDS < deadline )); do
        local pid
        pid="$(our_pid)"
        if [[ -n "${had_pid}" && -z "${pid}" ]]; then
            show_log_tail
            rm -f "${PID_FILE}" "${READY_FILE}"
            die "the broker process exited during start-up"
        fi
        # Ours: the started line must be in this run's log, or this very process
        # was already seen ready (the log rolls every hour, so a broker started
        # long ago has its started line in a rolled file). Someone else's broker
        # (no pid file): the protocol checks alone decide.
        if port_open "${PORT}" && api_versions_ok \
                && { [[ -z "${pid}" ]] || [[ "$(cat "${READY_FILE}" 2>/dev/null)" == "${pid}" ]] \
                     || started_line_logged; }; then
            local rc=0
            python_metadata_ok || rc=$?
            if (( rc != 1 )); then
                [[ -n "${pid}" ]] && echo "${pid}" >"${READY_FILE}"
                say "broker answers on ${HOST}:${PORT}"
                return 0
            fi
        fi
        sleep 0.5
    done
    show_log_tail
    local hint=""
    [[ -n "$(our_pid)" ]] && hint=" (the broker process is left running: 'kafka.sh stop' ends it)"
    die "no answering broker on ${HOST}:${PORT} after ${TIMEOUT_S} s${hint}"
}

# -------------------------------------------------------------------- stop ---

cmd_stop() {
    local purge="${1:-}"
    take_lock
    local pid
    pid="$(our_pid)"
    if [[ -z "${pid}" ]]; then
        clean_stale_pid_file
        say "not running (state ${STATE_DIR})"
    else
        say "stopping broker (pid ${pid}, controlled shutdown, up to ${STOP_TIMEOUT_S} s)"
        kill -TERM "${pid}" 2>/dev/null || true
        local deadline=$(( SECONDS + STOP_TIMEOUT_S ))
        while [[ -d "/proc/${pid}" ]] && (( SECONDS < deadline )); do sleep 0.2; done
        if [[ -d "/proc/${pid}" ]]; then
            say "still running after ${STOP_TIMEOUT_S} s: SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
            while [[ -d "/proc/${pid}" ]]; do sleep 0.1; done
        fi
        rm -f "${PID_FILE}" "${READY_FILE}"
        say "stopped"
    fi
    if [[ "${purge}" == "--purge" ]]; then
        rm -rf "${DATA_DIR}" "${LOG_DIR}" "${CLUSTER_ID_FILE}" "${LOG_OFFSET_FILE}"
        say "purged data, logs and cluster id in ${STATE_DIR} (jars kept)"
    fi
}

# ------------------------------------------------------------------ status ---

cmd_status() {
    local pid
    pid="$(our_pid)"
    if [[ -z "${pid}" ]]; then
        echo "stopped (state ${STATE_DIR})"
        return 3
    fi
    local answering="not answering yet"
    if port_open "${PORT}" && api_versions_ok; then answering="answering"; fi
    echo "running (pid ${pid}, ${HOST}:${PORT}, controller ${HOST}:${CONTROLLER_PORT}, ${answering}, state ${STATE_DIR})"
}

main() {
    local command="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "${command}" in
        fetch) take_lock; cmd_fetch ;;
        start) cmd_start ;;
        stop)
            if [[ -n "${1:-}" && "${1}" != "--purge" ]]; then
                usage
                die "unknown option for stop: ${1}"
            fi
            cmd_stop "${1:-}" ;;
        purge) cmd_stop --purge ;;
        status) cmd_status ;;
        wait) cmd_wait ;;
        -h|--help|help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
