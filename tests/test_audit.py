"""fl-audit's checks, on sessions played in process with the server's own collector, round record and history
over an in-memory pair of topics: a clean session passes; every kind of tampering is named, with its round."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.transport.kafka_io import model_ref
from common.wire.codec import ArraySpec, weights_digest
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import KIND_MODEL, KIND_UPDATE, RawRecord, encode_chunk, split_weights
from common.wire.server_key import ServerSigner
from fl_server.audit.audit import MISMATCH, OK, AuditReport, MissingRecords, audit_session
from fl_server.audit.replay import offset_problems
from fl_server.chain import link_round
from fl_server.collector import RoundCollector
from fl_server.config import ServerConfig
from fl_server.history import SessionHistory, load_history
from fl_server.rounds import RoundState, round_record
from fl_server.strategies import make_strategy

SESSION = "s-audit"
NODES = {"n0": (0, 10), "n1": (1, 30)}  # node -> (partition of its records, samples)
KEYS = KeyRegistry({"n0": b"k" * 32, "n1": b"j" * 32})
SIGNER = ServerSigner.generate()
START = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(3, np.float32)]


class Topics:
    """Two topics in memory, as ``fl_server.audit.audit.RecordSource`` reads them."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[RawRecord]] = defaultdict(list)

    def append(self, topic: str, partition: int, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> int:
        log = self.logs[(topic, partition)]
        log.append(RawRecord(value, key, tuple(headers), partition, len(log)))
        return len(log) - 1

    def records(self, topic: str, partition: int, start: int, end: int) -> Iterator[RawRecord]:
        log = self.logs[(topic, partition)]
        if end > len(log):
            raise MissingRecords(f"{topic}[{partition}] ends at {len(log)}")
        yield from log[start:end]

    def end_offset(self, topic: str, partition: int) -> int:
        return len(self.logs[(topic, partition)])

    def offsets(self) -> dict[int, int]:
        return {p: len(self.logs[("updates", p)]) for p in (0, 1)}


def publish_model(topics: Topics, server_round: int, weights: list[np.ndarray],
                  signer: ServerSigner | None = SIGNER) -> dict[str, Any]:
    digests, positions = [], []
    for chunk in split_weights(weights, kind=KIND_MODEL, session_id=SESSION, server_round=server_round,
                               node_id="server", num_samples=0, chunk_bytes=16):
        value = encode_chunk(chunk)
        headers = signer.model_headers(chunk, value) if signer else chunk.headers()
        positions.append((0, topics.append("models", 0, value, b"server", headers)))
        digests.append(hashlib.sha256(value).hexdigest())
    return model_ref("models", positions, digests, weights_digest(weights)).to_wire()


def publish_update(topics: Topics, node: str, server_round: int, weights: list[np.ndarray]) -> list[RawRecord]:
    partition, samples = NODES[node]
    key = KEYS.key_of(node)
    assert key is not None
    out = []
    for chunk in split_weights(weights, kind=KIND_UPDATE, session_id=SESSION, server_round=server_round, node_id=node,
                               num_samples=samples, chunk_bytes=16):
        value = encode_chunk(chunk)
        offset = topics.append("updates", partition, value, node.encode(), signed_headers(key, chunk, value))
        out.append(topics.logs[("updates", partition)][offset])
    return out


@dataclass
class Play:
    """How the in-process 'server' plays the session; the defaults are an honest server."""

    rounds: int = 3
    strategy: str = "fedavg"
    skip: tuple[int, str] | None = None  # (round, node): the server skips that node's records (offsets jump)
    cheat: int | None = None  # round whose published model is not the aggregate (+1 everywhere)
    forged_update: int | None = None  # round with an update record signed with a wrong key (rightly rejected)
    strategy_params: dict[str, Any] = field(default_factory=dict)


def play(tmp_path: Path, how: Play | None = None) -> tuple[dict[str, Any], Topics]:
    """A session run with the server's collector, round record and history (the coordinator's steps in order)."""
    how = how or Play()
    topics = Topics()
    settings = ServerConfig(rounds=how.rounds, strategy=how.strategy, updates_topic="updates",
                            models_topic="models").history_settings()
    strategy = make_strategy(how.strategy, **how.strategy_params)
    settings.update(session_id=SESSION, strategy_params=strategy.params(), authenticated=True)  # as session.py does
    history = SessionHistory.create(tmp_path, SESSION, settings)
    history.sign_with(SIGNER)
    weights, seen, rng = START, {}, np.random.default_rng(0)
    offsets = topics.offsets()
    for server_round in range(1, how.rounds + 1):
        skipped = []
        if how.skip is not None and how.skip[0] == server_round:
            skipped = publish_update(topics, how.skip[1], server_round, [w + 1 for w in weights])
            offsets = topics.offsets()  # the server moves past the records it skips
        state = RoundState(server_round, "t0", 0.0, 2, sorted(NODES), 1, weights_digest(weights), RoundCollector(
            session_id=SESSION, server_round=server_round, participants=list(NODES),
            expected_specs=[ArraySpec.of(w) for w in weights], keys=KEYS, seen=seen,
            declared_samples={n: s for n, (_, s) in NODES.items()}))
        state.offsets_from = dict(offsets)
        state.start_model_ref = publish_model(topics, server_round, weights)
        strategy.begin_round(server_round, weights)
        records = []
        if how.forged_update == server_round:  # someone without n0's key writes a record in its name
            chunk = next(split_weights(weights, kind=KIND_UPDATE, session_id=SESSION, server_round=server_round,
                                       node_id="n0", num_samples=10, chunk_bytes=16))
            value = encode_chunk(chunk)
            offset = topics.append("updates", 0, value, b"n0", signed_headers(b"x" * 32, chunk, value))
            records.append(topics.logs[("updates", 0)][offset])
        for node in ("n1", "n0"):  # arrival order: n1 first, so the fold order is not the sorted order
            if skipped and node == how.skip[1]:  # type: ignore[index]
                continue
            records += publish_update(topics, node, server_round,
                                      [(w + rng.normal(size=w.shape)).astype(w.dtype) for w in weights])
        for record in records:
            update = state.collector.offer_record(record)
            if update is not None:
                strategy.accumulate(update.node_id, update.weights, update.num_samples)
        new = strategy.aggregate()
        assert new is not None
        if how.cheat == server_round:
            new = [w + 1 for w in new]
        offsets = topics.offsets()
        state.offsets, state.weights, state.model_digest = dict(offsets), new, weights_digest(new)
        history.add_round(round_record(state, {"accuracy": 0.5 + server_round / 10}, 0.0))
        weights = new
    history.set_final_model_ref(publish_model(topics, how.rounds + 1, weights))
    history.finish("completed")
    return load_history(history.path), topics  # the summary and its rounds' detail


def audit(document: dict[str, Any], topics: Topics, **kwargs: Any) -> AuditReport:
    kwargs.setdefault("keys", KEYS)
    kwargs.setdefault("server_key", SIGNER.public)
    return audit_session(document, topics, **kwargs)


def verdicts(report: AuditReport) -> list[str]:
    return [r.verdict for r in report.rounds]


def problems_of(report: AuditReport, server_round: int) -> str:
    return "\n".join(report.rounds[server_round - 1].problems)


def resign(document: dict[str, Any], signer: ServerSigner | None) -> None:
    """Re-chain (and re-sign) every round, as someone who edited the history and wants the digests to agree."""
    from fl_server.chain import genesis_digest

    prev = genesis_digest(SESSION, document["config"])
    for index, record in enumerate(document["rounds"]):
        document["rounds"][index] = link_round(record, prev, signer)
        prev = document["rounds"][index]["round_digest"]


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam", "median", "trimmed_mean"])
def test_an_honest_session_audits_clean_round_by_round(tmp_path, strategy):
    document, topics = play(tmp_path, Play(strategy=strategy))
    report = audit(document, topics)
    assert verdicts(report) == [OK, OK, OK] and report.ok
    assert [u["node"] for u in document["rounds"][0]["accepted_updates"]] == ["n1", "n0"]  # the fold order


def test_rejected_records_are_rightly_rejected(tmp_path):
    document, topics = play(tmp_path, Play(forged_update=2))
    assert document["rounds"][1]["rejected_updates_by_reason"] == {"bad_signature": 1}
    assert audit(document, topics).ok
    document["rounds"][1]["rejected_updates_by_reason"] = {}  # hide the rejection, re-sign with the real key
    resign(document, SIGNER)
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK]
    assert "rejected: the history says {}, the records give {'bad_signature': 1}" in problems_of(report, 2)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: r["holdout"].update(accuracy=0.99), "chain (edited)"),
    (lambda r: (r["accepted"].remove("n0"), r["num_samples"].pop("n0")), "chain (edited)"),
])
def test_an_edited_history_is_caught_with_its_round(tmp_path, edit, expected):
    document, topics = play(tmp_path)
    edit(document["rounds"][1])
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK]
    assert expected in problems_of(report, 2)


