#!/usr/bin/env bash
# The main job: a local federated session on scikit-learn's bundled digits data.
# Starts the local Kafka broker (unless one answers at $KAFKA_BOOTSTRAP), the server and three nodes,
# runs five rounds, prints the round table and where the history is, and stops what it started.
# Tunables: FL_ROUNDS (5), FL_NODES (3), FL_PORT (5000), FL_EPOCHS (1), FL_HISTORY_DIR (history), FL_MODEL (mlp),
# FL_LINGER (seconds the dashboard stays up after the last round, 0).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO_ROOT"

nodes=${FL_NODES:-3}
if [[ -z ${FL_PORT:-} ]]; then  # 5000 unless something already listens there (then any free port)
  FL_PORT=5000
  if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$FL_PORT" 2>/dev/null; then FL_PORT=$(free_port); fi
fi
export FL_ROUNDS=${FL_ROUNDS:-5} FL_PORT FL_HISTORY_DIR=${FL_HISTORY_DIR:-history}
export FL_TF_THREADS=${FL_TF_THREADS:-1} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
logs="$FL_HISTORY_DIR/demo-logs"
mkdir -p "$logs"

pids=()
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_broker_if_started
  exit "$code"
}
trap cleanup EXIT
trap 'echo "demo: interrupted, stopping" >&2; exit 130' INT TERM

ensure_broker
export FL_KAFKA=$KAFKA_BOOTSTRAP

# Every node gets its own key; the server only lets in nodes of its registry (see README "Security").
keys="$FL_HISTORY_DIR/demo-keys"
rm -rf "$keys"
node_ids=()
for ((i = 0; i < nodes; i++)); do node_ids+=("node-$i"); done
fl-keys create --registry "$keys/registry.json" --out-dir "$keys" "${node_ids[@]}" 2> "$logs/keys.log"

echo "demo: server on port $FL_PORT, $nodes nodes, $FL_ROUNDS rounds; node logs in $logs/" >&2
echo "demo: watch it live at http://127.0.0.1:$FL_PORT/dashboard/ (metrics: http://127.0.0.1:$FL_PORT/metrics;" \
  "FL_LINGER=60 keeps them up a minute after the last round)" >&2
fl-server --min-nodes "$nodes" --node-keys "$keys/registry.json" > "$logs/server.out" &
server_pid=$!
pids+=("$server_pid")
for ((i = 0; i < nodes; i++)); do
  fl-node --server "http://127.0.0.1:$FL_PORT" --node-id "node-$i" --partition "$i/$nodes" --key-file "$keys/node-$i.key" \
    > "$logs/node-$i.out" 2> "$logs/node-$i.log" &
  pids+=("$!")
done

rc=0
wait "$server_pid" || rc=$?
if [[ $rc != 0 ]]; then
  echo "demo: the server stopped with exit code $rc (130: interrupted); see the log above" >&2
  exit "$rc"
fi
history_file=$(tail -n 1 "$logs/server.out")
for pid in "${pids[@]:1}"; do wait "$pid" || echo "demo: a node exited with an error; see $logs/" >&2; done
pids=()
echo
fl-history show "$history_file"
echo
echo "history: $history_file"
echo "final model: ${history_file%.json}.keras"
