import json
import pickle

import numpy as np
import pytest

from common.wire.assembly import WeightAssembler
from common.wire.codec import ArraySpec
from common.wire.protocol import (
    DEFAULT_CHUNK_BYTES,
    KIND_UPDATE,
    Hello,
    ProtocolError,
    StartRound,
    TrainConfig,
    UpdateAck,
    decode_chunk,
    encode_chunk,
    split_weights,
)

WEIGHTS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array([0.5, -0.5], dtype=np.float32),
    np.zeros((0, 3), dtype=np.float32),
    np.array(7.0, dtype=np.float64),
]


def chunks_of(weights, chunk_bytes=8, **overrides):
    meta = dict(kind=KIND_UPDATE, session_id="s1", server_round=2, node_id="n1", num_samples=10)
    meta.update(overrides)
    return list(split_weights(weights, chunk_bytes=chunk_bytes, **meta))


def test_split_encode_decode_assemble_round_trip_in_any_order_with_duplicates():
    records = [encode_chunk(c) for c in chunks_of(WEIGHTS)]
    assert len(records) > len(WEIGHTS)  # the 48-byte layer was really split
    assembler = WeightAssembler([ArraySpec.of(w) for w in WEIGHTS])
    rng = np.random.default_rng(1)
    fresh = [assembler.add(decode_chunk(records[i])) for i in rng.permutation(len(records))]
    duplicates = [assembler.add(decode_chunk(r)) for r in records[:3]]
    assert all(fresh) and not any(duplicates)
    assert assembler.complete and assembler.num_samples == 10
    for got, want in zip(assembler.result(), WEIGHTS, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_chunk_record_is_json_and_below_kafka_default_limit():
    big = [np.zeros((1024, 1024), dtype=np.float32)]  # 4 MiB layer
    records = [encode_chunk(c) for c in chunks_of(big, chunk_bytes=DEFAULT_CHUNK_BYTES)]
    assert len(records) == 8
    assert max(len(r) for r in records) < 1_048_588
    assert json.loads(records[0])["num_chunks"] == 8


def valid_record(**changes):
    obj = json.loads(encode_chunk(chunks_of(WEIGHTS[:1], chunk_bytes=1024)[0]))
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not json", "not_json"),
        (b"{truncated", "not_json"),
        (None, "not_json"),
        (pickle.dumps({"weights": [1, 2]}), "not_json"),
        (b"[1, 2]", "bad_schema"),
        (valid_record(v=99), "bad_version"),
        (valid_record(kind="shell"), "bad_schema"),
        (valid_record(node_id="../etc"), "bad_node_id"),
        (valid_record(node_id="server"), "bad_node_id"),
        (valid_record(round=True), "bad_schema"),
        (valid_record(round=-1), "bad_schema"),
        (valid_record(layer=5), "bad_schema"),
        (valid_record(num_samples=0), "bad_schema"),
        (valid_record(dtype="object"), "bad_dtype"),
        (valid_record(shape=[2]), "bad_length"),
        (valid_record(data="@@@"), "bad_base64"),
        (b" " * (5 * 1024 * 1024), "oversize"),
    ],
)
def test_malformed_records_are_rejected_with_reason(value, reason):
    with pytest.raises(ProtocolError) as info:
        decode_chunk(value)
    assert info.value.reason == reason


def test_assembler_rejects_inconsistent_and_conflicting_chunks():
    specs = [ArraySpec.of(w) for w in WEIGHTS]
    chunk = chunks_of(WEIGHTS)[0]
    assembler = WeightAssembler(specs)
    assembler.add(chunk)
    with pytest.raises(ProtocolError) as conflicting:
        assembler.add(chunks_of([WEIGHTS[0] + 1, *WEIGHTS[1:]])[0])
    assert conflicting.value.reason == "conflicting_duplicate"
    with pytest.raises(ProtocolError) as samples:
        assembler.add(chunks_of(WEIGHTS, num_samples=11)[1])
    assert samples.value.reason == "inconsistent_chunk"
    with pytest.raises(ProtocolError) as shape:
        WeightAssembler(specs).add(chunks_of([np.zeros((4, 3), np.float32), *WEIGHTS[1:]])[0])
    assert shape.value.reason == "shape_mismatch"


