"""The server's ingest path end to end, next to what bounds it, measured in one run on the same data.

N signed updates of a ``--model-mb`` MiB float32 model are produced to a fresh topic with the project's
own wire functions (chunks of 512 KiB, base64 in JSON, HMAC headers). Then, one after the other:

* **server ingest**: the real ``Coordinator`` runs one round over them, fed by the server's Kafka
  consumer thread (``inspect_record``: HMAC, JSON, strict base64) through the bounded ``Inbox``; the
  round loop de-duplicates and assembles, a worker checks values and folds each update into FedAvg;
* **kafka-python consume**: the same records polled from the same topic, nothing else done;
* **strict base64 decode**: ``b64decode`` of every record's data field, from memory;
* **numpy accumulation**: FedAvg's float64 running sum over the N models, from memory;
* **scaled-out ingest** (``--aggregators K``, default 2; 0 skips it): the same round with ``fl-server
  --aggregators K``'s path: K ``fl-aggregator`` processes in one consumer group validate and fold their
  partitions, and the real ``Coordinator`` takes their verdicts and adds their K float64 partial sums.

Figures are MB/s of raw weights (N x model size / seconds) and the ingest's ratio to each bound.
Needs a broker (``scripts/kafka-local.sh start``); nothing here is a test.

    .venv/bin/python bench/bench_ingest.py [--kafka 127.0.0.1:9092] [--model-mb 50] [--nodes 10] [--aggregators 2]

The topic has K partitions (3 without aggregators); records are keyed by node id, so how evenly the nodes
spread over the partitions (murmur2 of the id) bounds what K workers can share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from common.transport import kafka_io
from common.wire.codec import b64decode
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import KIND_UPDATE, ModelRef, StartRound, TrainConfig, UpdateAck, encode_chunk, split_weights
from fl_server.aggregator.messages import AggregationKey
from fl_server.aggregator.partial import expected_partition
from fl_server.collector import inspect_record
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.inbox import Inbox
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg
from fl_server.transport.kafka import Endpoints, KafkaPlane

MB = 1024 * 1024
SESSION = "bench"
CPU_SECONDS: dict[int, tuple[float, float]] = {}  # aggregators -> (server process, worker processes) CPU seconds


def model_of(size_mb: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    elements = int(size_mb * MB / 4)
    return [rng.standard_normal(elements - 1024, dtype=np.float32), rng.standard_normal(1024, dtype=np.float32)]


def produce(kafka: str, topic: str, keys: dict[str, bytes], model_mb: float, partitions: int) -> list[bytes]:
    """Publish every node's update; returns the values (for the in-memory decode bound)."""
    kafka_io.ensure_topics(kafka, {topic: partitions})
    producer = kafka_io.make_producer(kafka, "bench-ingest")
    values: list[bytes] = []
    for index, (node_id, key) in enumerate(sorted(keys.items())):
        chunks = list(split_weights(model_of(model_mb, index), kind=KIND_UPDATE, session_id=SESSION, server_round=1,
                                    node_id=node_id, num_samples=100 + index))
        kafka_io.publish_chunks(producer, topic, chunks, sign=partial(signed_headers, key))
        values.extend(encode_chunk(chunk) for chunk in chunks)
    producer.close()
    return values


async def server_ingest(kafka: str, topic: str, keys: dict[str, bytes], model_mb: float, partitions: int,
                        aggregators: int = 0) -> float:
    """Seconds for the real coordinator to take in every update of round 1 from Kafka (with ``aggregators``:
    through that many ``fl-aggregator`` processes, started here and given the keys)."""
    registry = NodeRegistry()
    for node_id in keys:
        await registry.add(NodeInfo(node_id, node_id, 1000))  # num_samples of the updates below: 100 + i
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    aggregation_key = None
    workers: list[subprocess.Popen[bytes]] = []
    if aggregators:
        aggregation_key = start_workers(kafka, topic, keys, aggregators, partitions, workdir, workers)
    plane = KafkaPlane(Endpoints("127.0.0.1", 0, kafka, topic, f"{topic}.models", update_partitions=partitions,
                                 aggregators=aggregators, aggregation_key=aggregation_key, round_timeout_s=600),
                       SESSION, start_offsets={p: 0 for p in range(partitions)})
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
    if plane.aggregation is not None:
        coordinator._aggregation = plane.aggregation
        await plane.aggregation.wait_ready()  # every partition has its worker (they hold round 1's records)
        while len({w for owners in plane.aggregation.owners().values() for w in owners}) < aggregators:
            await asyncio.sleep(0.2)  # every worker joined the group: no rebalance inside the timed round
    started, cpu_started = time.perf_counter(), time.process_time()  # the consumer is positioned: from here on
    children_started = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        await coordinator.run()
        elapsed, server_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await plane.stop()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu_s = (children.ru_utime + children.ru_stime) - (children_started.ru_utime + children_started.ru_stime)
    CPU_SECONDS[aggregators] = (server_cpu_s, workers_cpu_s)  # workers: their whole life, start-up included
    record = coordinator.history.rounds[0]
    assert record["accepted"] == sorted(keys), record
    return elapsed


