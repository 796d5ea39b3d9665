"""Real processes, real broker: helpers to run fl-server and fl-node on loopback and read what they wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common.assembly import WeightAssembler
from common.integrity import KeyRegistry, check_headers_match
from common.protocol import KIND_UPDATE, ProtocolError, RawRecord, decode_chunk
from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """A child process whose combined output goes to a log file we can search."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.popen.poll() is not None and not regex.search(self.log()):
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before logging {pattern!r}:\n"
                                     f"{self.log()[-3000:]}")
            return regex.search(self.log())

        return wait_until(found, timeout_s, f"{self.name} to log {pattern!r}")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout_s:.0f}s:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


# Node ids that get keys in every test federation (the server loads its registry once, at start).
KEYED_NODES = [*(f"n{i}" for i in range(10)), "site0", "site1", "site2", "misfit", "mallory"]


class Federation:
    """One test's server, nodes, topics and folders. Nodes authenticate with keys made by ``fl-keys``."""

    def __init__(self, tmp_path: Path, kafka: str) -> None:
        self.tmp_path = tmp_path
        self.kafka = kafka
        self.keys_dir = tmp_path / "keys"
        self.registry_path = self.keys_dir / "registry.json"
        create_keys(self.registry_path, self.keys_dir, KEYED_NODES)
        self.keys = KeyRegistry.load(self.registry_path)
        suffix = uuid.uuid4().hex[:10]
        self.updates_topic = f"test.updates.{suffix}"
        self.models_topic = f"test.models.{suffix}"
        self.port = free_port()
        self.history_dir = tmp_path / "history"
        self.procs: list[Proc] = []
        self.server: Proc | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
        env.update(PYTHONUNBUFFERED="1", FL_TF_THREADS="1", FL_KAFKA=self.kafka, FL_UPDATES_TOPIC=self.updates_topic,
                   FL_MODELS_TOPIC=self.models_topic, TF_CPP_MIN_LOG_LEVEL="3")
        return env

    def _start(self, name: str, module: str, args: list[str]) -> Proc:
        proc = Proc(name, [sys.executable, "-m", module, *args], self.tmp_path / f"{name}.log", self.env(),
                    self.tmp_path)
        self.procs.append(proc)
        return proc

    def start_server(self, *args: str, name: str = "server") -> Proc:
        self.server = self._start(name, "fl_server", ["--port", str(self.port), "--history-dir",
                                                      str(self.history_dir), "--end-grace", "20",
                                                      "--node-keys", str(self.registry_path), *args])
        return self.server

    def start_node(self, node_id: str, *args: str, name: str | None = None) -> Proc:
        key = self.keys_dir / f"{node_id}.key"
        key_args = ["--key-file", str(key)] if key.exists() else []
        return self._start(name or node_id, "fl_node", ["--server", f"http://127.0.0.1:{self.port}", "--node-id",
                                                        node_id, "--out-dir", str(self.tmp_path / "models"),
                                                        *key_args, *args])

    def history(self) -> dict[str, Any] | None:
        files = sorted(self.history_dir.glob("*.json")) if self.history_dir.exists() else []
        if not files:
            return None
        return json.loads(files[0].read_text())

    def wait_for_rounds(self, count: int, timeout_s: float) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            history = self.history()
            return history if history and len(history["rounds"]) >= count else None

        return wait_until(ready, timeout_s, f"{count} round(s) in the history")

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()

    def produce_raw(self, values: list[bytes], key: bytes = b"attacker") -> None:
        producer = KafkaProducer(bootstrap_servers=self.kafka)
        for value in values:
            producer.send(self.updates_topic, key=key, value=value)
        producer.flush(timeout=30)
        producer.close()


def read_weights(kafka: str, topic: str,
                 keys: KeyRegistry | None = None) -> dict[tuple[str, str, int], tuple[int, list[np.ndarray]]]:
    """Every complete set of weights in ``topic``: (kind, sender, round) -> (num_samples, arrays).

    With ``keys``, only update records whose signature verifies count (what a test injected does not)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    assemblers: dict[tuple[str, str, int], WeightAssembler] = {}
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                try:
                    chunk = decode_chunk(record.value)
                    if keys is not None and chunk.kind == KIND_UPDATE:
                        headers = RawRecord(record.value, record.key, tuple(record.headers or ())).header_map()
                        keys.verify_record(record.key, headers, record.value)
                        check_headers_match(headers, chunk)
                except ProtocolError:
                    continue
                key = (chunk.kind, chunk.node_id, chunk.server_round)
                try:
                    assemblers.setdefault(key, WeightAssembler()).add(chunk)
                except ProtocolError:
                    continue
    consumer.close()
    return {key: (a.num_samples, a.result()) for key, a in assemblers.items() if a.complete}
