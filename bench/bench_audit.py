"""Audit time against session time: a real signed session, then ``fl-audit`` on it as a process of its own.

Two sessions by default, each with a real ``fl-server`` (``--server-key``) and two real ``fl-node`` processes
(node keys, the server's public key, IID shares of digits): a 20-round session of the default small MLP and a
3-round session of a 6 MB MLP (``mlp:1024,1024,512``, as in bench_round_overhead.py). For each it prints the
session's wall time (history ``started_at`` to ``finished_at``), the audit's wall time, their ratio, what the
audit read from Kafka, and what the audit printed. ``--tamper`` then adds a forged copy of a round-2 model
record to the models topic, edits round 1's accuracy in a copy of the history, and prints that audit too.
Needs a broker; nothing here is a test.

    .venv/bin/python bench/bench_audit.py --kafka 127.0.0.1:9092 [--only small|6mb] [--tamper]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common.wire.server_key import ServerSigner
from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[1]
SESSIONS = {"small": ("mlp", 20), "6mb": ("mlp:1024,1024,512", 3)}  # name -> (model, rounds)
NODES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_session(model: str, rounds: int, kafka: str, workdir: Path) -> tuple[Path, dict[str, str]]:
    """One signed session; returns its history file and the environment (topics) it ran with."""
    keys_dir = workdir / "keys"
    create_keys(keys_dir / "registry.json", keys_dir, [f"n{i}" for i in range(NODES)])
    ServerSigner.generate().save(keys_dir / "server.key", keys_dir / "server.pub")
    suffix = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", FL_TF_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               FL_KAFKA=kafka, FL_UPDATES_TOPIC=f"bench.updates.{suffix}", FL_MODELS_TOPIC=f"bench.models.{suffix}")
    port, history_dir = free_port(), workdir / "history"
    server = subprocess.Popen(
        [sys.executable, "-m", "fl_server", "--port", str(port), "--history-dir", str(history_dir), "--node-keys",
         str(keys_dir / "registry.json"), "--server-key", str(keys_dir / "server.key"), "--min-nodes", str(NODES),
         "--rounds", str(rounds), "--model", model, "--round-timeout", "300", "--end-grace", "20", "--seed", "7"],
        env=env, cwd=workdir, stdout=open(workdir / "server.log", "wb"), stderr=subprocess.STDOUT)
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "fl_node", "--server", f"http://127.0.0.1:{port}", "--node-id", f"n{i}",
         "--key-file", str(keys_dir / f"n{i}.key"), "--server-public-key", str(keys_dir / "server.pub"),
         "--partition", f"{i}/{NODES}", "--out-dir", str(workdir / "models")],
        env=env, cwd=workdir, stdout=open(workdir / f"n{i}.log", "wb"), stderr=subprocess.STDOUT)
        for i in range(NODES)]
    try:
        if server.wait(timeout=3600) != 0:
            raise RuntimeError(f"server failed: {(workdir / 'server.log').read_text()[-2000:]}")
        for node in nodes:
            node.wait(timeout=120)
    finally:
        for proc in (server, *nodes):
            if proc.poll() is None:
                proc.kill()
    return next(history_dir.glob("*.json")), env


def audit(history_file: Path, workdir: Path, env: dict[str, str], kafka: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fl_server.audit_cli", str(history_file), "--kafka", kafka,
         "--node-keys", str(workdir / "keys" / "registry.json"), "--server-key",
         str(workdir / "keys" / "server.pub"), "--log-level", "WARNING"],
        env=env, cwd=workdir, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, (done.stdout + done.stderr[-2000:]).rstrip(), done.returncode


def tamper(history_file: Path, env: dict[str, str], kafka: str) -> Path:
    """A forged copy of a round-2 model record at the next offset, and a copy of the history with an edit."""
    topic = env["FL_MODELS_TOPIC"]
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    genuine = None
    while genuine is None:
        for batch in consumer.poll(timeout_ms=1000).values():
            genuine = genuine or next((r for r in batch if dict(r.headers).get("fl.round") == b"2"), None)
    consumer.close()
    producer = KafkaProducer(bootstrap_servers=kafka)
    producer.send(topic, key=genuine.key, value=genuine.value.replace(b'"data":"', b'"data":"AAAA', 1),
                  headers=list(genuine.headers), partition=0).get(timeout=30)
    producer.close()
    edited_dir = history_file.parent.parent / "edited"
    edited_dir.mkdir()
    document = json.loads(history_file.read_text())
    document["rounds"][0]["holdout"]["accuracy"] = 0.999
    (edited_dir / history_file.name).write_text(json.dumps(document))
    return edited_dir / history_file.name


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--only", choices=sorted(SESSIONS), default=None)
    parser.add_argument("--tamper", action="store_true", help="then audit a tampered copy too")
    args = parser.parse_args()
    for name, (model, rounds) in SESSIONS.items():
        if args.only not in (None, name):
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-audit-{name}-") as tmp:
            workdir = Path(tmp)
            history_file, env = run_session(model, rounds, args.kafka, workdir)
            history = json.loads(history_file.read_text())
            session_s = seconds_between(history["started_at"], history["finished_at"])
            audit_s, printed, code = audit(history_file, workdir, env, args.kafka)
            params = history["config"].get("num_parameters", 0)
            print(f"== {name}: {model}, {rounds} rounds, {NODES} nodes, {params} parameters "
                  f"({params * 4 / 1e6:.2f} MB float32)")
            print(f"session {session_s:.1f} s, audit {audit_s:.1f} s (process, TensorFlow-free), "
                  f"audit/session {audit_s / session_s:.2f}; audit exit {code}")
            print(printed + "\n")
            if args.tamper:
                _, printed, code = audit(tamper(history_file, env, args.kafka), workdir, env, args.kafka)
                print(f"-- tampered (a forged round-2 model record, round 1's accuracy edited): exit {code}")
                print(printed + "\n")


if __name__ == "__main__":
    main()
