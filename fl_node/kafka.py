"""The node's Kafka side: it reads global models from the models topic and publishes update chunks to the
updates topic. kafka-python blocks, so each client lives on a thread of its own, never on the event loop:
the consumer on the fetch thread (a consumer must stay on one thread), the producer on the publish thread.
Both clients are made on first use, so a node starts (and connects to the server) before Kafka is needed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from common.transport import kafka_io
from common.wire.integrity import signed_headers
from common.wire.protocol import ModelRef, WeightChunk
from common.wire.server_key import ServerPublicKey

logger = logging.getLogger(__name__)
Result = TypeVar("Result")


class NodeKafka:
    """A node's Kafka clients: ``fetch_model`` reads a global model, ``publish_update`` sends an update.

    ``start()`` opens the two threads, ``stop()`` closes the clients on their threads (idempotent); or use
    ``async with``. ``key`` signs every update record; with ``server_key`` only global models the server signed
    are taken (``UntrustedModel`` otherwise)."""

    def __init__(self, bootstrap: str, *, node_id: str, updates_topic: str, fetch_timeout_s: float = 120.0,
                 publish_timeout_s: float = 300.0, key: bytes | None = None,
                 config: kafka_io.ClientConfig | None = None, server_key: ServerPublicKey | None = None) -> None:
        self.bootstrap = bootstrap
        self.node_id = node_id
        self.updates_topic = updates_topic
        self.fetch_timeout_s = fetch_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.config = config or {}
        self._key = key
        self.server_key = server_key
        self._producer: Any = None
        self._consumer: Any = None
        self._fetch_thread: ThreadPoolExecutor | None = None  # owns the consumer
        self._publish_thread: ThreadPoolExecutor | None = None  # owns the producer

    @property
    def client_id(self) -> str:
        return f"fl-node-{self.node_id}"

    async def start(self) -> None:
        if self._fetch_thread is None:
            self._fetch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-node-fetch")
            self._publish_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-node-publish")

    async def stop(self) -> None:
        """Close the clients on their own threads (after any fetch or publish under way), then the threads."""
        fetch_thread, publish_thread = self._fetch_thread, self._publish_thread
        if fetch_thread is None or publish_thread is None:
            return
        self._fetch_thread = self._publish_thread = None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(publish_thread, self._close_producer)
            await loop.run_in_executor(fetch_thread, self._close_consumer)
        finally:
            publish_thread.shutdown(wait=False, cancel_futures=True)
            fetch_thread.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> NodeKafka:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    async def fetch_model(self, ref: ModelRef, *, session_id: str, server_round: int,
                          max_elements: int | None = None) -> list[np.ndarray]:
        """The global model ``ref`` points at; raises ``TimeoutError`` after ``fetch_timeout_s``, ``ProtocolError``
        for a model that is incomplete or not the one announced, ``ModelTooLarge`` beyond ``max_elements``."""
        return await self._on(self._fetch_thread, partial(self._fetch, ref, session_id, server_round, max_elements))

    async def publish_update(self, chunks: Sequence[WeightChunk], server_round: int) -> list[tuple[int, int]]:
        """Publish (and sign, with a key) an update's records, retrying with a fresh producer until
        ``publish_timeout_s``; returns the (partition, offset) of every record."""
        deadline = time.monotonic() + self.publish_timeout_s
        what = f"node {self.node_id}: publishing round {server_round}"
        return await self._on(self._publish_thread, partial(
            kafka_io.publish_until, deadline, partial(self._publish, chunks), what, on_retry=self._drop_producer))

    async def _on(self, thread: ThreadPoolExecutor | None, call: Callable[[], Result]) -> Result:
        if thread is None:
            raise RuntimeError("NodeKafka is not started (or stopped already)")
        return await asyncio.get_running_loop().run_in_executor(thread, call)

    def _fetch(self, ref: ModelRef, session_id: str, server_round: int, max_elements: int | None) -> list[np.ndarray]:
        if self._consumer is None:
            self._consumer = kafka_io.make_consumer(self.bootstrap, self.client_id, self.config)
        return kafka_io.fetch_weights(self._consumer, ref, session_id=session_id, server_round=server_round,
                                      timeout_s=self.fetch_timeout_s, max_elements=max_elements,
                                      server_key=self.server_key)

    def _publish(self, chunks: Sequence[WeightChunk]) -> list[tuple[int, int]]:
        if self._producer is None:
            self._producer = kafka_io.make_producer(self.bootstrap, self.client_id, self.config)
        sign = partial(signed_headers, self._key) if self._key is not None else None
        return kafka_io.publish_chunks(self._producer, self.updates_topic, chunks, sign=sign)

    def _drop_producer(self) -> None:
        """After a failed publish: start the next attempt with a fresh producer."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # noqa: BLE001 - it failed already; a new one replaces it
                pass
            self._producer = None

    def _close_producer(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
