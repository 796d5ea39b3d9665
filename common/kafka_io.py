"""Kafka helpers (blocking kafka-python calls: run them in a thread, never on the event loop)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from common.assembly import WeightAssembler
from common.protocol import ModelRef, ProtocolError, WeightChunk, decode_chunk, encode_chunk

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 60.0


def make_producer(bootstrap: str, client_id: str) -> KafkaProducer:
    """Idempotent producer waiting for all in-sync replicas (kafka-python 3 defaults, spelled out)."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=30_000,
    )


def ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create missing topics (name -> partitions); existing ones are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fl-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in topics.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
                logger.info("created Kafka topics %s", ", ".join(t.name for t in missing))
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def publish_chunks(producer: KafkaProducer, topic: str, chunks: Iterable[WeightChunk]) -> list[tuple[int, int]]:
    """Send chunks keyed by sender (one partition, in order); return (partition, offset) of each once acked."""
    futures = [
        producer.send(topic, key=chunk.node_id.encode(), value=encode_chunk(chunk), headers=chunk.headers())
        for chunk in chunks
    ]
    producer.flush(timeout=SEND_TIMEOUT_S)
    metadata = [future.get(timeout=SEND_TIMEOUT_S) for future in futures]
    return [(m.partition, m.offset) for m in metadata]


def model_ref(topic: str, positions: Sequence[tuple[int, int]]) -> ModelRef:
    partitions = {p for p, _ in positions}
    if len(partitions) != 1:
        raise RuntimeError(f"model chunks landed on several partitions {partitions}")
    offsets = [o for _, o in positions]
    return ModelRef(topic, partitions.pop(), min(offsets), max(offsets), len(positions))


def fetch_weights(
    consumer: KafkaConsumer,
    ref: ModelRef,
    *,
    session_id: str,
    server_round: int,
    timeout_s: float,
) -> list[np.ndarray]:
    """Read the model chunks a ``ModelRef`` points at (assign + seek; no consumer group)."""
    partition = TopicPartition(ref.topic, ref.partition)
    consumer.assign([partition])
    consumer.seek(partition, ref.start_offset)
    assembler = WeightAssembler()
    deadline = time.monotonic() + timeout_s
    while not assembler.complete:
        if time.monotonic() > deadline:
            raise TimeoutError(f"model for round {server_round} not complete after {timeout_s:.0f}s")
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if record.offset > ref.end_offset:
                    continue
                try:
                    chunk = decode_chunk(record.value)
                except ProtocolError as exc:
                    logger.warning("skipping bad model record at offset %d: %s", record.offset, exc)
                    continue
                if chunk.session_id == session_id and chunk.server_round == server_round:
                    assembler.add(chunk)
        if consumer.position(partition) > ref.end_offset and not assembler.complete:
            raise ProtocolError("incomplete_model", f"model for round {server_round} is incomplete in Kafka")
    return assembler.result()


class RecordTailer:
    """Reads every partition of a topic from its end in a background thread and hands raw values to a callback.

    The callback runs on the tailer's thread: give it something thread-safe
    (e.g. ``loop.call_soon_threadsafe``).
    """

    def __init__(self, bootstrap: str, topic: str, on_value: Callable[[bytes | None], None]) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._on_value = on_value
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"tail-{topic}", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start reading; returns once positioned at the current end of every partition."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"could not position on topic {self._topic} within {timeout_s:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"tailer for {self._topic} failed to start") from self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=f"fl-tail-{self._topic}",
                group_id=None,
                enable_auto_commit=False,
                fetch_max_wait_ms=100,
            )
            partitions = consumer.partitions_for_topic(self._topic) or set()
            deadline = time.monotonic() + 30
            while not partitions and time.monotonic() < deadline and not self._stop.is_set():
                consumer.poll(timeout_ms=200)  # lets the client refresh metadata for a just-created topic
                partitions = consumer.partitions_for_topic(self._topic) or set()
            if not partitions:
                raise RuntimeError(f"topic {self._topic} has no partitions")
            assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            consumer.seek_to_end(*assigned)
            for tp in assigned:
                consumer.position(tp)  # seek_to_end is lazy; resolve it before reporting ready
        except BaseException as exc:  # noqa: BLE001 - reported to start() which re-raises
            self._error = exc
            self._ready.set()
            if consumer is not None:
                consumer.close()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        self._on_value(record.value)
        except Exception:
            logger.exception("Kafka tailer for %s stopped on an error", self._topic)
        finally:
            consumer.close()
