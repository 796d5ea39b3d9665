"""Kafka helpers (blocking kafka-python calls: run them in a thread, never on the event loop)."""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from common.ml.model_budget import check_parameter_budget
from common.ratelog import RateLimitedLog
from common.wire.assembly import WeightAssembler
from common.wire.codec import weights_digest
from common.wire.protocol import ModelRef, ProtocolError, RawRecord, WeightChunk, decode_chunk, encode_chunk
from common.wire.server_key import ServerPublicKey, UntrustedModel

logger = logging.getLogger(__name__)
foreign_records_log = RateLimitedLog(logger)  # anyone who can write the models topic can repeat these

SEND_TIMEOUT_S = 60.0


ClientConfig = dict[str, Any]  # extra kafka-python settings (SSL/SASL: see common.transport.kafka_security)
Signer = Callable[[WeightChunk, bytes], list[tuple[str, bytes]]]


def native_crc32c() -> bool:
    """True if kafka-python checksums record batches with the ``crc32c`` C extension.

    Without it every batch is checksummed in pure Python (twice: producer and consumer), at 4-10 MB/s
    against GB/s: with a 6 MB model that is most of a round. ``kafka-python[crc32c]`` installs it."""
    from kafka.record import util

    return util.calc_crc32c.__defaults__ is not None and util.calc_crc32c.__defaults__[0] is not util.crc32c_py


def log_crc32c_implementation() -> None:
    if native_crc32c():
        logger.debug("Kafka record checksums: native crc32c")
    else:
        logger.warning("kafka-python computes record checksums in pure Python (the crc32c package is missing): "
                       "large models will be slow to send and receive; pip install 'kafka-python[crc32c]'")


class BrokerUnreachable(ValueError):
    """No bootstrap server accepts a TCP connection."""


def check_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when no broker listens at ``bootstrap`` (kafka-python would retry for minutes)."""
    errors = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{address.strip()}: {getattr(exc, 'strerror', None) or exc}")
    raise BrokerUnreachable(f"no Kafka broker answers at {bootstrap} ({'; '.join(errors)}); start one with "
                            "`scripts/kafka-local.sh start` (or `docker compose up -d kafka`), or pass --kafka")


def make_producer(bootstrap: str, client_id: str, config: ClientConfig | None = None) -> KafkaProducer:
    """Idempotent producer waiting for all in-sync replicas (kafka-python 3 defaults, spelled out).

    Retries are the client's: a send is retried until ``delivery_timeout_ms`` (2 min) passes, with
    sequence numbers so that a retry after a lost acknowledgement is not written twice."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=30_000,
        **(config or {}),
    )


def make_consumer(bootstrap: str, client_id: str, config: ClientConfig | None = None,
                  group_id: str | None = None) -> KafkaConsumer:
    """A consumer that never commits on its own (the caller decides what has been processed)."""
    return KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=group_id,
                         enable_auto_commit=False, fetch_max_wait_ms=100, **(config or {}))


