"""Round overhead with real processes: what a round costs beyond the nodes' own training.

For each model size (digits MLPs of about 19 KB, 0.6 MB and 6 MB), one session per code version is run,
interleaved, on the same machine and broker: a real ``fl-server`` and three real ``fl-node`` processes
with node keys, IID shares of digits, the same seed, holdout and Adam settings. Per round (rounds 2 to
R-1, the first one warms up) it takes from the history:

* **wall**: from this round's start to the next round's start (so evaluation and persistence count
  wherever they sit);
* **fit**: the slowest accepted node's training time as it reports it (timed around ``fit`` alone; in
  code that re-traces every round the tracing happens inside ``fit`` and counts here);
* **overhead share**: (wall - fit) / wall.

and prints the medians side by side, with the ratio of the versions' walls. ``--before DIR`` is another
checkout of this project (for example ``git worktree add /tmp/before <commit>``); its processes run
with ``--before-pure-python-crc`` as shipped before the ``crc32c`` extra (kafka-python's pure-Python
CRC-32C, by hiding the ``crc32c`` package from them). Needs a broker; nothing here is a test.

    .venv/bin/python bench/bench_round_overhead.py --kafka 127.0.0.1:9092 [--before /tmp/before] [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[1]
MODELS = {"19 KB": "mlp:64", "0.6 MB": "mlp:512,256", "6 MB": "mlp:1024,1024,512"}
NODES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_session(code: Path, model: str, args: argparse.Namespace, workdir: Path, pure_python_crc: bool) -> dict:
    """One session of ``code``'s server and nodes; returns its history."""
    keys_dir = workdir / "keys"
    create_keys(keys_dir / "registry.json", keys_dir, [f"n{i}" for i in range(NODES)])
    path = [str(code)]
    if pure_python_crc:  # kafka-python falls back to its pure-Python CRC-32C when crc32c cannot be imported
        shim = workdir / "no_crc32c"
        shim.mkdir()
        (shim / "crc32c.py").write_text("raise ImportError('hidden by bench_round_overhead')\n")
        path.insert(0, str(shim))
    suffix = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    env.update(PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", FL_TF_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               FL_KAFKA=args.kafka, FL_UPDATES_TOPIC=f"bench.updates.{suffix}",
               FL_MODELS_TOPIC=f"bench.models.{suffix}")
    port = free_port()
    history_dir = workdir / "history"
    common = [sys.executable, "-m"]
    server = subprocess.Popen(
        [*common, "fl_server", "--port", str(port), "--history-dir", str(history_dir), "--node-keys",
         str(keys_dir / "registry.json"), "--min-nodes", str(NODES), "--rounds", str(args.rounds), "--model", model,
         "--epochs", str(args.epochs), "--round-timeout", "300", "--end-grace", "20", "--seed", "7"],
        env=env, cwd=workdir, stdout=open(workdir / "server.log", "wb"), stderr=subprocess.STDOUT)
    nodes = [subprocess.Popen(
        [*common, "fl_node", "--server", f"http://127.0.0.1:{port}", "--node-id", f"n{i}", "--key-file",
         str(keys_dir / f"n{i}.key"), "--partition", f"{i}/{NODES}", "--out-dir", str(workdir / "models")],
        env=env, cwd=workdir, stdout=open(workdir / f"n{i}.log", "wb"), stderr=subprocess.STDOUT)
        for i in range(NODES)]
    try:
        if server.wait(timeout=1800) != 0:
            raise RuntimeError(f"server failed: {(workdir / 'server.log').read_text()[-2000:]}")
    finally:
        for proc in [server, *nodes]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    (history_file,) = history_dir.glob("*.json")
    return json.loads(history_file.read_text())


def round_figures(history: dict) -> tuple[float, float, float, float]:
    """Medians over rounds 2..R-1 of wall, slowest fit and overhead share; and the last holdout accuracy."""
    rounds = history["rounds"]
    starts = [datetime.fromisoformat(r["started_at"]).timestamp() for r in rounds]
    walls, fits = [], []
    for index in range(1, len(rounds) - 1):
        walls.append(starts[index + 1] - starts[index])
        fits.append(rounds[index]["timings_s"]["train"])
    shares = [(w - f) / w for w, f in zip(walls, fits, strict=True)]
    return (statistics.median(walls), statistics.median(fits), statistics.median(shares),
            rounds[-1]["holdout"].get("accuracy", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--before-pure-python-crc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS), help=f"which of {', '.join(MODELS)}")
    args = parser.parse_args()
    versions = [("after", REPO, False)]
    if args.before is not None:
        versions.insert(0, ("before", args.before.resolve(), args.before_pure_python_crc))
    print(f"{NODES} nodes, digits IID, {args.rounds} rounds of {args.epochs} epoch(s); "
          f"medians over rounds 2..{args.rounds - 1}")
    print(f"{'model':8s} {'version':8s} {'wall s':>8s} {'fit s':>8s} {'overhead':>9s} {'accuracy':>9s}")
    for size in args.models.split(","):
        walls = {}
        for name, code, pure_crc in versions:
            with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
                started = time.perf_counter()
                history = run_session(code, MODELS[size], args, Path(tmp), pure_crc)
                wall, fit, share, accuracy = round_figures(history)
            walls[name] = wall
            print(f"{size:8s} {name:8s} {wall:8.2f} {fit:8.2f} {share:9.0%} {accuracy:9.3f}"
                  f"   (session {time.perf_counter() - started:.0f}s)", flush=True)
        if "before" in walls:
            print(f"{size:8s} round wall: before / after = {walls['before'] / walls['after']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
