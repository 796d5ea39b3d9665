"""Paillier aggregation end to end: a real broker, fl-server, fl-decryptor and three fl-node processes on the
digits logistic regression; the nodes' clear updates (local files, ``fl_node.testing``) check the published model
against plain FedAvg (the same weights within the quantization bound, hence the same accuracy) and fl-audit
re-checks both rounds from Kafka and the decryptor's signed sums. Then the test
talks to the running decryptor itself: it refuses one node's ciphertext, a sum that is not the topic's, and a
second decryption of a round."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer, TopicPartition

from common.paillier.keys import PaillierPrivate
from common.paillier.messages import DecryptedSum, DecryptRequest
from common.paillier.packing import ciphertext_bytes, ciphertexts_to_array
from common.transport.kafka_io import make_consumer
from common.wire.integrity import signed_headers
from common.wire.protocol import KIND_MODEL, KIND_UPDATE, encode_chunk, split_weights
from fl_node.testing import CLEAR_UPDATES_ENV
from tests.integration.harness import Federation, free_port, read_weights, wait_until
from tests.integration.test_secure_aggregation import clear_fedavg

KEY_BITS = 1024  # this test only: small keys keep it fast (use 3072, fl-keys' default, for real)
NODES = ["n0", "n1", "n2"]


def post(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def end_offsets(federation: Federation) -> dict[int, int]:
    consumer = make_consumer(federation.kafka, "paillier-test")
    try:
        partitions = [TopicPartition(federation.updates_topic, p)
                      for p in sorted(consumer.partitions_for_topic(federation.updates_topic) or [])]
        return {tp.partition: int(offset) for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def test_paillier_rounds_equal_plain_fedavg_and_the_decryptor_decrypts_only_the_topics_sums(
        federation: Federation, tmp_path: Path) -> None:
    clear_dir = tmp_path / "clear"
    clear_dir.mkdir()
    key = PaillierPrivate.generate(KEY_BITS)
    private_path, public_path = federation.keys_dir / "paillier.key.json", federation.keys_dir / "paillier.pub.json"
    key.save(private_path, public_path)
    url = f"http://127.0.0.1:{free_port()}"
    decryptor = federation._start("decryptor", "fl_server.decryptor_cli", [
        "--key", str(private_path), "--node-keys", str(federation.registry_path), "--listen", url[len("http://"):],
        "--state-file", str(tmp_path / "decrypted.json")])

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return json.loads(response.read())["key_id"] == key.public.key_id
        except OSError:
            return False

    server = federation.start_server("--min-nodes", "3", "--rounds", "2", "--model", "logreg",
                                     "--secure-aggregation", "paillier", "--paillier-public-key", str(public_path),
                                     "--paillier-decryptor", url)
    nodes = [federation.start_node(node, "--partition", f"{i}/3", "--paillier-public-key", str(public_path),
                                   env={CLEAR_UPDATES_ENV: str(clear_dir)}) for i, node in enumerate(NODES)]
    wait_until(healthy, 60, "fl-decryptor's /health")  # the server needs it only once the round's updates are in
    assert server.wait(300) == 0, server.log()[-3000:]
    for proc in nodes:
        assert proc.wait(60) == 0, proc.log()[-3000:]

    history = federation.history()
    assert history is not None and history["status"] == "completed", decryptor.log()[-3000:]
    models = read_weights(federation.kafka, federation.models_topic)
    for record in history["rounds"]:
        secure = record["secure_aggregation"]
        assert record["status"] == "completed" and record["num_samples"] == {}
        assert secure["protocol"] == "paillier" and secure["key_bits"] == KEY_BITS
        assert secure["survivors"] == NODES and secure["packing"]["headroom_bits"] == 2
        assert secure["packing"]["values_per_ciphertext"] == (KEY_BITS - 2) // secure["packing"]["slot_bits"]
        assert secure["ciphertext_bytes"] == secure["ciphertexts_per_update"] * ciphertext_bytes(KEY_BITS)
        assert secure["timings_s"]["encrypt_max"] > 0 and secure["timings_s"]["decrypt"] > 0
        # The published model is the plain FedAvg of the nodes' clear updates, within the recorded bound.
        reference, plain = clear_fedavg(clear_dir, record["round"], NODES)
        _, start = models[(KIND_MODEL, "server", record["round"])]
        _, published = models[(KIND_MODEL, "server", record["round"] + 1)]
        for got, want in zip(start, reference, strict=True):
            np.testing.assert_array_equal(got, want)
        bound = secure["quantization_error_bound"]
        assert 0 < bound < 1e-4
        for got, want in zip(published, plain, strict=True):
            np.testing.assert_allclose(got, want, atol=bound + 1e-6, rtol=0)
    # Same weights as plain FedAvg (above) means the same accuracy; the model learns.
    first, last = (record["holdout"]["accuracy"] for record in history["rounds"])
    assert last > first - 0.05 and last > 0.5

    # Nothing on the updates topic is a clear update: every one is a single uint8 layer of ciphertexts.
    updates = read_weights(federation.kafka, federation.updates_topic, keys=federation.keys)
    assert sorted(updates) == [(KIND_UPDATE, n, r) for n in NODES for r in (1, 2)]
    assert all(len(arrays) == 1 and arrays[0].dtype == np.uint8 for _, arrays in updates.values())

    # fl-audit, from Kafka and the history alone: the collection, the decryptor's signed sum, the published models.
    audit = subprocess.run([sys.executable, "-m", "fl_server.audit_cli", str(next(federation.history_dir.glob(
        "*.json"))), "--kafka", federation.kafka, "--node-keys", str(federation.registry_path)],
        env=federation.env(), capture_output=True, text=True, timeout=120, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "AUDIT PASSED: 2 ok, 0 MISMATCH, 0 not checked" in audit.stdout, audit.stdout

    # The running decryptor, asked directly. The test plays two nodes (it holds their keys) in a round of its
    # own: n0 encrypts 5, n1 encrypts 7.
    session, server_round = history["session_id"], 99
    public = key.public.public_key
    before = end_offsets(federation)
    layers = {"n0": ciphertexts_to_array([public.raw_encrypt(5)], KEY_BITS),
              "n1": ciphertexts_to_array([public.raw_encrypt(7)], KEY_BITS)}
    producer = KafkaProducer(bootstrap_servers=federation.kafka)
    for node, layer in layers.items():
        for chunk in split_weights([layer], kind=KIND_UPDATE, session_id=session, server_round=server_round,
                                   node_id=node, num_samples=1):
            value = encode_chunk(chunk)
            producer.send(federation.updates_topic, key=node.encode(), value=value,
                          headers=signed_headers(federation.keys.key_of(node) or b"", chunk, value))
    producer.flush(timeout=30)
    producer.close()
    after = end_offsets(federation)
    spans = {p: (before.get(p, 0), end) for p, end in after.items()}
    ciphertext = {node: int.from_bytes(layer[0].tobytes(), "big") for node, layer in layers.items()}
    honest_sum = ciphertext["n0"] * ciphertext["n1"] % public.nsquare

    def ask(nodes: tuple[str, ...], ciphertexts: tuple[int, ...]) -> tuple[int, dict[str, Any]]:
        request = DecryptRequest(session, server_round, key.public.key_id, nodes, spans, ciphertexts)
        return post(url + "/decrypt", request.to_wire(ciphertext_bytes(KEY_BITS)))

    status, refused = ask(("n0",), (ciphertext["n0"],))  # one node's ciphertext
    assert (status, refused["type"], refused["reason"]) == (409, "paillier/refused", "too_few_updates")
    status, refused = ask(("n0", "n1"), (ciphertext["n0"],))  # names two, sends one node's ciphertext
    assert (status, refused["reason"]) == (409, "sum_mismatch")
    status, refused = ask(("n0", "n1"), (honest_sum * public.raw_encrypt(1) % public.nsquare,))  # 13, not 12
    assert (status, refused["reason"]) == (409, "sum_mismatch")
    status, answer = ask(("n0", "n1"), (honest_sum,))
    assert status == 200
    decrypted = DecryptedSum.from_wire(answer)
    assert decrypted.plaintexts == (12,) and decrypted.verify(key.public.decryptor)
    status, refused = ask(("n0", "n1"), (honest_sum,))
    assert (status, refused["reason"]) == (409, "already_decrypted")
    assert decryptor.popen.poll() is None  # refusals never stop it
    state = json.loads((tmp_path / "decrypted.json").read_text())  # what a restarted decryptor still refuses
    assert state == {"decrypted": [[session, 1], [session, 2], [session, 99]]}