def test_an_accepted_node_removed_and_the_chain_rebuilt_without_the_key_fails_the_signatures(tmp_path):
    document, topics = play(tmp_path)
    record = document["rounds"][1]
    record["accepted"].remove("n0")
    record["accepted_updates"] = [u for u in record["accepted_updates"] if u["node"] != "n0"]
    resign(document, ServerSigner.generate())  # digests agree again, but signed with a key that is not the server's
    report = audit(document, topics)
    assert all(v == MISMATCH for v in verdicts(report))
    assert "chain (bad_signature)" in problems_of(report, 1)
    assert "accepted: the history says ['n1'], the records give ['n0', 'n1']" in problems_of(report, 2)
    unsigned = json.loads(json.dumps(document))
    resign(unsigned, None)  # or without any key: then the rounds carry no signature at all
    assert "chain (unsigned)" in problems_of(audit(unsigned, topics), 1)


def test_a_removed_round_breaks_the_link_of_the_next(tmp_path):
    document, topics = play(tmp_path)
    del document["rounds"][1]
    report = audit(document, topics)
    assert report.rounds[1].server_round == 3
    assert "chain (broken_link)" in "\n".join(report.rounds[1].problems)


def test_a_forged_signature_on_a_round_is_named(tmp_path):
    document, topics = play(tmp_path)
    record = document["rounds"][2]
    record["server_signature"] = ServerSigner.generate().sign_round(record["round_digest"])
    report = audit(document, topics)
    assert verdicts(report) == [OK, OK, MISMATCH]
    assert "chain (bad_signature)" in problems_of(report, 3)


