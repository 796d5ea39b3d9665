import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from tests.integration.harness import Federation

KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker scripts/test.sh started. Missing broker = failure, never a silent skip."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=15_000)
        admin.list_topics()
        admin.close()
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing
        pytest.fail(f"no Kafka broker answers at {KAFKA_BOOTSTRAP} (scripts/test.sh starts one): {exc!r}")
    return KAFKA_BOOTSTRAP


@pytest.fixture
def federation(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Federation]:
    fed = Federation(tmp_path, kafka_bootstrap)
    try:
        yield fed
    finally:
        fed.close()
