"""kafka-python must checksum record batches natively: the pure-Python CRC-32C made large-model rounds 5x slower."""

import logging

from common.transport import kafka_io


def test_the_native_crc32c_is_in_use():
    from kafka.record import util

    assert kafka_io.native_crc32c(), "install kafka-python[crc32c] (the crc32c package)"
    data = memoryview(b"123456789")
    assert util.calc_crc32c(data) == util.crc32c_py(data) == 0xE3069283  # the CRC-32C check value


def test_a_missing_native_crc32c_is_a_warning_at_start_up(monkeypatch, caplog):
    monkeypatch.setattr(kafka_io, "native_crc32c", lambda: False)
    with caplog.at_level(logging.WARNING, logger="common.transport.kafka_io"):
        kafka_io.log_crc32c_implementation()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
