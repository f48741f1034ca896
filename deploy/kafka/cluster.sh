#!/usr/bin/env bash
# A three-node Apache Kafka cluster (KRaft) on localhost, for failover tests and for
# trying access control locally: three JVMs, each broker + controller
# (process.roles=broker,controller), a three-voter controller quorum, replication
# factor 3 and min.insync.replicas 2 for every topic, internal ones included.
#
# Usage: deploy/kafka/cluster.sh start [--sasl] [--tls] | stop [--purge] | purge | status
#                                | kill <n> | restart <n> | wait [<n>] | bootstrap
#
# The jars are the ones of deploy/kafka/kafka.sh (fetched by it from Maven Central).
# State lives in ${MMA_BROKER_KAFKA_CLUSTER_DIR:-${MMA_BROKER_HOME:-<repo>/.mma-broker}/kafka-cluster}:
#   node<n>/server.properties, node<n>/data/, node<n>/logs/server.log, node<n>/kafka.pid
#   cluster.id, mode (plaintext | sasl | sasl+tls: fixed at the first start after a purge)
#   secrets/<user>.toml   (--sasl) the user's SCRAM password as a 0600 secrets_file of the
#                         broker (key kafka_sasl_password); secrets/admin.toml is the super user
#   tls/ca.pem            (--tls) the CA the clients trust: [kafka] ssl_ca_location
# See deploy/kafka/README.md ("Three brokers") for the environment variables.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${SCRIPT_DIR}/../.." && pwd)"
HOME_DIR="${MMA_BROKER_HOME:-${REPO_DIR}/.mma-broker}"
STATE_DIR="${MMA_BROKER_KAFKA_CLUSTER_DIR:-${HOME_DIR}/kafka-cluster}"
LIB_DIR="${MMA_BROKER_KAFKA_LIB:-${HOME_DIR}/kafka/lib}"
CLUSTER_ID_FILE="${STATE_DIR}/cluster.id"
MODE_FILE="${STATE_DIR}/mode"
SECRETS_DIR="${STATE_DIR}/secrets"
TLS_DIR="${STATE_DIR}/tls"
LOCK_FILE="${STATE_DIR}/.lock"

HOST="127.0.0.1"
IFS=',' read -r -a PORTS <<<"${MMA_BROKER_KAFKA_CLUSTER_PORTS:-19092,19093,19094}"
IFS=',' read -r -a CONTROLLER_PORTS <<<"${MMA_BROKER_KAFKA_CLUSTER_CONTROLLER_PORTS:-19192,19193,19194}"
MIN_ISR="${MMA_BROKER_KAFKA_CLUSTER_MIN_ISR:-2}"
USERS="${MMA_BROKER_KAFKA_CLUSTER_USERS:-mma-broker}"
TIMEOUT_S="${MMA_BROKER_KAFKA_TIMEOUT:-120}"
STOP_TIMEOUT_S="${MMA_BROKER_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${MMA_BROKER_KAFKA_CLUSTER_HEAP_OPTS:--Xmx384m -Xms128m}"
STARTED_PATTERN='Kafka Server started'
NODES=(1 2 3)

say() { printf 'kafka-cluster: %s\n' "$*" >&2; }
die() { printf 'kafka-cluster: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $(basename "$0") start [--sasl] [--tls] | stop [--purge] | purge | status | kill <n> | restart <n> | wait [<n>] | bootstrap
  start      format once, start the three nodes, wait until each serves
             --sasl: SCRAM-SHA-512 on the client listener, ACL authorizer (StandardAuthorizer),
                     users admin (super user) and ${USERS} created at format time,
                     passwords in ${SECRETS_DIR}/<user>.toml (0600)
             --tls:  the client listener is SASL_SSL with a CA and a server certificate made
                     here with openssl (${TLS_DIR}/ca.pem); implies --sasl
             the mode is fixed when the cluster is formatted: purge to change it
  stop       SIGTERM all nodes, ${STOP_TIMEOUT_S} s for a controlled shutdown each, then SIGKILL (--purge: delete the state)
  status     one line per node; exit 0 if all three run, 3 otherwise
  kill <n>   kill -9 node n (1..3): a broker and controller lost without warning
  restart <n> start node n again (after kill or stop) and wait until it serves
  wait [<n>] block until node n (default: all) logged "${STARTED_PATTERN}" in this run
  bootstrap  print the bootstrap servers (host:port,host:port,host:port)
EOF
}