def test_a_published_model_that_is_not_the_aggregate_is_caught_even_when_signed(tmp_path):
    document, topics = play(tmp_path, Play(cheat=2))
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK]  # round 3 starts from the (signed) model round 2 published
    assert "model: the re-computed aggregate" in problems_of(report, 2)
    assert audit(document, topics, tolerance=1.5).ok  # a tolerance larger than the cheat lets it pass


def test_a_tampered_model_record_at_the_next_offset_is_named_with_its_round(tmp_path):
    document, topics = play(tmp_path)
    genuine = topics.logs[("models", 0)][document["rounds"][1]["start_model_ref"]["start_offset"]]
    value = genuine.value.replace(b'"data":"', b'"data":"AAAA', 1)
    topics.append("models", 0, value, genuine.key or b"", list(genuine.headers))  # the server's headers, copied
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK]
    assert "forged model record" in problems_of(report, 2) and "bad_model_signature" in problems_of(report, 2)


def test_a_model_record_changed_in_place_fails_its_round(tmp_path):
    document, topics = play(tmp_path)
    log = topics.logs[("models", 0)]
    offset = document["rounds"][2]["start_model_ref"]["start_offset"]
    old = log[offset]
    log[offset] = RawRecord(old.value.replace(b'"data":"', b'"data":"AAAA', 1), old.key, old.headers, 0, offset)
    report = audit(document, topics)
    assert report.rounds[2].verdict == MISMATCH
    assert "start model:" in problems_of(report, 3)


def test_offsets_that_skip_an_update_are_caught_with_the_round(tmp_path):
    document, topics = play(tmp_path, Play(skip=(2, "n1")))  # a signed, consistent history: the server cheated
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK]
    assert "offsets: partition 1: offsets" in problems_of(report, 2) and "never read" in problems_of(report, 2)


