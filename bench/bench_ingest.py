"""The server's ingest path end to end, next to what bounds it, measured in one run on the same data.

N signed updates of a ``--model-mb`` MiB float32 model are produced to a fresh topic with the project's
own wire functions (chunks of 512 KiB, base64 in JSON, HMAC headers). Then, one after the other:

* **server ingest**: the real ``Coordinator`` runs one round over them, fed by the server's Kafka
  consumer thread (``inspect_record``: HMAC, JSON, strict base64) through the bounded ``Inbox``; the
  round loop de-duplicates and assembles, a worker checks values and folds each update into FedAvg;
* **kafka-python consume**: the same records polled from the same topic, nothing else done;
* **strict base64 decode**: ``b64decode`` of every record's data field, from memory;
* **numpy accumulation**: FedAvg's float64 running sum over the N models, from memory.

Figures are MB/s of raw weights (N x model size / seconds) and the ingest's ratio to each bound.
Needs a broker (``scripts/kafka-local.sh start``); nothing here is a test.

    .venv/bin/python bench/bench_ingest.py [--kafka 127.0.0.1:9092] [--model-mb 50] [--nodes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, TopicPartition

from common.transport import kafka_io
from common.wire.codec import b64decode
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import KIND_UPDATE, ModelRef, StartRound, TrainConfig, UpdateAck, encode_chunk, split_weights
from fl_server.collector import inspect_record
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.inbox import Inbox
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg
from fl_server.transport.kafka import Endpoints, KafkaPlane

MB = 1024 * 1024
SESSION = "bench"


def model_of(size_mb: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    elements = int(size_mb * MB / 4)
    return [rng.standard_normal(elements - 1024, dtype=np.float32), rng.standard_normal(1024, dtype=np.float32)]


def produce(kafka: str, topic: str, keys: dict[str, bytes], model_mb: float) -> list[bytes]:
    """Publish every node's update; returns the values (for the in-memory decode bound)."""
    kafka_io.ensure_topics(kafka, {topic: 3})
    producer = kafka_io.make_producer(kafka, "bench-ingest")
    values: list[bytes] = []
    for index, (node_id, key) in enumerate(sorted(keys.items())):
        chunks = list(split_weights(model_of(model_mb, index), kind=KIND_UPDATE, session_id=SESSION, server_round=1,
                                    node_id=node_id, num_samples=100 + index))
        kafka_io.publish_chunks(producer, topic, chunks, sign=partial(signed_headers, key))
        values.extend(encode_chunk(chunk) for chunk in chunks)
    producer.close()
    return values


async def server_ingest(kafka: str, topic: str, keys: dict[str, bytes], model_mb: float) -> float:
    """Seconds for the real coordinator to take in every update of round 1 from Kafka."""
    registry = NodeRegistry()
    for node_id in keys:
        await registry.add(NodeInfo(node_id, node_id, 1000))  # num_samples of the updates below: 100 + i
    plane = KafkaPlane(Endpoints("127.0.0.1", 0, kafka, topic, f"{topic}.models"), SESSION,
                       start_offsets={p: 0 for p in range(3)})
    inbox = Inbox()
    registry_keys = KeyRegistry(keys)
    template = model_of(model_mb, 99)
    coordinator: Coordinator | None = None

    async def publish_model(server_round, weights, model_sha256):
        return ModelRef("m", 0, 0, 0, 1)

    async def emit(event, data, sid):  # the nodes' acknowledgements: their records are already in Kafka
        if event == "start_round":
            start = StartRound.from_wire(data)
            assert coordinator is not None
            coordinator.on_ack(UpdateAck(SESSION, start.server_round, sid, 1, 1, {}, {}))

    settings = SessionSettings(SESSION, rounds=1, min_nodes=len(keys), round_timeout_s=600,
                               train=TrainConfig(1, 32, 0.1), end_grace_s=0.0, max_record_bytes=2 * MB)
    coordinator = Coordinator(settings=settings, registry=registry, strategy=FedAvg(),
                              model=GlobalModel("{}", {}, template, {}), evaluate=lambda r, w: {},
                              publish_model=publish_model, emit=emit,
                              history=SessionHistory.create(Path("/tmp"), f"bench-{uuid.uuid4().hex[:6]}", {}),
                              keys=registry_keys, inbox=inbox)
    await plane.start(inbox, lambda record: inspect_record(record, keys=registry_keys, max_record_bytes=2 * MB))
    started = time.perf_counter()  # the consumer is positioned: from here on it reads
    await coordinator.run()
    elapsed = time.perf_counter() - started
    await plane.stop()
    record = coordinator.history.rounds[0]
    assert record["accepted"] == sorted(keys), record
    return elapsed


def raw_consume(kafka: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    partitions = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    started, seen = time.perf_counter(), 0
    while seen < count:
        for records in consumer.poll(timeout_ms=500).values():
            seen += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def base64_decode(values: list[bytes]) -> float:
    texts = [json.loads(v)["data"] for v in values]
    started = time.perf_counter()
    for text in texts:
        b64decode(text)
    return time.perf_counter() - started


def accumulate(model_mb: float, nodes: int) -> float:
    models = [model_of(model_mb, i) for i in range(nodes)]
    strategy = FedAvg()
    strategy.begin_round(1, models[0])
    started = time.perf_counter()
    for index, weights in enumerate(models):
        strategy.accumulate(f"n{index}", weights, 100)
    strategy.aggregate()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--model-mb", type=float, default=50.0)
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    keys = {f"n{i}": bytes([i + 1]) * 32 for i in range(args.nodes)}
    print(f"{args.nodes} updates of {args.model_mb:g} MiB float32 ({args.nodes * args.model_mb:g} MiB of weights); "
          f"native crc32c: {kafka_io.native_crc32c()}")
    t0 = time.perf_counter()
    values = produce(args.kafka, topic, keys, args.model_mb)
    print(f"produced {len(values)} records ({sum(map(len, values)) / MB:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    total_mb = args.nodes * args.model_mb
    timings = {
        "server ingest (consume, verify, decode, assemble, check, fold)": asyncio.run(
            server_ingest(args.kafka, topic, keys, args.model_mb)),
        "kafka-python consume only": raw_consume(args.kafka, topic, len(values)),
        "strict base64 decode only": base64_decode(values),
        "numpy FedAvg accumulation only": accumulate(args.model_mb, args.nodes),
    }
    ingest = timings["server ingest (consume, verify, decode, assemble, check, fold)"]
    for name, seconds in timings.items():
        ratio = "" if seconds == ingest else f"   ingest is {seconds / ingest:6.0%} of its speed"
        print(f"{name:64s} {seconds:7.2f}s {total_mb / seconds:8.1f} MB/s{ratio}")


if __name__ == "__main__":
    main()
