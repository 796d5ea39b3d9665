"""The server process: Socket.IO control plane (aiohttp), Kafka data plane, and the coordinator.

Handlers here validate and hand over; they hold no training logic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import socketio
from aiohttp import web

from common import kafka_io
from common.protocol import (
    KIND_MODEL,
    SERVER_SENDER_ID,
    Hello,
    ModelRef,
    NodeRefusal,
    ProtocolError,
    UpdateAck,
    split_weights,
)
from fl_server.coordinator import Coordinator
from fl_server.registry import NodeInfo, NodeRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    host: str
    port: int
    kafka: str
    updates_topic: str
    models_topic: str
    update_partitions: int = 3
    chunk_bytes: int = 512 * 1024


class SocketIOFrontend:
    """Socket.IO event handlers: connect (hello), disconnect, fl_update; anything else is logged and dropped."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry
        self.coordinator: Coordinator | None = None
        self.refused: int = 0
        self.refusals: dict[str, str] = {}
        self.sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("fl_update", self.on_update)
        self.sio.on("fl_refuse", self.on_refuse)
        self.sio.on("*", self.on_unknown)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            hello = Hello.from_wire(auth)
        except ProtocolError as exc:
            self.refused += 1
            logger.warning("refused connection %s: %s", sid, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        previous = await self.registry.add(NodeInfo(hello.node_id, sid, hello.num_samples))
        if previous is not None:
            logger.info("node %s reconnected (replacing connection %s)", hello.node_id, previous.sid)
            await self.sio.disconnect(previous.sid)
        logger.info("node %s connected with %d samples (%d connected)", hello.node_id, hello.num_samples,
                    len(self.registry))
        if self.coordinator is not None:
            pending = self.coordinator.pending_start(hello.node_id)
            if pending is not None:
                # A participant that lost its connection mid-round gets the round again.
                self.sio.start_background_task(self.emit, "start_round", pending.to_wire(), sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        info = await self.registry.remove_sid(sid)
        if info is not None:
            logger.info("node %s disconnected (%s); %d connected", info.node_id, reason, len(self.registry))

    async def on_update(self, sid: str, data: Any = None) -> dict[str, Any]:
        node_id = self.registry.node_for_sid(sid)
        if node_id is None:
            return {"accepted": False, "reason": "not_registered"}
        try:
            ack = UpdateAck.from_wire(data)
        except ProtocolError as exc:
            logger.warning("bad fl_update from %s: %s", node_id, exc)
            return {"accepted": False, "reason": exc.reason}
        if ack.node_id != node_id:
            logger.warning("fl_update from %s names node %s; dropped", node_id, ack.node_id)
            return {"accepted": False, "reason": "node_mismatch"}
        if self.coordinator is None:
            return {"accepted": False, "reason": "no_session"}
        self.coordinator.on_ack(ack)
        return {"accepted": True}

    async def on_refuse(self, sid: str, data: Any = None) -> dict[str, Any]:
        node_id = self.registry.node_for_sid(sid)
        try:
            refusal = NodeRefusal.from_wire(data)
        except ProtocolError as exc:
            logger.warning("bad fl_refuse from %s: %s", node_id or sid, exc)
            return {"received": False}
        if node_id is None or refusal.node_id != node_id:
            logger.warning("fl_refuse from %s names node %s; dropped", node_id or sid, refusal.node_id)
            return {"received": False}
        logger.warning("node %s refused to take part (%s): %s", node_id, refusal.reason, refusal.detail)
        self.refusals[node_id] = f"{refusal.reason}: {refusal.detail}"
        if self.coordinator is not None:
            self.coordinator.on_refusal(refusal)
        return {"received": True}

    async def gather_statistics(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Ask every connected node for its column statistics (``fl_stats``); failures are logged and skipped."""
        nodes = self.registry.snapshot()
        replies = await asyncio.gather(
            *(self.sio.call("fl_stats", request, to=node.sid, timeout=timeout_s) for node in nodes),
            return_exceptions=True,
        )
        collected: dict[str, Any] = {}
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, BaseException):
                logger.warning("node %s gave no statistics (%r)", node.node_id, reply)
            elif isinstance(reply, dict) and "error" in reply:
                logger.warning("node %s cannot share statistics: %.300s", node.node_id, reply["error"])
                self.refusals[node.node_id] = f"statistics: {reply['error']!s:.300}"
            else:
                collected[node.node_id] = reply
        return collected

    async def on_unknown(self, event: str, sid: str, data: Any = None) -> None:
        logger.warning("ignored unknown event %.40r from %s", event, self.registry.node_for_sid(sid) or sid)

    async def emit(self, event: str, data: dict[str, Any], sid: str) -> None:
        await self.sio.emit(event, data, to=sid)


class KafkaPlane:
    """The server's Kafka clients: a producer for global models and a tailer of node updates."""

    def __init__(self, endpoints: Endpoints, session_id: str) -> None:
        self.endpoints = endpoints
        self.session_id = session_id
        self._producer: Any = None
        self._tailer: kafka_io.RecordTailer | None = None

    async def start(self, on_value: Any) -> None:
        loop = asyncio.get_running_loop()
        e = self.endpoints
        await loop.run_in_executor(
            None, kafka_io.ensure_topics, e.kafka, {e.updates_topic: e.update_partitions, e.models_topic: 1}
        )
        self._producer = await loop.run_in_executor(None, kafka_io.make_producer, e.kafka, "fl-server")

        def deliver(value: bytes | None) -> None:
            loop.call_soon_threadsafe(on_value, value)

        self._tailer = kafka_io.RecordTailer(e.kafka, e.updates_topic, deliver)
        await loop.run_in_executor(None, self._tailer.start)
        logger.info("Kafka at %s: reading %s, publishing models to %s", e.kafka, e.updates_topic, e.models_topic)

    async def publish_model(self, server_round: int, weights: Sequence[np.ndarray]) -> ModelRef:
        chunks = split_weights(weights, kind=KIND_MODEL, session_id=self.session_id, server_round=server_round,
                               node_id=SERVER_SENDER_ID, num_samples=0, chunk_bytes=self.endpoints.chunk_bytes)
        loop = asyncio.get_running_loop()
        positions = await loop.run_in_executor(
            None, kafka_io.publish_chunks, self._producer, self.endpoints.models_topic, list(chunks)
        )
        return kafka_io.model_ref(self.endpoints.models_topic, positions)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._tailer is not None:
            await loop.run_in_executor(None, self._tailer.stop)
            self._tailer = None
        if self._producer is not None:
            await loop.run_in_executor(None, partial(self._producer.close, timeout=10))
            self._producer = None


async def serve_socketio(frontend: SocketIOFrontend, host: str, port: int) -> web.AppRunner:
    app = web.Application()
    frontend.sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("Socket.IO listening on http://%s:%d", host, port)
    return runner


def final_model_path(history_path: Path) -> Path:
    return history_path.with_suffix(".keras")
