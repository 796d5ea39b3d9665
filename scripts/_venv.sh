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

# Start the local broker unless one already answers at $KAFKA_BOOTSTRAP; sets FL_STARTED_BROKER=1 if we did.
ensure_broker() {
  export KAFKA_PORT=${KAFKA_PORT:-9092}
  export KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}
  local host=${KAFKA_BOOTSTRAP%%,*}
  FL_STARTED_BROKER=0
  if timeout 2 bash -c "exec 3<>/dev/tcp/${host%:*}/${host##*:}" 2>/dev/null; then
    echo "setup: using the Kafka broker at $KAFKA_BOOTSTRAP" >&2
  else
    KAFKA_PORT=${host##*:} "$REPO_ROOT/scripts/kafka-local.sh" start
    FL_STARTED_BROKER=1
  fi
}

stop_broker_if_started() {
  if [[ ${FL_STARTED_BROKER:-0} == 1 ]]; then
    "$REPO_ROOT/scripts/kafka-local.sh" stop || true
  fi
}
