"""How many nodes one coordinator holds: light nodes at 100, 1,000, 5,000 and 10,000 (issue 19).

For each node count: a real ``fl-server`` process (``--model logreg`` on digits, node keys, a fresh pair of
topics on a real broker) and ``fl-sim`` processes of ``--per-process`` light nodes each (``fl_node.simulate``:
real Socket.IO connections with node keys and connect proofs, signed update records on Kafka, ``fl_update``
acknowledgements; numpy softmax regression instead of Keras). It prints, per node count:

* **connect all**: from the first ``fl-sim`` start to the last node's first connect;
* **round**: median over the rounds of the history's ``timings_s.total`` (round start to aggregate), and the
  median delay from a round's start to the *last* node receiving its ``start_round``;
* **server CPU s/round**: the server process's user + system CPU between each round's ``started_at`` and
  ``ended_at`` (sampled from /proc every 0.2 s), median over the rounds;
* **RSS**: the server's peak resident memory;
* whether every update of every round was accepted, and the nodes' ``server_busy`` refusals and reconnects.

Needs a broker; nothing here is a test. On a 2-core machine the nodes compete with the server for the CPU, so
the figures are an upper bound on what the server alone costs.

    .venv/bin/python bench/bench_scale.py --kafka 127.0.0.1:9092 [--nodes 100 1000 5000 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_server.history import load_history
from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[1]
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessSampler:
    """Samples a process's CPU seconds (user + system) and resident memory from /proc."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float, int]] = []  # (epoch s, cpu s, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> tuple[float, int] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        cpu_s = (int(stat[11]) + int(stat[12])) / TICKS_PER_S
        rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return cpu_s, rss_kb * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            reading = self._read()
            if reading is not None:
                self.samples.append((time.time(), *reading))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_at(self, when: float) -> float:
        """CPU seconds at the last sample before ``when``."""
        before = [cpu for t, cpu, _ in self.samples if t <= when]
        return before[-1] if before else 0.0

    @property
    def peak_rss_bytes(self) -> int:
        return max((rss for _, _, rss in self.samples), default=0)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def run_scale(count: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    keys_dir = workdir / "keys"
    node_ids = [f"sim{i}" for i in range(count)]
    create_keys(keys_dir / "registry.json", keys_dir, node_ids)
    suffix = uuid.uuid4().hex[:8]
    updates, models, port = f"bench.scale.updates.{suffix}", f"bench.scale.models.{suffix}", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FL_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    server_log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "fl_server", "--port", str(port), "--kafka", args.kafka, "--updates-topic", updates,
         "--models-topic", models, "--min-nodes", str(count), "--rounds", str(args.rounds), "--model", "logreg",
         "--node-keys", str(keys_dir / "registry.json"), "--history-dir", str(workdir / "history"),
         "--end-grace", "120", "--round-timeout", str(args.round_timeout), "--max-pending-per-address", "100000",
         "--log-level", "WARNING"],
        env=env, stdout=server_log, stderr=subprocess.STDOUT, cwd=workdir)
    sampler = ProcessSampler(server.pid)
    sims: list[tuple[subprocess.Popen[str], Any]] = []
    try:
        processes = math.ceil(count / args.per_process)
        for index in range(processes):
            first = index * args.per_process
            sim_err = (workdir / f"sim{index}.log").open("w")
            sims.append((subprocess.Popen(
                [sys.executable, "-m", "fl_node.sim_cli", "--server", f"http://127.0.0.1:{port}", "--kafka",
                 args.kafka, "--updates-topic", updates, "--nodes", str(min(args.per_process, count - first)),
                 "--first-index", str(first), "--keys-dir", str(keys_dir), "--max-seconds", str(args.max_seconds),
                 "--connect-concurrency", str(max(1, args.connect_concurrency // processes)),
                 "--log-level", "WARNING"],
                env=env, stdout=subprocess.PIPE, stderr=sim_err, text=True, cwd=workdir), sim_err))
        outputs = []
        for sim, sim_err in sims:
            out, _ = sim.communicate(timeout=args.max_seconds + 120)
            sim_err.close()
            outputs.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
        server.wait(timeout=300)
    finally:
        sampler.stop()
        for sim, _ in sims:
            if sim.poll() is None:
                sim.send_signal(signal.SIGTERM)
        for sim, _ in sims:
            try:
                sim.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sim.kill()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        server_log.close()
    history_files = list((workdir / "history").glob("*.json"))
    history = load_history(history_files[0]) if history_files else {"rounds": []}  # summary + rounds' detail
    started = min((o["started_at"] for o in outputs if o), default=0.0)
    connected = [t for o in outputs for t in o.get("connected_at", [])]
    rounds = history["rounds"]
    delivery = []
    for record in rounds:
        got = [t for o in outputs for t in o.get("start_round_at", {}).get(str(record["round"]), [])]
        if got:
            delivery.append(max(got) - epoch(record["started_at"]))
    cpu = [sampler.cpu_at(epoch(r["ended_at"])) - sampler.cpu_at(epoch(r["started_at"])) for r in rounds]
    return {
        "nodes": count,
        "connected": len(connected),
        "connect_all_s": max(connected) - started if connected and len(connected) == count else float("nan"),
        "round_s": statistics.median(r["timings_s"]["total"] for r in rounds) if rounds else float("nan"),
        "last_start_round_s": statistics.median(delivery) if delivery else float("nan"),
        "cpu_s_per_round": statistics.median(cpu) if cpu else float("nan"),
        "peak_rss_mb": sampler.peak_rss_bytes / 2**20,
        "all_accepted": bool(rounds) and len(rounds) == args.rounds and all(
            len(r["accepted"]) == count for r in rounds),
        "busy_refusals": sum(o.get("busy_refusals", 0) for o in outputs),
        "reconnects": sum(o.get("reconnects", 0) for o in outputs),
        "disconnects": sum(o.get("disconnects", 0) for o in outputs),
        "status": history.get("status"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-process", type=int, default=250, help="light nodes per fl-sim process")
    parser.add_argument("--round-timeout", type=int, default=180,
                        help="also how long the server waits for the nodes' statistics at start-up")
    parser.add_argument("--connect-concurrency", type=int, default=256,
                        help="nodes connecting at once over all fl-sim processes (they share the server's 2 cores)")
    parser.add_argument("--max-seconds", type=int, default=1800, help="each fl-sim process's time limit")
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's logs and history under here")
    args = parser.parse_args()
    print(f"one coordinator, --model logreg on digits, {args.rounds} rounds, {args.per_process} light nodes per "
          f"process, {os.cpu_count()} cores shared by server, nodes and broker", flush=True)
    print("| nodes | connected | connect all | round (median) | last start_round after | server CPU s/round "
          "| server peak RSS | every update accepted | server_busy refusals | disconnects |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for count in args.nodes:
        if args.keep is not None:
            workdir = args.keep / f"scale-{count}"
            workdir.mkdir(parents=True, exist_ok=True)
            result = run_scale(count, args, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{count}-") as tmp:
                result = run_scale(count, args, Path(tmp))
        print(f"| {count:,} | {result['connected']:,} | {result['connect_all_s']:.1f} s | {result['round_s']:.2f} s "
              f"| {result['last_start_round_s']:.2f} s | {result['cpu_s_per_round']:.2f} | "
              f"{result['peak_rss_mb']:.0f} MB | {'yes' if result['all_accepted'] else 'no'} "
              f"| {result['busy_refusals']:,} | {result['disconnects']:,} |", flush=True)


if __name__ == "__main__":
    main()