(( ${#PORTS[@]} == 3 && ${#CONTROLLER_PORTS[@]} == 3 )) \
    || die "MMA_BROKER_KAFKA_CLUSTER_PORTS and _CONTROLLER_PORTS must each list three ports"
for p in "${PORTS[@]}" "${CONTROLLER_PORTS[@]}"; do
    [[ "${p}" =~ ^[0-9]+$ ]] && (( p >= 1 && p <= 65535 )) || die "'${p}' is not a TCP port number"
done
[[ "${MIN_ISR}" =~ ^[123]$ ]] || die "MMA_BROKER_KAFKA_CLUSTER_MIN_ISR=${MIN_ISR}: must be 1, 2 or 3"

node_dir() { echo "${STATE_DIR}/node$1"; }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }
props() { echo "$(node_dir "$1")/server.properties"; }
server_log() { echo "$(node_dir "$1")/logs/server.log"; }

check_node() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3, not '${1:-}'"
}

take_lock() {
    mkdir -p "${STATE_DIR}"
    [[ -f "${STATE_DIR}/.gitignore" ]] || printf '# runtime state of deploy/kafka/cluster.sh\n*\n' >"${STATE_DIR}/.gitignore"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${LOCK_FILE}"
        flock -w 300 9 || die "could not lock ${LOCK_FILE} within 300 s"
    fi
}

# The pid of node $1 if that process is our broker (its command line names our properties).
node_pid() {
    local f
    f="$(pid_file "$1")"
    [[ -f "${f}" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"${f}")"
    [[ -n "${pid}" && -r "/proc/${pid}/cmdline" ]] || return 0
    if tr '\0' '\n' <"/proc/${pid}/cmdline" | grep -qxF "$(props "$1")"; then
        echo "${pid}"
    fi
}

port_open() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

mode() { cat "${MODE_FILE}" 2>/dev/null || echo plaintext; }

listener() {
    case "$(mode)" in
        plaintext) echo PLAINTEXT ;;
        sasl) echo SASL_PLAINTEXT ;;
        sasl+tls) echo SASL_SSL ;;
    esac
}

bootstrap() {
    local out="" p
    for p in "${PORTS[@]}"; do out+="${out:+,}${HOST}:${p}"; done
    echo "${out}"
}

password_of() {  # the password in secrets/<user>.toml
    sed -n 's/^kafka_sasl_password = "\(.*\)"$/\1/p' "${SECRETS_DIR}/$1.toml"
}

# ------------------------------------------------------------------ config ---

