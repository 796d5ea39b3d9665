"""SASL/PLAIN against a real broker: scripts/kafka-local.sh with KAFKA_SASL_PLAIN_USERS, on its own ports."""

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from common.transport.kafka_security import KafkaSecurity
from tests.integration.harness import LocalBroker

USER, PASSWORD = "fl-node", "fl-node-secret"
RECEIVE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("kafka-sasl"),
                         sasl_plain_users=f"{USER}:{PASSWORD},other:other-secret")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop_quietly()


def sasl_security(password: str) -> KafkaSecurity:
    return KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username=USER,
                         sasl_password=password)


def round_trip(bootstrap: str, security: KafkaSecurity) -> bytes:
    """Produce one record to a fresh topic and read it back, both clients configured by ``security``."""
    topic = f"sasl-{uuid.uuid4().hex[:12]}"
    value = uuid.uuid4().bytes
    config = security.to_client_config()
    producer = KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=15_000, **config)
    try:
        producer.send(topic, value).get(timeout=RECEIVE_TIMEOUT_S)
    finally:
        producer.close(timeout=10)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             bootstrap_timeout_ms=15_000, **config)
    try:
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    return record.value
        pytest.fail(f"no record came back from {topic} within {RECEIVE_TIMEOUT_S} s")
    finally:
        consumer.close()


def test_record_round_trips_over_sasl_plaintext(sasl_broker):
    value = round_trip(sasl_broker.sasl_bootstrap, sasl_security(PASSWORD))
    assert len(value) == 16


def test_wrong_password_is_rejected_by_the_broker(sasl_broker):
    """Outcomes, not log wording or a time budget: on the same listener, in the same test, the wrong password
    cannot bootstrap a client (kafka-python retries a failed SASL handshake until its bootstrap timeout, then
    raises), and the right one then round-trips a record."""
    config = sasl_security("not-the-password").to_client_config()
    with pytest.raises(KafkaError):
        KafkaProducer(bootstrap_servers=sasl_broker.sasl_bootstrap, bootstrap_timeout_ms=10_000, **config)
    assert len(round_trip(sasl_broker.sasl_bootstrap, sasl_security(PASSWORD))) == 16


def test_plaintext_listener_still_serves_unauthenticated_clients(sasl_broker):
    assert len(round_trip(sasl_broker.bootstrap, KafkaSecurity())) == 16