def start_workers(kafka: str, topic: str, keys: dict[str, bytes], count: int, partitions: int, workdir: Path,
                  workers: list[subprocess.Popen[bytes]]) -> AggregationKey:
    """``count`` fl-aggregator processes in a fresh group whose offsets start at 0 (the records are already in)."""
    key_hex = "6b" * 32
    (workdir / "aggregation.key").write_text(key_hex)
    (workdir / "registry.json").write_text(json.dumps(KeyRegistry(keys).to_wire()))
    group = f"bench-agg-{uuid.uuid4().hex[:8]}"
    committer = kafka_io.make_consumer(kafka, "bench-commit", group_id=group)
    committer.commit({TopicPartition(topic, p): OffsetAndMetadata(0, "", -1) for p in range(partitions)})
    committer.close()
    for index in range(count):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "fl_server.aggregator", "--kafka", kafka, "--updates-topic", topic, "--node-keys",
             str(workdir / "registry.json"), "--aggregator-key", str(workdir / "aggregation.key"), "--aggregator-id",
             f"bench{index}", "--group", group, "--log-level", logging.getLevelName(logging.getLogger().level)],
            cwd=Path(__file__).resolve().parents[1]))
    return AggregationKey(bytes.fromhex(key_hex))


def raw_consume(kafka: str, topic: str, count: int, num_partitions: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    partitions = [TopicPartition(topic, p) for p in range(num_partitions)]
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
    parser.add_argument("--aggregators", type=int, default=2, help="fl-aggregator processes (0: skip that run)")
    parser.add_argument("--log-level", default="WARNING", help="INFO shows the phases of each run, with times")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    keys = {f"n{i}": bytes([i + 1]) * 32 for i in range(args.nodes)}
    print(f"{args.nodes} updates of {args.model_mb:g} MiB float32 ({args.nodes * args.model_mb:g} MiB of weights); "
          f"native crc32c: {kafka_io.native_crc32c()}")
    t0 = time.perf_counter()
    partitions = args.aggregators or 3
    values = produce(args.kafka, topic, keys, args.model_mb, partitions)
    print(f"produced {len(values)} records ({sum(map(len, values)) / MB:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    spread = [sum(expected_partition(n, partitions) == p for n in keys) for p in range(partitions)]
    print(f"{partitions} partitions; updates per partition: {spread}")
    total_mb = args.nodes * args.model_mb
    timings = {
        "server ingest (consume, verify, decode, assemble, check, fold)": asyncio.run(
            server_ingest(args.kafka, topic, keys, args.model_mb, partitions)),
    }
    if args.aggregators:
        timings[f"scaled-out ingest: {args.aggregators} fl-aggregator processes + partial sums"] = asyncio.run(
            server_ingest(args.kafka, topic, keys, args.model_mb, partitions, args.aggregators))
    timings |= {
        "kafka-python consume only": raw_consume(args.kafka, topic, len(values), partitions),
        "strict base64 decode only": base64_decode(values),
        "numpy FedAvg accumulation only": accumulate(args.model_mb, args.nodes),
    }
    ingest = timings["server ingest (consume, verify, decode, assemble, check, fold)"]
    for name, seconds in timings.items():
        ratio = "" if "ingest" in name else f"   ingest is {seconds / ingest:6.0%} of its speed"
        print(f"{name:72s} {seconds:7.2f}s {total_mb / seconds:8.1f} MB/s{ratio}")
    decode = timings["strict base64 decode only"]
    print(f"in-process ingest: {decode / ingest:.0%} of strict base64 decode speed")
    for aggregators, (server_cpu_s, workers_cpu_s) in sorted(CPU_SECONDS.items()):
        print(f"CPU seconds, {aggregators} aggregator(s): server process {server_cpu_s:.2f}"
              + (f", fl-aggregator processes {workers_cpu_s:.2f} (with their start-up)" if aggregators else ""))
    for name, seconds in timings.items():
        if name.startswith("scaled-out"):
            print(f"{name.split(':')[1].strip()}: {decode / seconds:.0%} of strict base64 decode speed, "
                  f"{ingest / seconds:.2f}x the in-process ingest")


if __name__ == "__main__":
    main()