def test_a_checkpoint_that_skips_an_update_is_caught(tmp_path):
    document, topics = play(tmp_path)
    last = document["rounds"][-1]
    checkpoint = {"completed_round": 3, "weights_sha256": last["model_sha256"],
                  "offsets": {p: o + 1 for p, o in last["update_offsets"]["to"].items()}}
    assert audit(document, topics, checkpoint={**checkpoint, "offsets": last["update_offsets"]["to"]}).ok
    report = audit(document, topics, checkpoint=checkpoint)
    assert verdicts(report) == [OK, OK, MISMATCH]
    assert "checkpoint: a resume would start at the wrong offsets" in problems_of(report, 3)


def test_an_update_counted_twice_is_caught(tmp_path):
    document, topics = play(tmp_path)
    record = document["rounds"][0]
    record["accepted_updates"].append(dict(record["accepted_updates"][0]))
    resign(document, SIGNER)
    report = audit(document, topics)
    assert "double counting: the update of n1 is counted more than once" in problems_of(report, 1)


def test_records_gone_from_kafka_fail_the_round(tmp_path):
    document, topics = play(tmp_path)
    del topics.logs[("updates", 0)][-1]  # retention (or anything) removed the last record of partition 0
    report = audit(document, topics)
    assert report.rounds[2].verdict == MISMATCH and "updates:" in problems_of(report, 3)


def test_a_round_claiming_secure_aggregation_without_its_transcript_is_a_mismatch(tmp_path):
    document, topics = play(tmp_path)
    document["rounds"][1]["secure_aggregation"] = {"threshold": 2}  # no vector length, no transcript
    resign(document, SIGNER)
    report = audit(document, topics)
    assert report.rounds[1].verdict == MISMATCH and "vector_length" in problems_of(report, 2)


def test_without_node_keys_only_the_accepted_updates_are_re_read(tmp_path):
    document, topics = play(tmp_path, Play(forged_update=1))
    report = audit(document, topics, keys=None)
    assert report.ok and all(v.startswith("not_checked: node signatures") for v in verdicts(report))


@pytest.mark.parametrize(("previous", "current", "expected"), [
    ({"0": 5, "1": 2}, {"0": 5, "1": 2}, []),
    ({"0": 5}, {"0": 7}, ["partition 0: offsets 5..6 were never read (2 record(s) skipped after x)"]),
    ({"0": 5}, {"0": 4}, ["partition 0: offsets 4..4 were read again after x"]),
])
def test_offset_problems(previous, current, expected):
    assert offset_problems(previous, current, what="x") == expected


def test_a_round_naming_another_strategy_is_caught(tmp_path):
    document, topics = play(tmp_path, Play(strategy="fedavgm"))
    document["rounds"][1]["strategy"]["params"]["server_momentum"] = 0.0
    resign(document, SIGNER)
    report = audit(document, topics)
    assert verdicts(report) == [OK, MISMATCH, OK] and "strategy: the round names" in problems_of(report, 2)


@pytest.mark.parametrize("garbage", [{"from": {"0": "x"}, "to": {"0": 3}}, {"from": [], "to": 5}, "offsets"])
def test_a_hostile_round_record_is_a_named_mismatch_not_a_crash(tmp_path, garbage):
    document, topics = play(tmp_path)
    document["rounds"][1]["update_offsets"] = garbage
    report = audit(document, topics)
    assert report.rounds[1].verdict == MISMATCH and report.rounds[0].verdict == OK


def test_a_resumed_history_continues_the_chain(tmp_path):
    from dataclasses import replace

    from fl_server.chain import chain_problems
    from fl_server.records import ResumeMark
    from tests.test_records import RECORD

    history = SessionHistory.create(tmp_path, "s1", {"strategy": "fedavg", "strategy_params": {}})
    history.sign_with(SIGNER)
    history.add_round(replace(RECORD, server_round=1))
    checkpointed = json.loads(json.dumps(history.document))  # as the checkpoint keeps it
    again = SessionHistory.resumed(history.path, checkpointed, ResumeMark("t", 1, "ab", {}))
    again.sign_with(SIGNER)
    again.add_round(replace(RECORD, server_round=2))
    assert chain_problems(again.rounds, session_id="s1", config=again.config, key=SIGNER.public) == []
    assert again.rounds[1]["prev_round_digest"] == again.rounds[0]["round_digest"]
