"""fl-audit on a real session (broker, server, node processes) signed with a server key: clean, then tampered.

One session serves every check: two nodes hold the server's public key, a third holds another key and refuses
every model (untrusted_model) while the rounds go on without it. fl-audit then runs as a process of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from common.wire.server_key import ServerSigner
from fl_server.history import detail_path
from tests.integration.harness import REPO, Federation, expect_clean_exit, read_records

pytestmark = pytest.mark.timeout(600)


def fl_audit(federation: Federation, history: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fl_server.audit_cli", str(history), "--kafka", federation.kafka,
                           "--node-keys", str(federation.registry_path),
                           "--server-key", str(federation.keys_dir / "server.pub"), *args],
                          env=federation.env(), cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_a_signed_session_audits_clean_and_each_tampering_is_named(federation: Federation) -> None:
    ServerSigner.generate().save(federation.keys_dir / "server.key", federation.keys_dir / "server.pub")
    ServerSigner.generate().save(federation.keys_dir / "other.key", federation.keys_dir / "other.pub")
    server = federation.start_server("--min-nodes", "3", "--rounds", "2", "--round-timeout", "90",
                                     "--server-key", str(federation.keys_dir / "server.key"))
    nodes = [federation.start_node(f"n{i}", "--partition", f"{i}/3", "--server-public-key",
                                   str(federation.keys_dir / "server.pub")) for i in range(2)]
    wrong = federation.start_node("n2", "--partition", "2/3", "--server-public-key",
                                  str(federation.keys_dir / "other.pub"))
    expect_clean_exit(server, nodes, server_timeout_s=300)
    assert wrong.wait(60) != 0  # it never took a model: not even the final one

    history = federation.history()
    assert history is not None and history["status"] == "completed"
    for record in history["rounds"]:
        assert record["status"] == "completed" and record["accepted"] == ["n0", "n1"]
        assert record["refused_nodes"]["n2"].startswith("untrusted_model: ")  # and the round went on without it
        assert record["server_signature"] and record["accepted_updates"]
    history_file = next(federation.history_dir.glob("*.json"))

    clean = fl_audit(federation, history_file)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    rows = [line.split() for line in clean.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(row[0], row[-1]) for row in rows] == [("1", "ok"), ("2", "ok")], clean.stdout
    assert "AUDIT PASSED: 2 ok, 0 MISMATCH" in clean.stdout

    # A history edited by hand (a copy, away from its checkpoint): round 1's accuracy.
    edited_dir = federation.tmp_path / "edited"
    edited_dir.mkdir()
    edited = json.loads(history_file.read_text())
    edited["rounds"][0]["holdout"]["accuracy"] = 0.999
    (edited_dir / history_file.name).write_text(json.dumps(edited))
    shutil.copy(detail_path(history_file), edited_dir)  # the rounds' detail goes with the summary
    caught = fl_audit(federation, edited_dir / history_file.name)
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "round 1: chain (edited)" in caught.stdout and "AUDIT FAILED" in caught.stdout

    # A checkpoint whose offsets skip an update record.
    checkpoint_file = federation.history_dir / "checkpoints" / f"{history['session_id']}.json"
    checkpoint = json.loads(checkpoint_file.read_text())
    checkpoint["offsets"] = {p: o + 1 for p, o in checkpoint["offsets"].items()}
    skipping = federation.tmp_path / "skipping-checkpoint.json"
    skipping.write_text(json.dumps(checkpoint))
    caught = fl_audit(federation, history_file, "--checkpoint", str(skipping))
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "round 2: checkpoint: a resume would start at the wrong offsets" in caught.stdout

    # A tampered global-model record at the next offset of the models topic, with the server's headers copied.
    genuine = next(r for r in read_records(federation.kafka, federation.models_topic)
                   if r.header_map().get("fl.round") == b"2")
    producer = KafkaProducer(bootstrap_servers=federation.kafka)
    producer.send(federation.models_topic, key=genuine.key, value=(genuine.value or b"").replace(
        b'"data":"', b'"data":"AAAA', 1), headers=list(genuine.headers), partition=genuine.partition).get(timeout=30)
    producer.close()
    caught = fl_audit(federation, history_file)
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "round 2: models topic: forged model record" in caught.stdout
    assert "bad_model_signature" in caught.stdout
    shutil.rmtree(edited_dir)
