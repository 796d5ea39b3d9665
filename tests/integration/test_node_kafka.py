"""``fl_node.kafka.NodeKafka`` against the real broker: what it publishes is signed and reads back whole."""

import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from common.transport import kafka_io
from common.wire.integrity import KeyRegistry
from common.wire.protocol import KIND_UPDATE, split_weights
from fl_node.kafka import NodeKafka

KEY = bytes(range(32))


async def test_an_update_published_by_the_node_is_signed_and_reads_back_whole(kafka_bootstrap: str) -> None:
    topic = f"test.node-kafka.{uuid.uuid4().hex[:10]}"
    kafka_io.ensure_topics(kafka_bootstrap, {topic: 1})
    weights = [np.arange(300, dtype=np.float32).reshape(30, 10), np.ones(7, np.float32)]
    chunks = list(split_weights(weights, kind=KIND_UPDATE, session_id="s", server_round=2, node_id="n1",
                                num_samples=5, chunk_bytes=256))
    async with NodeKafka(kafka_bootstrap, node_id="n1", updates_topic=topic, key=KEY, fetch_timeout_s=60) as kafka:
        positions = await kafka.publish_update(chunks, server_round=2)
        fetched = await kafka.fetch_model(kafka_io.model_ref(topic, positions), session_id="s", server_round=2)
    assert len(positions) == len(chunks) > 2
    assert [w.tolist() for w in fetched] == [w.tolist() for w in weights]

    registry = KeyRegistry({"n1": KEY})
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    records = [record for _, record in zip(chunks, consumer, strict=False)]
    consumer.close()
    assert [registry.verify_record(r.key, dict(r.headers), r.value) for r in records] == ["n1"] * len(chunks)

    await kafka.stop()  # stopped already: nothing to do
    with pytest.raises(RuntimeError, match="not started"):
        await kafka.fetch_model(kafka_io.model_ref(topic, positions), session_id="s", server_round=2)
