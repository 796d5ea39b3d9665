"""Real processes, real broker: helpers to run fl-server and fl-node on loopback and read what they wrote."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import socketio
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common.transport.kafka_io import fetch_weights, make_consumer
from common.wire.assembly import WeightAssembler
from common.wire.integrity import KeyRegistry, check_headers_match, connect_proof, signed_headers
from common.wire.protocol import (
    KIND_UPDATE,
    Hello,
    ProtocolError,
    RawRecord,
    StartRound,
    UpdateAck,
    decode_chunk,
    encode_chunk,
    split_weights,
)
from fl_server.history import load_history
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

    def wait_for_log(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
        """Wait for ``pattern`` in the log (only in what was written past character ``after``)."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.popen.poll() is not None and not regex.search(self.log(), after):
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before logging {pattern!r}:\n"
                                     f"{self.log()[-3000:]}")
            return regex.search(self.log(), after)

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


def expect_clean_exit(server: Proc, nodes: list[Proc], *, server_timeout_s: float,
                      node_timeout_s: float = 60) -> None:
    """The server, then every node, exits 0 within its timeout; a failure shows the tail of that process's log."""
    assert server.wait(server_timeout_s) == 0, server.log()[-3000:]
    for node in nodes:
        assert node.wait(node_timeout_s) == 0, node.log()[-3000:]


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
        # The repository on the path, so a server can load a strategy from tests/plugins as users load theirs.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.update(PYTHONUNBUFFERED="1", FL_TF_THREADS="1", FL_KAFKA=self.kafka, FL_UPDATES_TOPIC=self.updates_topic,
                   FL_MODELS_TOPIC=self.models_topic, TF_CPP_MIN_LOG_LEVEL="3")
        return env

    def _start(self, name: str, module: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, [sys.executable, "-m", module, *args], self.tmp_path / f"{name}.log",
                    {**self.env(), **(env or {})}, self.tmp_path)
        self.procs.append(proc)
        return proc

    def start_server(self, *args: str, name: str = "server") -> Proc:
        self.server = self._start(name, "fl_server", ["--port", str(self.port), "--history-dir",
                                                      str(self.history_dir), "--end-grace", "20",
                                                      "--node-keys", str(self.registry_path), *args])
        return self.server

    def start_node(self, node_id: str, *args: str, name: str | None = None, scheme: str = "http",
                   env: dict[str, str] | None = None) -> Proc:
        key = self.keys_dir / f"{node_id}.key"
        key_args = ["--key-file", str(key)] if key.exists() else []
        return self._start(name or node_id, "fl_node", ["--server", f"{scheme}://127.0.0.1:{self.port}", "--node-id",
                                                        node_id, "--out-dir", str(self.tmp_path / "models"),
                                                        *key_args, *args], env)

    def start_nodes(self, count: int, *args: str) -> list[Proc]:
        """Nodes n0..n<count-1>, node i training on partition i/count of the built-in data."""
        return [self.start_node(f"n{i}", "--partition", f"{i}/{count}", *args) for i in range(count)]

    def history(self) -> dict[str, Any] | None:
        files = sorted(self.history_dir.glob("*.json")) if self.history_dir.exists() else []
        if not files:
            return None
        return load_history(files[0])  # the summary merged with its rounds' detail file

    def wait_for_rounds(self, count: int, timeout_s: float) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            history = self.history()
            return history if history and len(history["rounds"]) >= count else None

        return wait_until(ready, timeout_s, f"{count} round(s) in the history")

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def read_records(kafka: str, topic: str) -> list[RawRecord]:
    """Every record of ``topic`` as ``RawRecord`` (key, headers, value), partition by partition."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    out: list[RawRecord] = []
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(RawRecord(r.value, r.key, tuple(r.headers or ()), r.partition, r.offset) for r in records)
    consumer.close()
    return out


def read_weights(kafka: str, topic: str,
                 keys: KeyRegistry | None = None) -> dict[tuple[str, str, int], tuple[int, list[np.ndarray]]]:
    """Every complete set of weights in ``topic``: (kind, sender, round) -> (num_samples, arrays).

    With ``keys``, only update records whose signature verifies count (what a test injected does not)."""
    assemblers: dict[tuple[str, str, int], WeightAssembler] = {}
    for record in read_records(kafka, topic):
        try:
            chunk = decode_chunk(record.value)
            if keys is not None and chunk.kind == KIND_UPDATE:
                headers = record.header_map()
                keys.verify_record(record.key, headers, record.value or b"")
                check_headers_match(headers, chunk)
            assemblers.setdefault((chunk.kind, chunk.node_id, chunk.server_round), WeightAssembler()).add(chunk)
        except ProtocolError:
            continue
    return {key: (a.num_samples, a.result()) for key, a in assemblers.items() if a.complete}


class LocalBroker:
    """A broker of this test's own (scripts/kafka-local.sh on free ports, state under ``data_dir``) that a
    test may stop and start again; the state survives a restart like a real broker's disk does."""

    def __init__(self, data_dir: Path, *, sasl_plain_users: str | None = None) -> None:
        with socket.socket() as a, socket.socket() as b, socket.socket() as c:  # held together: three distinct
            for sock in (a, b, c):
                sock.bind(("127.0.0.1", 0))
            self.port, controller, sasl_port = (int(sock.getsockname()[1]) for sock in (a, b, c))
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_bootstrap = f"127.0.0.1:{sasl_port}"  # SASL_PLAINTEXT listener, with ``sasl_plain_users``
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(controller),
                    "KAFKA_DATA_DIR": str(data_dir), "KAFKA_REUSE_EXISTING": "0"}
        if sasl_plain_users:
            self.env.update(KAFKA_SASL_PORT=str(sasl_port), KAFKA_SASL_PLAIN_USERS=sasl_plain_users)

    def _script(self, command: str) -> None:
        subprocess.run([str(REPO / "scripts" / "kafka-local.sh"), command], env=self.env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def stop_quietly(self) -> None:
        """For clean-up: stop, whatever state the broker is in."""
        subprocess.run([str(REPO / "scripts" / "kafka-local.sh"), "stop"], env=self.env, check=False, timeout=120,
                       stdout=subprocess.DEVNULL)


class Mallory:
    """A participant that holds a real key but no model: a Socket.IO client in the test process.

    Each ``start_round`` it receives is queued; the test answers it with whatever records it likes
    (``publish``) and an acknowledgement (``ack``), from the test's own thread."""

    def __init__(self, federation: Federation, node_id: str = "mallory") -> None:
        self.federation = federation
        self.node_id = node_id
        self.key = federation.keys.key_of(node_id) or b""
        self.starts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended = False
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("start_round", self.starts.put)
        self.sio.on("fl_stats", lambda data=None: {"error": f"{node_id} shares no statistics"})
        self.sio.on("end_session", self._on_end)
        wait_until(lambda: port_open(federation.port), 120, "the server's Socket.IO port")
        self.sio.connect(f"http://127.0.0.1:{federation.port}", transports=["websocket"],
                         auth=Hello(node_id, 100, proof=fresh_proof(federation.port, self.key, node_id)).to_wire())
        self._producer = KafkaProducer(bootstrap_servers=federation.kafka)

    def _on_end(self, data: Any = None) -> None:
        self.ended = True

    def next_start(self, timeout_s: float) -> Any:
        return StartRound.from_wire(self.starts.get(timeout=timeout_s))

    def global_weights(self, start: Any) -> list[np.ndarray]:
        consumer = make_consumer(self.federation.kafka, "mallory")
        try:
            return fetch_weights(consumer, start.model.weights, session_id=start.session_id,
                                 server_round=start.server_round, timeout_s=60)
        finally:
            consumer.close()

    def update_records(self, start: Any, weights: list[np.ndarray], *, node_id: str | None = None,
                       key: bytes | None = None, server_round: int | None = None) -> list[Any]:
        """Signed records of an update (by default: this node's own, for ``start``'s round)."""
        node_id = node_id or self.node_id
        key = key or self.federation.keys.key_of(node_id) or self.key
        out = []
        for chunk in split_weights(weights, kind=KIND_UPDATE, session_id=start.session_id,
                                   server_round=server_round or start.server_round, node_id=node_id,
                                   num_samples=100):
            value = encode_chunk(chunk)
            out.append(RawRecord(value, node_id.encode(), tuple(signed_headers(key, chunk, value))))
        return out

    def publish(self, records: list[Any]) -> None:
        for record in records:
            self._producer.send(self.federation.updates_topic, key=record.key, value=record.value,
                                headers=list(record.headers))
        self._producer.flush(timeout=30)

    def ack(self, start: Any, num_records: int) -> Any:
        ack = UpdateAck(start.session_id, start.server_round, self.node_id, 100, max(num_records, 1), {}, {})
        return self.sio.call("fl_update", ack.to_wire(), timeout=30)

    def close(self) -> None:
        self._producer.close(timeout=10)
        if self.sio.connected:
            self.sio.disconnect()


def fresh_proof(port: int, key: bytes, node_id: str) -> dict[str, Any]:
    """A connect proof over a challenge from the server at ``port`` (GET /fl/challenge), as a node makes one."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/fl/challenge", timeout=30) as response:
        issued = json.loads(response.read())
    return connect_proof(key, node_id, challenge=issued["challenge"], server_id=issued["server_id"])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