def ensure_topics(bootstrap: str, topics: dict[str, int], config: ClientConfig | None = None) -> None:
    """Create missing topics (name -> partitions); existing ones are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fl-admin", **(config or {}))
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


def publish_chunks(producer: KafkaProducer, topic: str, chunks: Iterable[WeightChunk], *,
                   sign: Signer | None = None, timeout_s: float = SEND_TIMEOUT_S,
                   digests: list[str] | None = None) -> list[tuple[int, int]]:
    """Send chunks keyed by sender (one partition, in order); return (partition, offset) of each once acked.

    ``sign(chunk, value)`` returns the record's headers (``common.wire.integrity.signed_headers``); ``digests``, if
    given, receives the SHA-256 (hex) of each value sent, in order."""
    futures = []
    for chunk in chunks:
        value = encode_chunk(chunk)
        if digests is not None:
            digests.append(hashlib.sha256(value).hexdigest())
        headers = sign(chunk, value) if sign is not None else chunk.headers()
        futures.append(producer.send(topic, key=chunk.node_id.encode(), value=value, headers=headers))
    producer.flush(timeout=timeout_s)
    metadata = [future.get(timeout=timeout_s) for future in futures]
    return [(m.partition, m.offset) for m in metadata]


def publish_until(deadline_s: float, publish: Callable[[], list[tuple[int, int]]], what: str,
                  on_retry: Callable[[], None] | None = None) -> list[tuple[int, int]]:
    """Call ``publish`` until it succeeds or ``deadline_s`` (monotonic) passes, backing off 1, 2, 4 .. 15 s.

    A retry may write records the broker already had (their acknowledgement was lost);
    receivers de-duplicate on (session, round, node, layer, chunk)."""
    delay = 1.0
    while True:
        try:
            return publish()
        except KafkaError as exc:
            if time.monotonic() + delay > deadline_s:
                raise
            logger.warning("%s failed (%r); retrying in %.0fs", what, exc, delay)
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def model_ref(topic: str, positions: Sequence[tuple[int, int]], digests: Sequence[str] = (),
              model_sha256: str = "") -> ModelRef:
    partitions = {p for p, _ in positions}
    if len(partitions) != 1:
        raise RuntimeError(f"model chunks landed on several partitions {partitions}")
    offsets = [o for _, o in positions]
    return ModelRef(topic, partitions.pop(), min(offsets), max(offsets), len(positions), tuple(digests),
                    model_sha256)


def fetch_weights(
    consumer: KafkaConsumer,
    ref: ModelRef,
    *,
    session_id: str,
    server_round: int,
    timeout_s: float,
    max_elements: int | None = None,
    server_key: ServerPublicKey | None = None,
) -> list[np.ndarray]:
    """Read the model chunks a ``ModelRef`` points at (assign + seek; no consumer group).

    With ``server_key`` only records the server signed count; when they do not make up the announced model
    (unsigned, signed by another key, tampered with, not the digest announced) it raises ``UntrustedModel``."""
    partition = TopicPartition(ref.topic, ref.partition)
    consumer.assign([partition])
    consumer.seek(partition, ref.start_offset)
    assembler = WeightAssembler()
    layer_sizes: dict[int, int] = {}  # declared elements per layer, checked before any of it is kept
    expected = {bytes.fromhex(d) for d in ref.record_digests}  # the server's own records, when it listed them
    taken: set[bytes] = set()
    skipped = 0
    untrusted: Counter[str] = Counter()  # records refused for their server signature, by reason
    deadline = time.monotonic() + timeout_s
    while not assembler.complete:
        if time.monotonic() > deadline:
            raise TimeoutError(f"model for round {server_round} not complete after {timeout_s:.0f}s")
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if record.offset > ref.end_offset:
                    continue
                if server_key is not None:
                    try:
                        server_key.verify_model_record(record.key, dict(record.headers or ()), record.value or b"")
                    except ProtocolError as exc:
                        untrusted[exc.reason] += 1
                        foreign_records_log.warning(exc.reason, "skipping a model record at offset %d: %s",
                                                    record.offset, exc)
                        continue
                if expected:
                    digest = hashlib.sha256(record.value or b"").digest()
                    if digest not in expected or digest in taken:
                        skipped += 1  # someone else's record inside the range: skip it, never fail on it
                        foreign_records_log.warning("foreign", "skipping a model record at offset %d that is not "
                                                    "one the server listed", record.offset)
                        continue
                    taken.add(digest)
                try:
                    chunk = decode_chunk(record.value)
                except ProtocolError as exc:
                    foreign_records_log.warning(exc.reason, "skipping bad model record at offset %d: %s",
                                                record.offset, exc)
                    continue
                if chunk.session_id == session_id and chunk.server_round == server_round:
                    if max_elements is not None:
                        layer_sizes[chunk.layer_index] = math.prod(chunk.spec.shape)
                        check_parameter_budget(sum(layer_sizes.values()), max_elements, "the global model's weights")
                    assembler.add(chunk)
        if consumer.position(partition) > ref.end_offset and not assembler.complete:
            if untrusted:
                reason, count = untrusted.most_common(1)[0]
                raise UntrustedModel(reason, f"model for round {server_round}: {sum(untrusted.values())} record(s) "
                                             f"refused ({count} {reason}); no complete model signed by server key "
                                             f"{server_key.key_id if server_key else ''}")
            raise ProtocolError("incomplete_model", f"model for round {server_round} is incomplete in Kafka")
    weights = assembler.result()
    if ref.model_sha256 and weights_digest(weights) != ref.model_sha256:
        error = UntrustedModel if server_key is not None else ProtocolError
        raise error("model_digest_mismatch", f"model for round {server_round} is not the one announced")
    if skipped:
        logger.info("round %d: skipped %d foreign record(s) in the model's range", server_round, skipped)
    return weights


class UpdateConsumer:
    """Reads every partition of a topic in a background thread and hands ``RawRecord``s to a callback.

    It starts at ``start_offsets`` (partition -> offset, e.g. from a checkpoint) and at the end
    of the partitions it has no offset for. It never commits by itself: ``request_commit`` asks
    its thread to commit offsets under ``group_id`` once the caller has persisted what they fed.
    A broker that goes away is waited out: on an error the thread reopens its consumer at the
    next offset it has not delivered yet, so nothing is skipped and nothing is delivered twice
    by this class (the broker may still redeliver; receivers de-duplicate).

    The callback runs on the consumer's thread: give it something thread-safe
    (e.g. ``loop.call_soon_threadsafe``).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_record: Callable[[RawRecord], None],
        *,
        group_id: str | None = None,
        start_offsets: dict[int, int] | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._on_record = on_record
        self._group_id = group_id
        self._config = config or {}
        self.positions: dict[int, int] = dict(start_offsets or {})  # next offset to deliver, per partition
        self.start_positions: dict[int, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._commit_lock = threading.Lock()
        self._pending_commit: dict[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name=f"consume-{topic}", daemon=True)

    def start(self, timeout_s: float = 60.0) -> dict[int, int]:
        """Start reading; returns the start offset of every partition once positioned."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"could not position on topic {self._topic} within {timeout_s:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"consumer of {self._topic} failed to start: {self._error!r}") from self._error
        return dict(self.start_positions)

    def request_commit(self, offsets: dict[int, int]) -> None:
        """Commit these offsets (partition -> next offset) from the consumer's thread, retrying until done."""
        if self._group_id is None:
            return
        with self._commit_lock:
            self._pending_commit = dict(offsets)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _open(self) -> KafkaConsumer:
        consumer = make_consumer(self._bootstrap, f"fl-consume-{self._topic}", self._config, self._group_id)
        try:
            partitions = consumer.partitions_for_topic(self._topic) or set()
            deadline = time.monotonic() + 30
            while not partitions and time.monotonic() < deadline and not self._stop.is_set():
                consumer.poll(timeout_ms=200)  # lets the client refresh metadata for a just-created topic
                partitions = consumer.partitions_for_topic(self._topic) or set()
            if not partitions:
                raise RuntimeError(f"topic {self._topic} has no partitions")
            assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            for tp in assigned:
                if tp.partition in self.positions:
                    consumer.seek(tp, self.positions[tp.partition])
                else:
                    consumer.seek_to_end(tp)
                    self.positions[tp.partition] = consumer.position(tp)  # seek_to_end is lazy: resolve it now
        except BaseException:
            consumer.close()
            raise
        return consumer

    def _commit_pending(self, consumer: KafkaConsumer) -> None:
        with self._commit_lock:
            offsets, self._pending_commit = self._pending_commit, None
        if not offsets:
            return
        try:
            consumer.commit({TopicPartition(self._topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
        except KafkaError:
            with self._commit_lock:  # keep it for the next try unless a newer one came in
                self._pending_commit = self._pending_commit or offsets
            raise

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            consumer = self._open()
            self.start_positions = dict(self.positions)
        except BaseException as exc:  # noqa: BLE001 - reported to start() which re-raises
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._open()
                    logger.info("consumer of %s reconnected at offsets %s", self._topic, self.positions)
                self._commit_pending(consumer)
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        if record.offset < self.positions.get(record.partition, 0):
                            continue  # already delivered before a reconnect
                        self.positions[record.partition] = record.offset + 1
                        self._on_record(RawRecord(record.value, record.key, tuple(record.headers or ()),
                                                  record.partition, record.offset))
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - the broker may be restarting: reopen and go on
                logger.warning("consumer of %s: %r; reopening in %.1fs", self._topic, exc, backoff)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # noqa: BLE001
                        pass
                    consumer = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        if consumer is not None:
            try:
                self._commit_pending(consumer)
            except Exception as exc:  # noqa: BLE001
                logger.warning("final offset commit on %s failed: %r", self._topic, exc)
            consumer.close()
