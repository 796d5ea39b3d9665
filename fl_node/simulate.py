"""Light nodes: many nodes in one process that speak the real protocol without TensorFlow (``fl-sim``).

Each node is a real ``socketio.AsyncClient`` connection with its own key (a fresh challenge and connect proof at
every attempt), takes ``fl_model_spec`` and ``start_round`` as a node does, reads the global model from Kafka,
"trains" with numpy, publishes its update as signed records on the updates topic and acknowledges it with
``fl_update``. What the nodes of one process share is what does not change the protocol: one Kafka producer
(records are still signed with each node's key), one model fetch per round, the data prepared once. Training
is softmax regression by gradient descent when the model is ``--model logreg`` (a kernel and a bias), otherwise
small noise added to the weights: the figures measure the server and the protocol, not Keras.

For load-testing a deployment (``bench/bench_scale.py`` drives it): ``fl-sim --server URL --nodes 1000
--keys-dir keys/``. It prints one JSON line of what it saw (connect times, rounds, acknowledgements) at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import socketio

from common.data.dataspec import DataSpec
from common.data.tabular import SchemaError
from common.transport import kafka_io
from common.wire.errors import ProtocolError
from common.wire.integrity import connect_proof, signed_headers
from common.wire.protocol import (
    KIND_UPDATE,
    EndSession,
    Hello,
    ModelRef,
    StartRound,
    UpdateAck,
    WeightChunk,
    split_weights,
)
from common.wire.safe_json import SocketIOJson
from fl_node.connection import (
    FIRST_BACKOFF_S,
    MODEL_SPEC_EVENT,
    ModelSpecCache,
    backoff_pause_s,
    describe_refusal,
    fetch_challenge,
    retry_after_of,
)
from fl_node.data import LocalData

logger = logging.getLogger(__name__)
PUBLISH_THREADS = 4  # kafka-python's producer is thread-safe: a few threads let sends batch together


# ---------------------------------------------------------------- the "training" (pure numpy)


def softmax_regression(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int,
                       learning_rate: float) -> tuple[list[np.ndarray], float]:
    """Full-batch gradient descent on the cross-entropy of ``softmax(x @ kernel + bias)``; the new weights and the
    loss before the last step. ``weights`` = ``[kernel (d, k), bias (k,)]``."""
    kernel, bias = (np.array(w, dtype=np.float64) for w in weights)
    onehot = np.eye(kernel.shape[1])[y.astype(int)]
    loss = 0.0
    for _ in range(max(epochs, 1)):
        logits = x @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(np.maximum((probabilities * onehot).sum(axis=1), 1e-12))))
        gradient = (probabilities - onehot) / len(y)
        kernel -= learning_rate * (x.T @ gradient)
        bias -= learning_rate * gradient.sum(axis=0)
    return [kernel.astype(weights[0].dtype), bias.astype(weights[1].dtype)], loss


def light_train(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int, learning_rate: float,
                rng: np.random.Generator) -> tuple[list[np.ndarray], float | None]:
    """Softmax regression for a logreg model (a kernel that fits ``x`` and a bias); noise for any other model."""
    if (len(weights) == 2 and weights[0].ndim == 2 and weights[1].ndim == 1 and len(y) and x.ndim == 2
            and weights[0].shape == (x.shape[1], weights[1].shape[0]) and weights[1].shape[0] > 1
            and np.all((y >= 0) & (y < weights[1].shape[0]) & (y == np.round(y)))):  # classes, softmax
        return softmax_regression(weights, x, y, epochs=epochs, learning_rate=learning_rate)
    return [w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in weights], None


# ---------------------------------------------------------------- what the nodes of a process share


@dataclass
class SimStats:
    """What the process saw, printed as one JSON line at the end."""

    started_at: float = field(default_factory=time.time)
    connected_at: dict[str, float] = field(default_factory=dict)  # node -> epoch seconds of its first connect
    start_round_at: dict[int, list[float]] = field(default_factory=dict)  # round -> when each node got it
    acks: dict[str, int] = field(default_factory=dict)  # accepted, refused:<reason>, unconfirmed
    busy_refusals: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    ended: int = 0

    def count_disconnect(self) -> None:
        self.disconnects += 1

    def count(self, what: str) -> None:
        self.acks[what] = self.acks.get(what, 0) + 1

    def to_wire(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "connected_at": sorted(self.connected_at.values()),
                "start_round_at": {str(r): sorted(ts) for r, ts in self.start_round_at.items()},
                "acks": self.acks, "busy_refusals": self.busy_refusals, "disconnects": self.disconnects,
                "connect_failures": self.connect_failures,
                "reconnects": self.reconnects, "ended": self.ended}


class SharedPlane:
    """One Kafka producer and one model fetch per round for all the nodes of the process, and the data."""

    def __init__(self, *, kafka: str, updates_topic: str, frame: Any, target: str, client_config: dict[str, Any],
                 fetch_timeout_s: float = 120.0, connect_concurrency: int = 200) -> None:
        self.connect_gate = asyncio.Semaphore(connect_concurrency)  # nodes of this process connecting at once
        self.kafka, self.updates_topic, self.client_config = kafka, updates_topic, client_config
        self.fetch_timeout_s = fetch_timeout_s
        self.data = LocalData(frame=frame, target=target)
        self.specs = ModelSpecCache()
        self._prepared: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # spec digest -> x, y of every row
        self._statistics: dict[tuple[int, str], dict[str, Any]] = {}  # (shard, request) -> its statistics
        self._models: dict[tuple[str, int], asyncio.Future[list[np.ndarray]]] = {}
        self._fetch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-sim-fetch")
        self._publish_threads = ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="fl-sim-publish")
        self._producer: Any = None
        self._consumer: Any = None

    def prepared(self, digest: str, data_spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Every row encoded with the session's data spec (once per spec, not once per node)."""
        if digest not in self._prepared:
            x, y = self.data.prepare(DataSpec.from_wire(data_spec))
            self._prepared = {digest: (np.asarray(x, np.float64).reshape(len(y), -1), np.asarray(y))}
        return self._prepared[digest]

    def statistics(self, shard: int, rows: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
        """``fl_stats`` of one shard of the rows (computed once per shard: nodes of a shard hold the same rows)."""
        key = (shard, json.dumps(request, sort_keys=True))
        if key not in self._statistics:
            frame = self.data.frame
            assert frame is not None
            local = LocalData(frame=frame.iloc[rows].reset_index(drop=True), target=self.data.target)
            try:
                self._statistics[key] = local.statistics(
                    request["target"], list(request.get("categorical") or []),
                    min_category_count=request.get("min_category_count"), exclude=list(request.get("exclude") or []))
            except SchemaError as exc:
                self._statistics[key] = {"error": str(exc)}
        return self._statistics[key]

    async def model(self, ref: ModelRef, session_id: str, server_round: int) -> list[np.ndarray]:
        """The round's global model, fetched once for every node of the process."""
        key = (session_id, server_round)
        if key not in self._models:
            self._models = {k: v for k, v in self._models.items() if k[1] >= server_round - 1}  # bounded
            self._models[key] = asyncio.get_running_loop().run_in_executor(
                self._fetch_thread, partial(self._fetch, ref, session_id, server_round))
        return await asyncio.shield(self._models[key])

    def _fetch(self, ref: ModelRef, session_id: str, server_round: int) -> list[np.ndarray]:
        if self._consumer is None:
            self._consumer = kafka_io.make_consumer(self.kafka, "fl-sim", self.client_config)
        return kafka_io.fetch_weights(self._consumer, ref, session_id=session_id, server_round=server_round,
                                      timeout_s=self.fetch_timeout_s)

    async def publish(self, chunks: list[WeightChunk], key: bytes | None) -> None:
        await asyncio.get_running_loop().run_in_executor(self._publish_threads, self._publish, chunks, key)

    def _publish(self, chunks: list[WeightChunk], key: bytes | None) -> None:
        if self._producer is None:
            self._producer = kafka_io.make_producer(self.kafka, "fl-sim", self.client_config)
        kafka_io.publish_chunks(self._producer, self.updates_topic, chunks,
                                sign=partial(signed_headers, key) if key is not None else None)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
        if self._consumer is not None:
            self._consumer.close()
        self._fetch_thread.shutdown(wait=False, cancel_futures=True)
        self._publish_threads.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- one light node


class LightNode:
    """One node: its own Socket.IO connection, key, rows and acknowledgements; the rest from ``SharedPlane``."""

    def __init__(self, node_id: str, key: bytes | None, rows: np.ndarray, *, shard: int, server_url: str,
                 plane: SharedPlane,
                 stats: SimStats, done: asyncio.Event, chunk_bytes: int = 512 * 1024,
                 ack_timeout_s: float = 120.0, seed: int = 0) -> None:
        self.node_id, self.key, self.rows, self.shard = node_id, key, rows, shard
        self.server_url, self.plane, self.stats, self.chunk_bytes = server_url, plane, stats, chunk_bytes
        self.ack_timeout_s = ack_timeout_s
        self.instance = secrets.token_hex(8)
        self.retry_after_s: float | None = None
        self.finished = False
        self._done = done
        self._rng = np.random.default_rng(seed)
        self._rounds: set[tuple[str, int]] = set()
        self._unconfirmed: dict[tuple[str, int], UpdateAck] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Reconnection is ours, not the client library's: it goes through the process's connect gate and the
        # jittered backoff, so that a wave of dropped nodes does not come back all at once.
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, json=SocketIOJson)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("start_round", self._on_start_round)
        self.sio.on(MODEL_SPEC_EVENT, self.plane.specs.remember)
        self.sio.on("end_session", self._on_end_session)
        self.sio.on("fl_ping", self._on_ping)
        self.sio.on("fl_stats", self._on_stats)

    async def _hello(self) -> dict[str, Any]:
        proof = None
        if self.key is not None:
            challenge = await fetch_challenge(self.server_url, None, timeout_s=30.0)
            if challenge is not None:
                proof = connect_proof(self.key, self.node_id, challenge=challenge["challenge"],
                                      server_id=challenge["server_id"])
        return Hello(self.node_id, max(len(self.rows), 1), proof=proof, instance=self.instance).to_wire()

    async def connect(self) -> None:
        """Connect, backing off with jitter (and as long as a ``server_busy`` asks) until the server lets us in;
        at most ``plane.connect_gate`` nodes of the process are connecting at once."""
        async with self.plane.connect_gate:
            await self._connect()

    async def _connect(self) -> None:
        delay = FIRST_BACKOFF_S
        while not self.finished:
            self.retry_after_s = None
            try:
                await self.sio.connect(self.server_url, auth=self._hello, transports=["websocket"], wait_timeout=30)
                return
            except socketio.exceptions.ConnectionError:
                self.stats.connect_failures += 1
            pause, delay = backoff_pause_s(delay, self.retry_after_s)
            await asyncio.sleep(pause)  # the backoff itself

    async def _on_connect(self) -> None:
        if self.node_id in self.stats.connected_at:
            self.stats.reconnects += 1
        else:
            self.stats.connected_at[self.node_id] = time.time()

    async def _on_disconnect(self, reason: Any = None) -> None:
        if not self.finished:
            self.stats.count_disconnect()
            self._spawn(self.connect())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connect_error(self, data: Any = None) -> None:
        refusal = describe_refusal(data, now=time.time())
        if refusal is not None and refusal[0] == "server_busy":
            self.stats.busy_refusals += 1
            self.retry_after_s = retry_after_of(data)
        elif refusal is not None:
            logger.warning("node %s refused: %s", self.node_id, refusal[1])

    async def _on_ping(self, data: Any = None) -> dict[str, Any]:
        return {"alive": True}

    async def _on_stats(self, data: Any = None) -> dict[str, Any]:
        if not (isinstance(data, dict) and isinstance(data.get("target"), str)
                and all(isinstance(data.get(k) or [], list) for k in ("categorical", "exclude"))):
            return {"error": "fl_stats needs a target column name"}
        return self.plane.statistics(self.shard, self.rows, data)

    async def _on_start_round(self, data: Any = None) -> None:
        try:
            start = StartRound.from_wire(data)
        except ProtocolError as exc:
            logger.error("node %s ignored a malformed start_round: %s", self.node_id, exc)
            return
        self.stats.start_round_at.setdefault(start.server_round, []).append(time.time())
        key = (start.session_id, start.server_round)
        if key in self._unconfirmed:  # asked again after a reconnect: the update is in Kafka, the ack was lost
            self._spawn(self._acknowledge(self._unconfirmed[key]))
        if key in self._rounds:
            return
        self._rounds.add((start.session_id, start.server_round))
        self._spawn(self._round(start))

    async def _round(self, start: StartRound) -> None:
        try:
            start = replace(start, model=await self.plane.specs.complete(start.model, self.sio, self.ack_timeout_s))
            t0 = time.perf_counter()
            weights = await self.plane.model(start.model.weights, start.session_id, start.server_round)
            fetch_s = time.perf_counter() - t0
            x, y = self.plane.prepared(start.model.spec_sha256, start.model.data)
            trained, loss = light_train(weights, x[self.rows], y[self.rows], epochs=start.config.epochs,
                                        learning_rate=start.config.learning_rate, rng=self._rng)
            num_samples = max(len(self.rows), 1)
            chunks = list(split_weights(trained, kind=KIND_UPDATE, session_id=start.session_id,
                                        server_round=start.server_round, node_id=self.node_id,
                                        num_samples=num_samples, chunk_bytes=self.chunk_bytes))
            t1 = time.perf_counter()
            await self.plane.publish(chunks, self.key)
            ack = UpdateAck(start.session_id, start.server_round, self.node_id, num_samples, len(chunks),
                            {"loss": loss} if loss is not None else {},
                            {"fetch": round(fetch_s, 4), "train": 0.0, "publish": round(time.perf_counter() - t1, 4)})
        except (ProtocolError, socketio.exceptions.SocketIOError, TimeoutError, OSError, ValueError) as exc:
            logger.warning("node %s round %d failed: %r", self.node_id, start.server_round, exc)
            self.stats.count("failed")
            self._rounds.discard((start.session_id, start.server_round))  # a resent start_round tries again
            return
        self._unconfirmed = {(ack.session_id, ack.server_round): ack}  # the last round's, until confirmed
        await self._acknowledge(ack)

    async def _acknowledge(self, ack: UpdateAck) -> None:
        try:
            reply = await self.sio.call("fl_update", ack.to_wire(), timeout=self.ack_timeout_s)
        except (socketio.exceptions.SocketIOError, TimeoutError) as exc:
            logger.warning("node %s: acknowledgement of round %d not confirmed (%r)", self.node_id, ack.server_round,
                           exc)
            self.stats.count("unconfirmed")
            return
        self._unconfirmed.pop((ack.session_id, ack.server_round), None)
        if isinstance(reply, dict) and reply.get("accepted") is True:
            self.stats.count("accepted")
        else:
            self.stats.count(f"refused:{reply.get('reason') if isinstance(reply, dict) else '?'}")

    async def _on_end_session(self, data: Any = None) -> None:
        try:
            EndSession.from_wire(data)
        except ProtocolError as exc:
            logger.error("node %s ignored a malformed end_session: %s", self.node_id, exc)
            return
        if not self.finished:
            self.finished = True
            self.stats.ended += 1
            self._done.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.sio.connected:
            await self.sio.disconnect()
        http = getattr(self.sio.eio, "http", None)  # engine.io keeps the session it made after a failed connect
        if http is not None and not getattr(self.sio.eio, "external_http", False) and not http.closed:
            await http.close()


async def run_light_nodes(nodes: list[LightNode], *, max_seconds: float) -> None:
    """Connect every node (through the plane's connect gate) and serve until each one got ``end_session`` or
    ``max_seconds`` pass."""
    connecting = [asyncio.create_task(node.connect()) for node in nodes]
    deadline = time.monotonic() + max_seconds
    try:
        while not all(node.finished for node in nodes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning("fl-sim: %d of %d node(s) finished within %.0fs", sum(n.finished for n in nodes),
                               len(nodes), max_seconds)
                break
            done = nodes[0]._done
            done.clear()
            try:
                await asyncio.wait_for(done.wait(), min(remaining, 5.0))
            except TimeoutError:
                pass
    finally:
        for task in connecting:
            task.cancel()
        await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)
