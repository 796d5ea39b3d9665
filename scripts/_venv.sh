# Sourced by the other scripts: create or reuse the project's virtual environment and install the project.
# Re-installs only when pyproject.toml changed since the last install.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FL_VENV:-$REPO_ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: Python 3.11+ needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }
  echo "setup: creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
_stamp="$VENV/.fl-installed"
_want=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)
if [[ $(cat "$_stamp" 2>/dev/null) != "$_want" ]]; then
  echo "setup: installing fl-kafka and its dependencies into $VENV (first run downloads TensorFlow)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO_ROOT[dev]"
  echo "$_want" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"

# A free TCP port on 127.0.0.1 (what the OS hands out for port 0).
free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True if a Kafka broker (not just anything listening) answers at $1 within a few seconds.
is_kafka_broker() {
  timeout 20 "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000, bootstrap_timeout_ms=5000).list_topics()
PY
}

# Use the Kafka broker at $KAFKA_BOOTSTRAP, or start the local one; sets FL_STARTED_BROKER=1 if we did.
# Something else listening on the default port (9092) is not a broker: then ours starts on a free port.
ensure_broker() {
  local explicit=${KAFKA_BOOTSTRAP:+1}
  export KAFKA_PORT=${KAFKA_PORT:-9092}
  export KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}
  local host=${KAFKA_BOOTSTRAP%%,*}
  FL_STARTED_BROKER=0
  if timeout 2 bash -c "exec 3<>/dev/tcp/${host%:*}/${host##*:}" 2>/dev/null; then
    if is_kafka_broker "$KAFKA_BOOTSTRAP"; then
      echo "setup: using the Kafka broker at $KAFKA_BOOTSTRAP" >&2
      return 0
    fi
    if [[ -n $explicit ]]; then
      echo "error: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP answers, but not as a Kafka broker" >&2
      return 1
    fi
    KAFKA_PORT=$(free_port)
    export KAFKA_PORT KAFKA_CONTROLLER_PORT=$(free_port) KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
    echo "setup: ${host} is taken by something that is not a Kafka broker; starting ours on $KAFKA_BOOTSTRAP" >&2
  fi
  KAFKA_PORT=${KAFKA_BOOTSTRAP##*:} "$REPO_ROOT/scripts/kafka-local.sh" start
  FL_STARTED_BROKER=1
}

stop_broker_if_started() {
  if [[ ${FL_STARTED_BROKER:-0} == 1 ]]; then
    "$REPO_ROOT/scripts/kafka-local.sh" stop || true
  fi
}

# The browser the dashboard's test drives (Playwright on the system Chromium; Playwright downloads nothing).
# Exports FL_CHROMIUM; installs Debian's chromium with apt-get when it is missing and we are root.
ensure_chromium() {
  local found
  found=${FL_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
  if [[ -z $found || ! -x $found ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "setup: installing Debian's chromium for the dashboard's browser test" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
      found=$(command -v chromium || true)
    fi
  fi
  if [[ -z $found ]]; then
    echo "error: no chromium for the dashboard's browser test: install it (Debian: sudo apt-get install chromium)" \
         "or point FL_CHROMIUM at a Chromium binary" >&2
    return 1
  fi
  export FL_CHROMIUM=$found
}
