"""What secure aggregation costs per round against plain FedAvg, at 5, 10 and 20 nodes.

For each node count, two sessions run on the same broker, one after the other: ``--secure-aggregation off`` and
``secagg`` (all pairs). Each has a real ``fl-server`` process (digits MLP, 4,810 parameters, node keys) and N
light nodes in this process: the real ``FederatedNode`` (Socket.IO, Kafka, signing, the node's side of secure
aggregation) with a numpy "trainer" instead of Keras (it adds small noise to the weights), so that 20 nodes fit
on two cores and the figures show the protocol, not training. Per round (rounds 2..R; the first warms up) it
prints, as medians:

* **round**: the round's wall time to its aggregate (the history's ``timings_s.total``), off vs secagg, and
  the difference;
* **stages**: secagg's advertise, share_keys, masked_input and unmask wall times, and the server's unmask CPU
  (rebuilding the secrets and removing the masks);
* **bytes per node**: update records on Kafka plus secure-aggregation control messages on Socket.IO (as JSON),
  and their ratio to the raw float32 update (4 bytes per parameter; Bonawitz et al. report 1.73x at 2^10 users
  for their setting) and to our plain update records.

Needs a broker; nothing here is a test.

    .venv/bin/python bench/bench_secure_rounds.py --kafka 127.0.0.1:9092 [--nodes 5 10 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.datasets import DEFAULT_DATASET, DEFAULT_SEED, load_builtin, node_rows
from common.wire.integrity import read_key_file
from common.wire.protocol import encode_chunk
from fl_node.client import FederatedNode, NodeSettings
from fl_node.data import LocalData
from fl_node.trainer import TrainResult
from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = 4810  # the default digits MLP


class LightTrainer:
    """Stands in for Keras: "training" adds N(0, 0.01^2) to every weight."""

    max_model_params = 10**8

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_samples = 0

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self.num_samples = len(y)

    def train(self, architecture: str, compile_spec: Any, weights: list[np.ndarray], config: Any, *,
              server_round: int, session_id: str = "") -> TrainResult:
        t0 = time.perf_counter()
        trained = [np.asarray(w) + self.rng.normal(0, 0.01, np.shape(w)).astype(np.asarray(w).dtype) for w in weights]
        return TrainResult(weights=trained, metrics={"loss": 0.0}, train_s=time.perf_counter() - t0)

    def save(self, architecture: str, weights: list[np.ndarray], path: Path) -> None:
        pass


class CountingNode(FederatedNode):
    """A node that counts the bytes it sends and receives for updates and secure aggregation."""

    update_bytes = 0
    control_bytes = 0

    def _update_chunks(self, *args: Any) -> Any:
        chunks = super()._update_chunks(*args)
        self.update_bytes += sum(len(encode_chunk(chunk)) for chunk in chunks)
        return chunks

    async def _send_secagg(self, event: str, payload: dict[str, Any], server_round: int) -> bool:
        self.control_bytes += len(json.dumps(payload))
        return await super()._send_secagg(event, payload, server_round)

    async def _on_secagg(self, event: str, data: Any = None) -> None:
        self.control_bytes += len(json.dumps(data))
        await super()._on_secagg(event, data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_nodes(nodes: list[CountingNode]) -> None:
    await asyncio.gather(*(node.run() for node in nodes))


def run_session(nodes_count: int, mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    keys_dir = workdir / "keys"
    node_ids = [f"n{i}" for i in range(nodes_count)]
    create_keys(keys_dir / "registry.json", keys_dir, node_ids)
    suffix = uuid.uuid4().hex[:8]
    updates, models, port = f"bench.updates.{suffix}", f"bench.models.{suffix}", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FL_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    server_log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "fl_server", "--port", str(port), "--kafka", args.kafka, "--updates-topic", updates,
         "--models-topic", models, "--min-nodes", str(nodes_count), "--rounds", str(args.rounds),
         "--secure-aggregation", mode, "--node-keys", str(keys_dir / "registry.json"),
         "--history-dir", str(workdir / "history"), "--end-grace", "20", "--round-timeout", "120"],
        env=env, stdout=server_log, stderr=subprocess.STDOUT, cwd=workdir)
    dataset = load_builtin(DEFAULT_DATASET, seed=DEFAULT_SEED)
    nodes = []
    for index, node_id in enumerate(node_ids):
        rows = node_rows(dataset, index, nodes_count, scheme="iid", alpha=0.5, seed=DEFAULT_SEED)
        data = LocalData(frame=dataset.train.iloc[rows].reset_index(drop=True), target=dataset.target)  # type: ignore[union-attr]
        settings = NodeSettings(node_id=node_id, server_url=f"http://127.0.0.1:{port}", kafka=args.kafka,
                                updates_topic=updates, out_dir=workdir / "models", chunk_bytes=512 * 1024,
                                key=read_key_file(keys_dir / f"{node_id}.key"))
        nodes.append(CountingNode(settings, data, LightTrainer(index), None))  # type: ignore[arg-type]
    try:
        asyncio.run(run_nodes(nodes))
        if server.wait(300) != 0:
            raise RuntimeError(f"the server failed: see {workdir / 'server.log'}")
    finally:
        if server.poll() is None:
            server.kill()
        server_log.close()
    history = json.loads(next((workdir / "history").glob("*.json")).read_text())
    history["bench_bytes"] = {"update": statistics.mean(n.update_bytes for n in nodes) / args.rounds,
                              "control": statistics.mean(n.control_bytes for n in nodes) / args.rounds}
    return history


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the nodes retry until the server listens: not news
    raw_bytes = 4 * PARAMETERS
    print(f"digits MLP, {PARAMETERS} parameters ({raw_bytes} bytes float32), {args.rounds} rounds, medians of rounds "
          f"2..{args.rounds}; light nodes in one process, real fl-server and broker")
    print("| nodes | round off | round secagg | extra | advertise | share_keys | masked_input | unmask | unmask CPU "
          "| bytes/node off | bytes/node secagg | vs float32 | vs plain records |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for count in args.nodes:
        runs = {}
        for mode in ("off", "secagg"):
            with tempfile.TemporaryDirectory(prefix=f"bench-secagg-{mode}-") as tmp:
                runs[mode] = run_session(count, mode, args, Path(tmp))
        rounds = {mode: history["rounds"][1:] for mode, history in runs.items()}
        total = {mode: median([r["timings_s"]["total"] for r in rs]) for mode, rs in rounds.items()}
        stages = {stage: median([r["secure_aggregation"]["timings_s"][stage] for r in rounds["secagg"]])
                  for stage in ("advertise", "share_keys", "masked_input", "unmask", "unmask_cpu")}
        plain = runs["off"]["bench_bytes"]["update"]
        secure = runs["secagg"]["bench_bytes"]["update"] + runs["secagg"]["bench_bytes"]["control"]
        print(f"| {count} | {total['off']:.3f} s | {total['secagg']:.3f} s | {total['secagg'] - total['off']:+.3f} s "
              f"| {stages['advertise']:.3f} s | {stages['share_keys']:.3f} s | {stages['masked_input']:.3f} s "
              f"| {stages['unmask']:.3f} s | {stages['unmask_cpu'] * 1000:.1f} ms | {plain:,.0f} | {secure:,.0f} "
              f"| {secure / raw_bytes:.2f}x | {secure / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