def test_control_messages_round_trip_and_validate():
    hello = Hello("node-1", 100)
    assert Hello.from_wire(hello.to_wire()) == hello
    ack = UpdateAck("s1", 3, "node-1", 100, 4, {"loss": 0.5}, {"train": 1.0})
    assert UpdateAck.from_wire(ack.to_wire()) == ack
    for bad in (None, {"node_id": "x", "num_samples": 0, "protocol": 1}, {"node_id": "a b", "num_samples": 1,
                                                                          "protocol": 1}):
        with pytest.raises(ProtocolError):
            Hello.from_wire(bad)
    with pytest.raises(ProtocolError):
        UpdateAck.from_wire({**ack.to_wire(), "metrics": {"loss": float("nan")}})
    with pytest.raises(ProtocolError):
        StartRound.from_wire({"session_id": "s1", "round": 1, "config": {}, "model": {}})


@pytest.mark.parametrize(("wire", "mu"), [
    ({"epochs": 1, "batch_size": 8, "learning_rate": 0.1}, 0.0),  # absent = 0.0 (FedAvg, older servers)
    ({"epochs": 1, "batch_size": 8, "learning_rate": 0.1, "proximal_mu": 0.5}, 0.5),
    ({"epochs": 1, "batch_size": 8, "learning_rate": 0.1, "proximal_mu": 0}, 0.0),
])
def test_train_config_proximal_mu_is_optional(wire, mu):
    config = TrainConfig.from_wire(wire)
    assert config.proximal_mu == mu
    assert TrainConfig.from_wire(config.to_wire()) == config
    assert ("proximal_mu" in config.to_wire()) == (mu > 0)


@pytest.mark.parametrize("mu", [-0.5, float("nan"), float("inf"), "0.1", True])
def test_train_config_refuses_bad_proximal_mu(mu):
    with pytest.raises(ProtocolError):
        TrainConfig.from_wire({"epochs": 1, "batch_size": 8, "learning_rate": 0.1, "proximal_mu": mu})


def test_train_config_constructor_refuses_negative_mu():
    with pytest.raises(ValueError, match="proximal_mu"):
        TrainConfig(1, 8, 0.1, proximal_mu=-1.0)


def test_train_config_dp_sgd_fields_round_trip_and_are_absent_when_off():
    config = TrainConfig(2, 16, 0.05, dp_sgd_clip=1.0, dp_sgd_noise_multiplier=1.1, dp_delta=1e-5)
    wire = config.to_wire()
    assert {k: wire[k] for k in ("dp_sgd_clip", "dp_sgd_noise_multiplier", "dp_delta")} == {
        "dp_sgd_clip": 1.0, "dp_sgd_noise_multiplier": 1.1, "dp_delta": 1e-5}
    assert TrainConfig.from_wire(wire) == config
    assert not {"dp_sgd_clip", "dp_sgd_noise_multiplier", "dp_delta"} & set(TrainConfig(2, 16, 0.05).to_wire())


@pytest.mark.parametrize("delta", [1.0, 2.0, -1e-5, float("nan")])
def test_train_config_refuses_a_delta_outside_0_1(delta):
    with pytest.raises(ProtocolError):
        TrainConfig.from_wire({"epochs": 1, "batch_size": 8, "learning_rate": 0.1, "dp_sgd_clip": 1.0,
                               "dp_delta": delta})
    with pytest.raises(ValueError, match="dp_delta"):
        TrainConfig(1, 8, 0.1, dp_delta=delta)


def test_a_version_1_node_is_refused_at_connect_while_version_1_records_still_read():
    """Session protocol 2 (the model spec once per session) refuses a version-1 hello by name; the weight-chunk
    record format did not change, so records already on a topic (what fl-audit replays) still decode."""
    from common import PROTOCOL_VERSION, SESSION_PROTOCOL_VERSION

    assert (SESSION_PROTOCOL_VERSION, PROTOCOL_VERSION) == (2, 1)
    with pytest.raises(ProtocolError) as refused:
        Hello.from_wire({"node_id": "n1", "num_samples": 5, "protocol": 1})
    assert refused.value.reason == "bad_version"
    assert Hello.from_wire({"node_id": "n1", "num_samples": 5, "protocol": 2}).num_samples == 5