write_config() {
    local n="$1" i=$(( $1 - 1 ))
    local dir voters="" k
    dir="$(node_dir "${n}")"
    mkdir -p "${dir}/data" "${dir}/logs"
    for k in "${NODES[@]}"; do voters+="${voters:+,}${k}@${HOST}:${CONTROLLER_PORTS[$(( k - 1 ))]}"; done
    local l
    l="$(listener)"
    {
        cat <<EOF
# Generated by deploy/kafka/cluster.sh on each start; edits are overwritten.
process.roles=broker,controller
node.id=${n}
controller.quorum.voters=${voters}
listeners=${l}://${HOST}:${PORTS[$i]},CONTROLLER://${HOST}:${CONTROLLER_PORTS[$i]}
advertised.listeners=${l}://${HOST}:${PORTS[$i]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=${l}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,${l}:${l}
log.dirs=${dir}/data

# Every partition on all three nodes; a write is acknowledged (acks=all) once
# min.insync.replicas of them have it, so one node may be lost without losing a write.
num.partitions=4
default.replication.factor=3
min.insync.replicas=${MIN_ISR}
unclean.leader.election.enable=false
auto.create.topics.enable=true
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0

# A node that stops heart-beating is fenced (its partitions get new leaders) after
# 3 s instead of 9 s: the failover a client sees after kill -9 is about this long.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000

message.max.bytes=16777216
replica.fetch.max.bytes=16777216
log.retention.hours=168
log.segment.bytes=268435456
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
background.threads=2
EOF
        if [[ "$(mode)" != plaintext ]]; then
            local jaas
            jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$(password_of admin)\";"
            local lname
            lname="$(tr '[:upper:]' '[:lower:]' <<<"${l}")"
            cat <<EOF

# SCRAM-SHA-512 on the client listener; Kafka's ACL authorizer. The nodes talk to each
# other as admin; ANONYMOUS is the controller listener (loopback only, PLAINTEXT).
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.${lname}.scram-sha-512.sasl.jaas.config=${jaas}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
        fi
        if [[ "$(mode)" == sasl+tls ]]; then
            cat <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
ssl.endpoint.identification.algorithm=https
EOF
        fi
    } >"$(props "${n}")"
    chmod 600 "$(props "${n}")"
    cat >"${dir}/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $(server_log "${n}")
appender.file.filePattern = $(server_log "${n}").%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

make_secrets() {  # once per format: admin + users, 0600 files, never echoed
    mkdir -p "${SECRETS_DIR}"
    chmod 700 "${SECRETS_DIR}"
    local u
    for u in admin ${USERS//,/ }; do
        [[ "${u}" =~ ^[A-Za-z0-9._-]+$ ]] || die "user name '${u}' (MMA_BROKER_KAFKA_CLUSTER_USERS): letters, digits, . _ - only"
        [[ -s "${SECRETS_DIR}/${u}.toml" ]] && continue
        (umask 077; printf 'kafka_sasl_password = "%s"\n' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" \
            >"${SECRETS_DIR}/${u}.toml")
    done
}

make_tls() {  # a CA and a certificate for 127.0.0.1 / localhost, with openssl
    command -v openssl >/dev/null 2>&1 || die "'openssl' not found on PATH (--tls makes the CA with it)"
    mkdir -p "${TLS_DIR}"
    chmod 700 "${TLS_DIR}"
    [[ -s "${TLS_DIR}/server.pem" ]] && return 0
    (
        cd "${TLS_DIR}"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=mma-broker local CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile san.ext -out server.crt 2>/dev/null
        # Kafka's PEM key store: the PKCS#8 key, then the certificate chain
        openssl pkcs8 -topk8 -nocrypt -in server.key -out server.p8
        cat server.p8 server.crt ca.pem >server.pem
        rm -f server.csr server.key server.p8 san.ext ca.srl
        chmod 644 ca.pem
    ) || die "openssl could not make the CA and server certificate in ${TLS_DIR}"
}

java_cp() { echo "${LIB_DIR}/*"; }

format_node() {
    local n="$1" dir
    dir="$(node_dir "${n}")"
    [[ -f "${dir}/data/meta.properties" ]] && return 0
    local args="${dir}/format.args"  # a java @argfile: passwords never show in the process list
    (
        umask 077
        printf 'kafka.tools.StorageTool format --config %s --cluster-id %s --ignore-formatted\n' \
            "$(props "${n}")" "$(cat "${CLUSTER_ID_FILE}")"
        if [[ "$(mode)" != plaintext ]]; then
            local u
            for u in admin ${USERS//,/ }; do
                printf -- '--add-scram SCRAM-SHA-512=[name=%s,password=%s]\n' "${u}" "$(password_of "${u}")"
            done
        fi
    ) >"${args}"
    if ! java -Xmx256m -Dlog4j2.configurationFile="${dir}/log4j2.properties" -cp "$(java_cp)" "@${args}" \
            >"${dir}/logs/format.out" 2>&1; then
        rm -f "${args}"
        cat "${dir}/logs/format.out" >&2
        die "StorageTool format failed for node ${n}"
    fi
    rm -f "${args}"
}

launch_node() {
    local n="$1" dir
    dir="$(node_dir "${n}")"
    local log
    log="$(server_log "${n}")"
    if [[ -f "${log}" ]]; then stat -c %s "${log}" >"${dir}/server.log.offset"; else echo 0 >"${dir}/server.log.offset"; fi
    local -a heap
    read -r -a heap <<<"${HEAP_OPTS}"
    local -a cmd=(java "${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:ParallelGCThreads=1
                  -XX:ConcGCThreads=1 -XX:CICompilerCount=2 -XX:+ExitOnOutOfMemoryError -XX:TieredStopAtLevel=1
                  -Djava.awt.headless=true -Dfile.encoding=UTF-8
                  -Dlog4j2.configurationFile="${dir}/log4j2.properties" -Dkafka.logs.dir="${dir}/logs"
                  -cp "$(java_cp)" kafka.Kafka "$(props "${n}")")
    rm -f "$(pid_file "${n}")"
    # shellcheck disable=SC2016  # $$, $1 and $@ belong to the inner shell
    nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$(pid_file "${n}")" "${cmd[@]}" \
        >>"${dir}/logs/kafka.out" 2>&1 </dev/null 9>&- &
    local waited=0
    while [[ ! -s "$(pid_file "${n}")" ]] && (( waited < 50 )); do sleep 0.1; waited=$(( waited + 1 )); done
    [[ -s "$(pid_file "${n}")" ]] || die "node ${n} did not start (see ${dir}/logs/kafka.out)"
}

started_logged() {
    local n="$1" log offset size
    log="$(server_log "${n}")"
    [[ -f "${log}" ]] || return 1
    offset="$(tr -dc '0-9' <"$(node_dir "${n}")/server.log.offset" 2>/dev/null || echo 0)"
    size="$(stat -c %s "${log}")"
    (( ${offset:-0} <= size )) || offset=0
    tail -c "+$(( ${offset:-0} + 1 ))" "${log}" | grep -F "${STARTED_PATTERN}" >/dev/null
}

cmd_wait() {
    local -a which=("${NODES[@]}")
    if [[ -n "${1:-}" ]]; then check_node "$1"; which=("$1"); fi
    local deadline=$(( SECONDS + TIMEOUT_S )) n pending
    while :; do
        pending=()
        for n in "${which[@]}"; do
            if [[ -z "$(node_pid "${n}")" ]]; then
                tail -n 30 "$(server_log "${n}")" >&2 2>/dev/null || true
                tail -n 10 "$(node_dir "${n}")/logs/kafka.out" >&2 2>/dev/null || true
                die "node ${n} is not running"
            fi
            started_logged "${n}" && port_open "${PORTS[$(( n - 1 ))]}" || pending+=("${n}")
        done
        (( ${#pending[@]} == 0 )) && break
        (( SECONDS < deadline )) || die "node(s) ${pending[*]} not serving after ${TIMEOUT_S} s (logs in $(node_dir "${pending[0]}")/logs)"
        sleep 0.3
    done
    say "node(s) ${which[*]} serving on $(bootstrap) ($(listener))"
}

cmd_start() {
    local want=plaintext
    while (( $# )); do
        case "$1" in
            --sasl) [[ "${want}" == sasl+tls ]] || want=sasl ;;
            --tls) want=sasl+tls ;;
            *) usage; die "unknown option for start: $1" ;;
        esac
        shift
    done
    command -v java >/dev/null 2>&1 || die "'java' not found on PATH (Java 17 runs the brokers)"
    if ! ls "${LIB_DIR}"/kafka_2.13-*.jar >/dev/null 2>&1; then
        MMA_BROKER_HOME="${HOME_DIR}" "${SCRIPT_DIR}/kafka.sh" fetch
    fi
    take_lock
    if [[ -s "${CLUSTER_ID_FILE}" && "$(mode)" != "${want}" ]]; then
        die "the cluster in ${STATE_DIR} was formatted as $(mode), not ${want}: 'cluster.sh purge' first"
    fi
    echo "${want}" >"${MODE_FILE}"
    if [[ ! -s "${CLUSTER_ID_FILE}" ]]; then
        local cid
        cid="$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]')"
        [[ "${cid}" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid gave '${cid}'"
        echo "${cid}" >"${CLUSTER_ID_FILE}"
    fi
    [[ "${want}" == plaintext ]] || make_secrets
    [[ "${want}" == sasl+tls ]] && make_tls
    local n p
    for n in "${NODES[@]}"; do
        [[ -n "$(node_pid "${n}")" ]] && continue
        for p in "${PORTS[$(( n - 1 ))]}" "${CONTROLLER_PORTS[$(( n - 1 ))]}"; do
            port_open "${p}" && die "${HOST}:${p} (node ${n}) is in use by another process; set MMA_BROKER_KAFKA_CLUSTER_PORTS / _CONTROLLER_PORTS"
        done
    done
    local -a formatting=()
    for n in "${NODES[@]}"; do
        [[ -n "$(node_pid "${n}")" ]] && continue
        write_config "${n}"
        format_node "${n}" &
        formatting+=("$!")
    done
    for p in "${formatting[@]}"; do wait "${p}" || die "formatting failed"; done
    local started=${SECONDS}
    for n in "${NODES[@]}"; do
        if [[ -n "$(node_pid "${n}")" ]]; then say "node ${n} already running"; continue; fi
        launch_node "${n}"
    done
    cmd_wait
    say "cluster ready in $(( SECONDS - started )) s"
}

stop_node() {
    local n="$1" pid
    pid="$(node_pid "${n}")"
    if [[ -z "${pid}" ]]; then rm -f "$(pid_file "${n}")"; return 0; fi
    kill -TERM "${pid}" 2>/dev/null || true
    echo "${pid}"
}

cmd_stop() {
    take_lock
    local n pid deadline=$(( SECONDS + STOP_TIMEOUT_S ))
    local -a pids=()
    # all at once: a node waits for the quorum in its controlled shutdown
    for n in "${NODES[@]}"; do pid="$(stop_node "${n}")"; [[ -n "${pid}" ]] && pids+=("${pid}"); done
    for pid in "${pids[@]}"; do
        while [[ -d "/proc/${pid}" ]] && (( SECONDS < deadline )); do sleep 0.2; done
        if [[ -d "/proc/${pid}" ]]; then kill -KILL "${pid}" 2>/dev/null || true; fi
    done
    for n in "${NODES[@]}"; do rm -f "$(pid_file "${n}")"; done
    say "stopped ${#pids[@]} node(s)"
    if [[ "${1:-}" == --purge ]]; then
        rm -rf "${STATE_DIR:?}"/node? "${CLUSTER_ID_FILE}" "${MODE_FILE}" "${SECRETS_DIR}" "${TLS_DIR}"
        say "purged ${STATE_DIR}"
    fi
}

cmd_kill() {
    check_node "${1:-}"
    local pid
    pid="$(node_pid "$1")"
    [[ -n "${pid}" ]] || die "node $1 is not running"
    kill -KILL "${pid}"
    while [[ -d "/proc/${pid}" ]]; do sleep 0.05; done
    rm -f "$(pid_file "$1")"
    say "node $1 (pid ${pid}) killed with SIGKILL"
}

cmd_restart() {
    check_node "${1:-}"
    take_lock
    [[ -s "${CLUSTER_ID_FILE}" ]] || die "no cluster in ${STATE_DIR}: 'cluster.sh start' first"
    if [[ -z "$(node_pid "$1")" ]]; then
        write_config "$1"
        launch_node "$1"
    fi
    cmd_wait "$1"
}

cmd_status() {
    local n pid up=0
    for n in "${NODES[@]}"; do
        pid="$(node_pid "${n}")"
        if [[ -n "${pid}" ]]; then
            up=$(( up + 1 ))
            echo "node ${n}: running (pid ${pid}, ${HOST}:${PORTS[$(( n - 1 ))]}, controller ${HOST}:${CONTROLLER_PORTS[$(( n - 1 ))]})"
        else
            echo "node ${n}: stopped"
        fi
    done
    echo "mode $(mode), min.insync.replicas ${MIN_ISR}, bootstrap $(bootstrap)"
    (( up == 3 )) || return 3
}

main() {
    local command="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "${command}" in
        start) cmd_start "$@" ;;
        stop)
            [[ -z "${1:-}" || "$1" == --purge ]] || { usage; die "unknown option for stop: $1"; }
            cmd_stop "${1:-}" ;;
        purge) cmd_stop --purge ;;
        status) cmd_status ;;
        kill) cmd_kill "${1:-}" ;;
        restart) cmd_restart "${1:-}" ;;
        wait) cmd_wait "${1:-}" ;;
        bootstrap) bootstrap ;;
        -h|--help|help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
