#!/usr/bin/env bash
# Single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1
# for development and tests. No Docker needed: the official broker jars come from
# Maven Central via scripts/kafka/pom.xml (or from an existing $KAFKA_HOME).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR") POM="$SCRIPT_DIR/kafka/pom.xml"

usage() {
  cat <<EOF
Usage: ${0##*/} start|stop|status|logs [-f]|--help   (single-node KRaft broker on 127.0.0.1)
  start    start in the background and wait until it answers (idempotent)
  stop     SIGTERM, wait up to 30 s, then SIGKILL (idempotent)
  status   print running/stopped; exit 0 if running, 3 if stopped
  logs     print the last 200 lines of the broker log (-f: follow)

Environment:
  KAFKA_PORT             client listener port (default 9092)
  KAFKA_CONTROLLER_PORT  controller port (default KAFKA_PORT+1)
  KAFKA_DATA_DIR         default <repo>/.kafka-local (state in <port>/, jars in dist/)
  KAFKA_HOME             use an existing Kafka installation (\$KAFKA_HOME/libs)
  KAFKA_VERSION          Kafka version to fetch with Maven (default: pom property)
  KAFKA_HEAP_OPTS        JVM heap options (default "-Xms256m -Xmx512m")
  KAFKA_START_TIMEOUT_S  seconds to wait for the broker (default 90)
  KAFKA_REUSE_EXISTING   0 = fail if another process already answers on the port
  KAFKA_SASL_PLAIN_USERS "user1:pass1,user2:pass2" adds a SASL_PLAINTEXT listener (mechanism
                         PLAIN) accepting these users; unset = PLAINTEXT only (development only:
                         the passwords are stored in the generated server.properties)
  KAFKA_SASL_PORT        SASL_PLAINTEXT listener port (default KAFKA_PORT+2)
EOF
}

log() { echo "kafka-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

PORT=${KAFKA_PORT:-9092}
[[ $PORT =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a number, got '$PORT'"
CPORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
[[ $CPORT =~ ^[0-9]+$ && $CPORT != "$PORT" ]] || die "bad KAFKA_CONTROLLER_PORT '$CPORT'"

# JAAS options user_<name>="<password>" for the PLAIN login module, from KAFKA_SASL_PLAIN_USERS.
sasl_jaas_users() {
  local entry name pass out="" entries
  IFS=, read -r -a entries <<<"$SASL_USERS"
  for entry in "${entries[@]}"; do
    name=${entry%%:*} pass=${entry#*:}
    [[ $entry == *:* && $name =~ ^[A-Za-z0-9._-]+$ && $pass =~ ^[^\"\\[:space:]]+$ ]] \
      || die "KAFKA_SASL_PLAIN_USERS: expected user:password[,user:password...] (user [A-Za-z0-9._-], password without quotes, backslashes or spaces)"
    out+=" user_$name=\"$pass\""
  done
  [[ -n $out ]] || die "KAFKA_SASL_PLAIN_USERS has no user:password entries"
  echo "$out"
}

SASL_USERS=${KAFKA_SASL_PLAIN_USERS:-}
SPORT="" JAAS_USERS=""
if [[ -n $SASL_USERS ]]; then
  SPORT=${KAFKA_SASL_PORT:-$((PORT + 2))}
  [[ $SPORT =~ ^[0-9]+$ && $SPORT != "$PORT" && $SPORT != "$CPORT" ]] || die "bad KAFKA_SASL_PORT '$SPORT'"
  JAAS_USERS=$(sasl_jaas_users) || exit 1
fi
DATA_DIR=${KAFKA_DATA_DIR:-$REPO_ROOT/.kafka-local}
STATE="$DATA_DIR/$PORT" PID_FILE="$DATA_DIR/$PORT/kafka.pid" BROKER_LOG="$DATA_DIR/$PORT/broker.log"
CONSOLE_LOG="$STATE/console.log"   # JVM stdout/stderr (JVM crashes, WARN+ echo)
TIMEOUT=${KAFKA_START_TIMEOUT_S:-90}
JAVA=java
[[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME:-}/bin/java ]] && JAVA="$JAVA_HOME/bin/java"

# Pid from the pid file if that process is alive and is our broker.
running_pid() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  ps -p "$pid" -o args= 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

port_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

resolve_libs() {
  if [[ -n ${KAFKA_HOME:-} ]]; then LIBS="$KAFKA_HOME/libs"
    compgen -G "$LIBS/kafka_2.1*.jar" >/dev/null || die "no kafka_2.1x jar in $LIBS (KAFKA_HOME=$KAFKA_HOME)"; return
  fi
  command -v mvn >/dev/null || die "mvn not found (install Maven or set KAFKA_HOME)"
  local version=${KAFKA_VERSION:-}
  [[ -n $version ]] || version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
  [[ -n $version ]] || die "cannot read kafka.version from $POM"
  local dist="$DATA_DIR/dist/$version"
  LIBS="$dist/libs"
  [[ -f $dist/.complete ]] && return
  log "resolving Kafka $version jars with Maven into $LIBS"
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  local out
  if ! out=$(mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -Dkafka.version="$version" -DincludeScope=runtime -DoutputDirectory="$LIBS" 2>&1); then
    echo "$out" | sed 's/\x1b\[[0-9;]*m//g' | grep -v '^\s*$' | tail -n 30 >&2
    die "Maven could not resolve Kafka $version (is it on Maven Central?)"
  fi
  compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null || die "Maven finished but no kafka_2.13 jar in $LIBS"
  touch "$dist/.complete"
}

write_config() {
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n $SPORT ]]; then
    listeners+=",SASL_PLAINTEXT://127.0.0.1:$SPORT" advertised+=",SASL_PLAINTEXT://127.0.0.1:$SPORT"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  mkdir -p "$STATE/data"
  # With SASL users the file holds their passwords: owner-only from the start.
  [[ -z $SPORT ]] || { rm -f "$STATE/server.properties"; (umask 077; : >"$STATE/server.properties"); }
  cat >"$STATE/server.properties" <<EOF
# Generated by scripts/kafka-local.sh on each start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$STATE/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
EOF
  if [[ -n $SPORT ]]; then
    # Broker side of SASL/PLAIN on the SASL_PLAINTEXT listener only; brokers and controller stay PLAINTEXT.
    cat >>"$STATE/server.properties" <<EOF
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$JAAS_USERS;
EOF
  fi
  cat >"$STATE/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT"><ThresholdFilter level="WARN"/>
      <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
    <File name="file" fileName="$BROKER_LOG" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/></File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/><AppenderRef ref="file"/></Root>
$(for n in org.apache.kafka.common.config.AbstractConfig org.apache.kafka.storage kafka.log \
    state.change.logger kafka.request.logger org.apache.kafka.controller org.apache.kafka.coordinator; do
    echo "    <Logger name=\"$n\" level=\"WARN\"/>"; done)
  </Loggers>
</Configuration>
EOF
}

format_storage() {
  [[ -f $STATE/data/meta.properties ]] && return
  local cid out
  if [[ -s $STATE/cluster.id ]]; then cid=$(<"$STATE/cluster.id"); else
    cid=$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1) \
      || die "StorageTool random-uuid failed"
    echo "$cid" >"$STATE/cluster.id"
  fi
  log "formatting storage in $STATE/data (cluster id $cid)"
  out=$("$JAVA" -Dlog4j2.configurationFile="$STATE/log4j2.xml" -cp "$LIBS/*" \
        kafka.tools.StorageTool format -t "$cid" -c "$STATE/server.properties" 2>&1) \
    || { echo "$out" >&2; die "storage format failed"; }
}

fail_startup() {
  log "$1; last 40 lines of $BROKER_LOG:"
  tail -n 40 "$BROKER_LOG" >&2 2>/dev/null || true
  [[ -s $CONSOLE_LOG ]] && { log "last 20 lines of $CONSOLE_LOG:"; tail -n 20 "$CONSOLE_LOG" >&2; }
  exit 1
}

# A reused broker must already have the SASL listener that was asked for; it is not reconfigured.
check_sasl_reused() {
  [[ -z $SPORT ]] || port_answers "$SPORT" \
    || die "KAFKA_SASL_PLAIN_USERS is set but nothing answers on SASL port $SPORT; stop the broker and start again"
}

cmd_start() {
  local pid
  mkdir -p "$DATA_DIR"
  if command -v flock >/dev/null; then  # serialize concurrent starts (e.g. parallel tests)
    exec 9>"$DATA_DIR/.start.lock"; flock -w $((TIMEOUT + 120)) 9 || die "timed out waiting for $DATA_DIR/.start.lock"
  fi
  if pid=$(running_pid); then log "already running (pid $pid) at 127.0.0.1:$PORT"; check_sasl_reused; return 0; fi
  if port_answers "$PORT"; then
    [[ ${KAFKA_REUSE_EXISTING:-1} != 0 ]] || die "port $PORT is in use by another process"
    log "a broker already answers at 127.0.0.1:$PORT (not started by this script); reusing it"
    check_sasl_reused
    return 0
  fi
  port_answers "$CPORT" && die "controller port $CPORT is in use (set KAFKA_CONTROLLER_PORT)"
  [[ -n $SPORT ]] && port_answers "$SPORT" && die "SASL port $SPORT is in use (set KAFKA_SASL_PORT)"
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ required)"
  resolve_libs
  write_config
  format_storage
  local heap offset start=$SECONDS
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
  touch "$BROKER_LOG"
  offset=$(wc -c <"$BROKER_LOG")   # only look at log lines written by this start
  rm -f "$PID_FILE"
  log "starting Kafka on 127.0.0.1:$PORT (controller $CPORT), state in $STATE"
  # The inner bash writes its own pid and then execs java, so the pid is the JVM's.
  # shellcheck disable=SC2016
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" "${heap[@]}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE/log4j2.xml" -cp "$LIBS/*" \
    kafka.Kafka "$STATE/server.properties" </dev/null >"$CONSOLE_LOG" 2>&1 9>&- &
  for _ in $(seq 1 50); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  [[ -s $PID_FILE ]] || fail_startup "launcher did not write $PID_FILE"
  pid=$(<"$PID_FILE")
  while ((SECONDS - start < TIMEOUT)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; fail_startup "broker process exited during startup"; }
    # Readiness: port accepts connections AND this run logged "Kafka Server started".
    if port_answers "$PORT" && { [[ -z $SPORT ]] || port_answers "$SPORT"; } && grep -q 'Kafka Server started\|started (kafka.server.KafkaRaftServer)' \
        < <(tail -c "+$((offset + 1))" "$BROKER_LOG"); then
      log "ready at 127.0.0.1:$PORT${SPORT:+ (SASL_PLAINTEXT $SPORT)} (pid $pid) after $((SECONDS - start)) s"
      return 0
    fi
    sleep 0.5
  done
  log "broker did not become ready within $TIMEOUT s; stopping it"
  cmd_stop
  fail_startup "startup timed out"
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then log "not running (port $PORT)"; rm -f "$PID_FILE"; return 0; fi
  log "stopping pid $pid (port $PORT)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; log "stopped"; return 0; }
    sleep 0.5
  done
  log "still alive after 30 s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then echo "running pid=$pid port=$PORT controller_port=$CPORT state=$STATE"
  else echo "stopped port=$PORT state=$STATE"; return 3; fi
}

cmd_logs() {
  [[ -f $BROKER_LOG ]] || die "no log yet at $BROKER_LOG"
  if [[ ${1:-} == -f ]]; then exec tail -n 200 -F "$BROKER_LOG"; else tail -n 200 "$BROKER_LOG"; fi
}

case ${1:-} in
  start | stop | status) "cmd_$1" ;;
  logs) cmd_logs "${2:-}" ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) log "unknown command '$1'"; usage >&2; exit 2 ;;
esac
