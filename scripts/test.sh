#!/usr/bin/env bash
# Run every check: lint, types, unit tests and integration tests against a real Kafka broker.
# Sets up .venv, the broker and Chromium (for the dashboard's browser test) on its own.
# Extra arguments go to pytest (e.g. -k fedavg).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO_ROOT"

ensure_chromium
ensure_broker
trap stop_broker_if_started EXIT

echo "== ruff" >&2
ruff check common fl_server fl_node fl_data tests bench
echo "== mypy" >&2
mypy
echo "== pytest" >&2
set +e
python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$rc"
