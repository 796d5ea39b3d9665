"""The server's Kafka data plane: a producer for global models, a consumer of node updates."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from common.ratelog import RateLimitedLog
from common.transport import kafka_io
from common.wire.protocol import DEFAULT_CHUNK_BYTES, KIND_MODEL, SERVER_SENDER_ID, ModelRef, RawRecord, split_weights
from common.wire.server_key import ServerSigner
from fl_server.aggregator.link import AggregatorLink, partition_count
from fl_server.aggregator.messages import AggregationKey, control_topic, results_topic
from fl_server.collector import InspectedRecord
from fl_server.inbox import Inbox

logger = logging.getLogger(__name__)
inspect_log = RateLimitedLog(logger)


@dataclass(frozen=True)
class Endpoints:
    host: str
    port: int
    kafka: str
    updates_topic: str
    models_topic: str
    update_partitions: int = 3
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    publish_timeout_s: float = 300.0
    server_key: ServerSigner | None = field(default=None, repr=False)  # signs every model record when given
    aggregators: int = 0  # --aggregators: fl-aggregator workers read the updates, the server reads their partials
    aggregation_key: AggregationKey | None = field(default=None, repr=False)
    round_timeout_s: float = 120.0  # how long a round's close waits for the workers' partials


class KafkaPlane:
    """The server's Kafka clients: a producer for global models and a consumer of node updates.

    The consumer commits under group ``fl-server.<session>``, and only the offsets the coordinator
    hands to ``commit`` after persisting a round. With ``aggregators`` the server reads no update: it
    creates the updates topic with at least that many partitions and talks to the ``fl-aggregator``
    workers through ``aggregation`` (``fl_server.aggregator.link``)."""

    def __init__(self, endpoints: Endpoints, session_id: str, *, config: kafka_io.ClientConfig | None = None,
                 start_offsets: dict[int, int] | None = None) -> None:
        self.endpoints = endpoints
        self.session_id = session_id
        self.config = config or {}
        self.group_id = f"fl-server.{session_id}"
        self._start_offsets = start_offsets
        self._producer: Any = None
        self._consumer: kafka_io.UpdateConsumer | None = None
        self._stopping = threading.Event()
        self.aggregation: AggregatorLink | None = None

    async def start(self, inbox: Inbox, inspect: Callable[[RawRecord], InspectedRecord]) -> dict[int, int]:
        """Create topics, open the producer, position the consumer; returns where it starts reading.

        Every record is inspected (``fl_server.collector.inspect_record``: size, signature, JSON, fields) on
        the consumer's thread and handed to ``inbox``, which blocks that thread, never the event loop, while
        the round loop is behind: records then wait in Kafka, not in the server's memory."""
        loop = asyncio.get_running_loop()
        e = self.endpoints
        topics = {e.updates_topic: e.aggregators or e.update_partitions, e.models_topic: 1}  # one per worker
        if e.aggregators:
            topics.update({control_topic(e.updates_topic): 1, results_topic(e.updates_topic): 1})
        await loop.run_in_executor(None, kafka_io.ensure_topics, e.kafka, topics, self.config)
        self._producer = await loop.run_in_executor(None, kafka_io.make_producer, e.kafka, "fl-server", self.config)

        inbox.bind(loop)
        if e.aggregators:
            return await self._start_aggregation(inbox)

        def deliver(record: RawRecord) -> None:
            try:
                item = inspect(record)
            except Exception as exc:  # noqa: BLE001 - a record must never stop the consumer (it would re-read it)
                inspect_log.log(logging.ERROR, "unreadable", "could not inspect the record at %s/%d: %r",
                                record.partition, record.offset, exc)
                item = InspectedRecord(record.partition, record.offset, rejection=("unreadable", repr(exc)[:200]))
            inbox.put_from_thread(item, item.size_bytes, self._stopping)

        self._consumer = kafka_io.UpdateConsumer(e.kafka, e.updates_topic, deliver, group_id=self.group_id,
                                                 start_offsets=self._start_offsets, config=self.config)
        positions = await loop.run_in_executor(None, self._consumer.start)
        logger.info("Kafka at %s: reading %s from offsets %s (group %s), publishing models to %s", e.kafka,
                    e.updates_topic, positions, self.group_id, e.models_topic)
        return positions

    async def _start_aggregation(self, inbox: Inbox) -> dict[int, int]:
        e = self.endpoints
        if e.aggregation_key is None:
            raise ValueError("--aggregators needs --aggregator-key")
        loop = asyncio.get_running_loop()
        partitions = await loop.run_in_executor(None, partition_count, e.kafka, e.updates_topic, self.config)
        if partitions < e.aggregators:
            logger.warning("%s has %d partition(s): only %d of the %d aggregators will have work (a topic's "
                           "partitions are never reduced; use a new --updates-topic)", e.updates_topic, partitions,
                           partitions, e.aggregators)
        self.aggregation = AggregatorLink(kafka=e.kafka, updates_topic=e.updates_topic, num_partitions=partitions,
                                          key=e.aggregation_key, session_id=self.session_id,
                                          round_timeout_s=e.round_timeout_s, config=self.config)
        await self.aggregation.start(self._producer, inbox)
        return {}

    def commit(self, offsets: dict[int, int]) -> None:
        if self._consumer is not None:
            self._consumer.request_commit(offsets)

    async def publish_model(self, server_round: int, weights: Sequence[np.ndarray], model_sha256: str) -> ModelRef:
        """Publish the global model; ``model_sha256`` is its ``weights_digest``, which the coordinator keeps."""
        topic = self.endpoints.models_topic
        deadline = time.monotonic() + self.endpoints.publish_timeout_s

        digests: list[str] = []

        def publish() -> list[tuple[int, int]]:  # a worker thread: slicing, encoding, hashing are O(model)
            chunks = split_weights(weights, kind=KIND_MODEL, session_id=self.session_id, server_round=server_round,
                                   node_id=SERVER_SENDER_ID, num_samples=0, chunk_bytes=self.endpoints.chunk_bytes)
            digests.clear()  # a retry publishes (and lists) the records again
            key = self.endpoints.server_key
            return kafka_io.publish_chunks(self._producer, topic, chunks, digests=digests,
                                           sign=key.model_headers if key is not None else None)

        loop = asyncio.get_running_loop()
        positions = await loop.run_in_executor(
            None, kafka_io.publish_until, deadline, publish, f"publishing the round {server_round} model"
        )
        return kafka_io.model_ref(topic, positions, digests, model_sha256)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping.set()  # releases a consumer thread waiting for room in the inbox
        if self.aggregation is not None:
            await self.aggregation.stop()
        if self._consumer is not None:
            await loop.run_in_executor(None, self._consumer.stop)
            self._consumer = None
        if self._producer is not None:
            await loop.run_in_executor(None, partial(self._producer.close, timeout=10))
            self._producer = None
