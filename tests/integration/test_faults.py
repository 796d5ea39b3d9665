"""Fault injection against real processes: a real broker, a real server, real nodes (issue: survive faults).

Every test ends with the same two checks on the whole session:
* nothing accepted was lost: every round's published model is the FedAvg of exactly the updates its
  history says were accepted (read back, signature-checked, from Kafka);
* nothing was counted twice: the same check, with the sample counts the history recorded.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import socketio
from kafka import KafkaAdminClient, KafkaProducer

from common.wire.codec import weights_digest
from common.wire.integrity import signed_headers
from common.wire.protocol import KIND_MODEL, KIND_UPDATE, Hello, RawRecord, encode_chunk, split_weights
from fl_server.strategies import weighted_average
from tests.integration.harness import (
    Federation,
    LocalBroker,
    Mallory,
    expect_clean_exit,
    fresh_proof,
    read_records,
    read_weights,
    wait_until,
)

pytestmark = pytest.mark.timeout(900)


def assert_every_round_is_fedavg_of_its_accepted_updates(federation: Federation) -> dict:
    """No accepted update lost, none counted twice: model(r+1) == FedAvg(accepted updates of round r)."""
    history = federation.history()
    updates = read_weights(federation.kafka, federation.updates_topic, federation.keys)
    models = read_weights(federation.kafka, federation.models_topic)
    for record in history["rounds"]:
        r = record["round"]
        published = models[(KIND_MODEL, "server", r + 1)][1]
        assert weights_digest(published) == record["model_sha256"], f"round {r}: published model is not the recorded"
        if record["status"] != "completed":
            assert record["model_sha256"] == record["start_model_sha256"]
            continue
        accepted = [updates[(KIND_UPDATE, node, r)] for node in record["accepted"]]
        assert [n for n, _ in accepted] == [record["num_samples"][node] for node in record["accepted"]]
        expected = weighted_average([(weights, n) for n, weights in accepted])
        for got, want in zip(published, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"round {r}")
    return history


def test_node_killed_mid_round_round_closes_with_the_rest_and_the_node_rejoins_later(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "4", "--rounds", "7", "--round-timeout", "20", "--epochs", "30",
                                     "--min-fit", "3")
    nodes = federation.start_nodes(4)
    nodes[3].wait_for_log(r"node n3 round 2: epoch 1/30", timeout_s=240)
    nodes[3].kill()
    federation.wait_for_rounds(2, timeout_s=120)
    restarted = federation.start_node("n3", "--partition", "3/4", name="n3-restarted")
    assert server.wait(400) == 0, server.log()[-3000:]
    for node in [*nodes[:3], restarted]:
        assert node.wait(60) == 0, node.log()[-3000:]

    history = assert_every_round_is_fedavg_of_its_accepted_updates(federation)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 8)) and history["status"] == "completed"
    assert rounds[1]["participants"] == ["n0", "n1", "n2", "n3"]
    assert rounds[1]["accepted"] == ["n0", "n1", "n2"] and rounds[1]["timed_out"]
    assert rounds[1]["status"] == "completed"
    rejoined = [r["round"] for r in rounds[2:] if "n3" in r["accepted"]]
    assert rejoined and rejoined == list(range(rejoined[0], 8)), rejoined  # back for good once reconnected
    assert all(r["accepted"] == r["participants"] for r in rounds if r["round"] != 2)


def test_server_killed_after_round_2_resumes_from_its_checkpoint(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "3", "--rounds", "5", "--round-timeout", "60", "--epochs", "20")
    nodes = federation.start_nodes(3)
    federation.wait_for_rounds(2, timeout_s=240)
    server.kill()
    before = federation.history()
    history_file = federation.history_dir / f"{before['session_id']}.json"
    assert len(before["rounds"]) in (2, 3)  # SIGKILL may land after round 3 was written too
    resumed = federation.start_server("--min-nodes", "3", "--resume", str(history_file), name="server-resumed")
    expect_clean_exit(resumed, nodes, server_timeout_s=400)

    history = assert_every_round_is_fedavg_of_its_accepted_updates(federation)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5] and history["status"] == "completed"
    (resume,) = history["resumes"]
    last = resume["after_round"]
    assert rounds[last - 1]["model_sha256"] == resume["model_sha256"] == rounds[last]["start_model_sha256"]
    assert all(r["accepted"] == ["n0", "n1", "n2"] for r in rounds)
    assert resumed.log().count(f"resuming at round {last + 1} of 5") == 1
    assert rounds[-1]["holdout"]["accuracy"] > rounds[0]["holdout"]["accuracy"]


def test_broker_stopped_and_restarted_mid_session(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka")
    broker.start()
    federation = Federation(tmp_path, broker.bootstrap)
    try:
        server = federation.start_server("--min-nodes", "3", "--rounds", "5", "--round-timeout", "120",
                                         "--epochs", "20")
        nodes = federation.start_nodes(3)
        federation.wait_for_rounds(2, timeout_s=240)
        mark = len(server.log())
        broker.stop()
        outage = federation.history()
        server.wait_for_log(r"WARNING|ERROR", timeout_s=120, after=mark)  # the server's Kafka clients noticed
        broker.start()
        expect_clean_exit(server, nodes, server_timeout_s=400)
        history = assert_every_round_is_fedavg_of_its_accepted_updates(federation)
        rounds = history["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5] and history["status"] == "completed"
        assert all(r["status"] == "completed" and r["accepted"] == ["n0", "n1", "n2"] for r in rounds)
        assert len(outage["rounds"]) < 5  # the outage really hit the session
        # Offsets are committed only once the round they fed is persisted: at the end, exactly the checkpoint's.
        checkpoint = json.loads((federation.history_dir / "checkpoints" / f"{history['session_id']}.json").read_text())
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        committed = admin.list_group_offsets(f"fl-server.{history['session_id']}")[f"fl-server.{history['session_id']}"]
        admin.close()
        assert {str(tp.partition): meta.offset for tp, meta in committed.items()} == checkpoint["offsets"]
        assert sum(checkpoint["offsets"].values()) >= 5 * 3 * 4  # every update record of 5 rounds x 3 nodes
    finally:
        federation.close()
        broker.stop()


def hostile_batch(mallory: Mallory, start, model: list[np.ndarray], federation: Federation) -> dict[str, RawRecord]:
    """One of each kind of bad record. Those meant to fail a later check carry a valid signature of n9, a
    registered node that never connects (so no participant is blamed for them)."""

    def n9(weights=model, server_round=None) -> RawRecord:
        return mallory.update_records(start, weights, node_id="n9", server_round=server_round)[0]

    def signed_as_n9(value: bytes) -> RawRecord:
        good = n9()
        from common.wire.integrity import MAC_HEADER, record_mac

        mac = record_mac(federation.keys.key_of("n9"), kind="update", session_id=start.session_id,
                         server_round=start.server_round, node_id="n9", record_key=b"n9", value=value)
        headers = tuple((n, mac.hex().encode() if n == MAC_HEADER else v) for n, v in good.headers)
        return RawRecord(value, b"n9", headers)

    genuine = [r for r in read_records(federation.kafka, federation.updates_topic)
               if r.key == b"n0" and b'"round":1,' in (r.value or b"")]
    truncated = json.loads(n9().value)
    truncated["data"] = truncated["data"][:-3]
    tampered = genuine[0].value.replace(b'"num_samples":', b'"num_samples":1', 1)
    return {
        "not_json": signed_as_n9(b"this is not json {"),
        "pickle": signed_as_n9(pickle.dumps({"weights": model})),
        "truncated_base64": signed_as_n9(json.dumps(truncated, separators=(",", ":")).encode()),
        "wrong_dtype": n9([w.astype(np.float64) for w in model]),
        "wrong_shape": n9([np.zeros((3, 3), np.float32), *model[1:]]),
        "oversize": signed_as_n9(b" " * 400_000),
        "huge_int": signed_as_n9(b'{"v":1,"round":' + b"9" * 5000 + b"}"),  # int() refuses > 4,300 digits
        "deep": signed_as_n9(b"[" * 100_000 + b"]" * 100_000),  # RecursionError in json.loads
        "inf_float": signed_as_n9(n9().value.replace(b'"num_samples":100', b'"num_samples":1e999')),
        "wrong_round": n9(server_round=start.server_round + 5),
        "unknown_node": mallory.update_records(start, model, node_id="intruder", key=b"i" * 32)[0],
        "bad_signature": mallory.update_records(start, model, node_id="n0", key=b"f" * 32)[0],
        "unsigned": RawRecord(genuine[0].value, b"n0", tuple(h for h in genuine[0].headers if h[0] != "fl.mac")),
        "tampered": RawRecord(tampered, genuine[0].key, genuine[0].headers),
        "replayed": genuine[0],
    }


EXPECTED_REASONS = {"bad_number": 2, "too_deep": 1, "not_json": 2, "bad_base64": 1, "dtype_mismatch": 1,
                    "shape_mismatch": 1, "oversize": 1, "wrong_round": 1, "unknown_node": 1, "bad_signature": 2,
                    "unsigned": 1, "replayed": 1, "non_finite": 2, "norm_exceeded": 1}


FLOOD_RECORDS, INBOX_BYTES = 300, 1_000_000


def flood_before_round_1(federation: Federation) -> None:
    """300 well-signed records of another session, 30 KB each (9 MB), written while the server waits for nodes."""
    (chunk,) = split_weights([np.ones(7500, np.float32)], kind=KIND_UPDATE, session_id="elsewhere", server_round=1,
                             node_id="n9", num_samples=1)
    value = encode_chunk(chunk)
    headers = signed_headers(federation.keys.key_of("n9"), chunk, value)
    producer = KafkaProducer(bootstrap_servers=federation.kafka)
    for _ in range(FLOOD_RECORDS):
        producer.send(federation.updates_topic, key=b"n9", value=value, headers=headers)
    producer.flush(timeout=60)
    producer.close()


def test_hostile_input_is_rejected_by_reason_and_changes_nothing(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "3", "--rounds", "4", "--round-timeout", "90",
                                     "--max-update-norm", "1000", "--max-record-bytes", "300000",
                                     "--inbox-bytes", str(INBOX_BYTES))
    server.wait_for_log(r"Kafka at \S+: reading", timeout_s=120)  # the consumer is positioned: it will see the flood
    flood_before_round_1(federation)
    nodes = federation.start_nodes(2)
    refused = []
    no_proof = Hello("n0", 10)
    unknown = Hello("intruder", 10, proof=fresh_proof(federation.port, b"x" * 32, "intruder"))
    for auth in (no_proof.to_wire(), unknown.to_wire()):
        client = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(f"http://127.0.0.1:{federation.port}", auth=auth, transports=["websocket"], wait_timeout=10)
        refused.append(auth["node_id"])
    mallory = Mallory(federation)
    try:
        plan = ["nan", "inf", "norm", "valid"]
        for step in plan:
            start = mallory.next_start(timeout_s=240)
            model = mallory.global_weights(start)
            if step == "inf":  # the round after round 1: n0's round-1 records exist to replay and tamper with
                mallory.publish(list(hostile_batch(mallory, start, model, federation).values()))
            poisoned = {
                "nan": [np.full_like(w, np.nan) for w in model],
                "inf": [np.full_like(w, np.inf) for w in model],
                "norm": [w + 1000.0 for w in model],
                "valid": model,
            }[step]
            records = mallory.update_records(start, poisoned)
            mallory.publish(records)
            assert mallory.ack(start, len(records))["accepted"] is True
        wait_until(lambda: mallory.ended, 120, "end_session")
        mallory.close()
        assert server.wait(240) == 0, server.log()[-3000:]
    finally:
        mallory.close()
    for node in nodes:
        assert node.wait(60) == 0, node.log()[-3000:]

    history = assert_every_round_is_fedavg_of_its_accepted_updates(federation)
    rounds = history["rounds"]
    assert [r["accepted"] for r in rounds] == [["n0", "n1"]] * 3 + [["mallory", "n0", "n1"]]
    assert [r["status"] for r in rounds] == ["completed"] * 4
    assert not any(r["timed_out"] for r in rounds)  # a participant whose signed update failed forfeits at once
    assert history["rejected_updates_total"] == EXPECTED_REASONS
    assert history["refused_connections_by_reason"] == {"unauthenticated": 1, "unknown_node": 1}, refused
    # The flood waited in Kafka, not in the server: the inbox never held more than its bound, and every
    # flooded record was still read and judged (ignored: another session's), none lost.
    inbox = history["inbox"]
    assert inbox["peak_kafka_bytes"] <= INBOX_BYTES and inbox["backpressure_waits"] >= 1, inbox
    assert sum(r["ignored_records"] for r in rounds) == FLOOD_RECORDS
