"""fl-aggregator's pure parts: signed messages, partial sums, the coordinator's coverage checks, a worker's core."""

from pathlib import Path

import numpy as np
import pytest

from common.cli import UsageError
from common.wire.codec import ArraySpec, weights_digest
from common.wire.errors import ProtocolError
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import KIND_UPDATE, RawRecord, encode_chunk, split_weights
from fl_server.aggregator.core import AggregatorCore, PartialOut
from fl_server.aggregator.messages import (
    AggregationKey,
    Assignment,
    PartialHeader,
    RoundClose,
    RoundOpen,
    Verdict,
)
from fl_server.aggregator.partial import Partial, PartitionSum, add_partials, check_partials, expected_partition
from fl_server.aggregator.plan import aggregation_key
from fl_server.collector import RoundCollector, inspect_record
from fl_server.config import ServerConfig
from fl_server.strategies import FedAdam, FedAvg, make_strategy, weighted_average

MODEL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
SPECS = tuple(ArraySpec.of(w) for w in MODEL)
KEY = AggregationKey(b"k" * 32)
NODE_KEYS = {f"n{i}": bytes([65 + i]) * 32 for i in range(6)}


def update(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(w.shape).astype(np.float32) for w in MODEL]


def records(node_id: str, weights: list[np.ndarray], *, num_samples: int, partition: int, server_round: int = 1,
            first_offset: int = 0) -> list[RawRecord]:
    out = []
    chunks = split_weights(weights, kind=KIND_UPDATE, session_id="s", server_round=server_round, node_id=node_id,
                           num_samples=num_samples, chunk_bytes=8)
    for offset, chunk in enumerate(chunks, start=first_offset):
        value = encode_chunk(chunk)
        out.append(RawRecord(value, node_id.encode(), tuple(signed_headers(NODE_KEYS[node_id], chunk, value)),
                             partition, offset))
    return out


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize("message", [
    RoundOpen("s", 3, {"a": 10, "b": 20}, SPECS, 2, sample_cap=15, max_record_bytes=1000),
    RoundClose("s", 3, {"a": "0" * 64}),
    Assignment("agg-1", 4, (0, 2)),
    Verdict("s", 3, "agg-1", 1, "a", 10, 8, "f" * 64, True, records=((1, 5), (1, 6))),
    Verdict("s", 3, "agg-1", 1, "b", 0, 0, "", False, "bad_signature"),
    PartialHeader("s", 3, "agg-1", 1, 4, 9, {"a": (8, "f" * 64)}, 8, "e" * 64, 2, {"late_update": 1}, 1, 0),
])
def test_messages_round_trip_through_their_signed_records(message):
    value = message.to_value()
    headers = dict(KEY.headers(message.kind, b"agg-1", value))
    assert KEY.verify(b"agg-1", headers, value) == message.kind
    assert type(message).from_value(value) == message


def test_a_forged_or_unsigned_aggregation_record_is_refused():
    value = RoundClose("s", 1, {}).to_value()
    headers = dict(KEY.headers("close", b"coordinator", value))
    with pytest.raises(ProtocolError) as forged:
        AggregationKey(b"x" * 32).verify(b"coordinator", headers, value)
    with pytest.raises(ProtocolError) as altered:
        KEY.verify(b"coordinator", headers, value.replace(b'"round":1', b'"round":2'))
    with pytest.raises(ProtocolError) as unsigned:
        KEY.verify(b"coordinator", {}, value)
    assert (forged.value.reason, altered.value.reason, unsigned.value.reason) == (
        "bad_signature", "bad_signature", "unsigned")


def test_hostile_message_fields_are_refused():
    bad = PartialHeader("s", 1, "agg", 0, 0, 1, {"a": (3, "f" * 64)}, 3, "e" * 64, 1).to_value()
    with pytest.raises(ProtocolError, match="weight, sha256"):
        PartialHeader.from_value(bad.replace(b'"a":[3,', b'"a":[0,'))
    with pytest.raises(ProtocolError, match="not a version"):
        RoundOpen.from_value(RoundClose("s", 1, {}).to_value())


# ------------------------------------------------------------------ partial sums


def test_partials_added_and_divided_equal_the_in_process_fedavg():
    updates = [(update(i), 10 * (i + 1)) for i in range(5)]
    split = {0: updates[:2], 1: updates[2:]}  # two partitions
    partials = []
    for partition, part in split.items():
        total = PartitionSum(SPECS)
        for index, (weights, n) in enumerate(part):
            total.fold(f"p{partition}n{index}", weights, n, weights_digest(weights))
        header = PartialHeader("s", 1, "agg", partition, 0, 1, dict(total.nodes), total.total_weight,
                               weights_digest(total.arrays()), 1)
        partials.append(Partial(header, total.arrays()))
    sums, weight = add_partials(partials)
    assert weight == sum(n for _, n in updates)
    scaled_out = FedAvg()
    scaled_out.begin_round(1, MODEL)
    assert sums is not None
    scaled_out.add_partial_sum(sums, weight)
    in_process = FedAvg()
    in_process.begin_round(1, MODEL)
    for index, (weights, n) in enumerate(updates):
        in_process.accumulate(f"n{index}", weights, n)
    for got, want, reference in zip(scaled_out.aggregate(), in_process.aggregate(), weighted_average(updates),
                                    strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got, reference, rtol=1e-6)


def test_server_optimizers_take_partial_sums_and_robust_strategies_refuse_them():
    adam = FedAdam()
    adam.begin_round(1, MODEL)
    adam.add_partial_sum([np.full((3, 2), 20.0), np.full(2, 20.0)], 10)  # mean 2.0 everywhere
    assert adam.aggregate() is not None and FedAdam.partial_sums
    median = make_strategy("median")
    assert not median.partial_sums
    with pytest.raises(ValueError, match="needs every update"):
        median.add_partial_sum([], 1)


def partial(partition, nodes, *, from_offset=0, to_offset=5, sums=None):
    arrays = sums if sums is not None else ([np.ones(s.shape) for s in SPECS] if nodes else [])
    total = sum(w for w, _ in nodes.values())
    return Partial(PartialHeader("s", 1, "agg", partition, from_offset, to_offset, nodes, total,
                                 weights_digest(arrays) if nodes else "", 1), arrays)


A, B = "a" * 64, "b" * 64


def test_coverage_check_accepts_one_partial_per_partition_covering_every_accepted_update():
    partials = {0: partial(0, {"a": (3, A)}), 1: partial(1, {})}
    assert check_partials(partials, num_partitions=2, participants={"a", "b"}, accepted={"a": A},
                          specs=SPECS, previous_to={0: 0, 1: 5}) == []


@pytest.mark.parametrize(("partials", "accepted", "expected"), [
    ({0: partial(0, {"a": (3, A)})}, {"a": A}, "no partial for partition(s) [1]"),
    ({0: partial(0, {"a": (3, A)}), 1: partial(1, {"a": (3, A)})}, {"a": A}, "node a is in the partials of"),
    ({0: partial(0, {}), 1: partial(1, {})}, {"a": A}, "the accepted update of a is in no partial"),
    ({0: partial(0, {"a": (3, B)}), 1: partial(1, {})}, {"a": A}, "another update of a"),
    ({0: partial(0, {"z": (3, A)}), 1: partial(1, {})}, {}, "z is not a participant"),
    ({0: partial(0, {}, from_offset=9), 1: partial(1, {})}, {}, "judged by no aggregator"),
    ({0: partial(0, {"a": (3, A)}, sums=[np.ones((3, 2)), np.ones(3)]), 1: partial(1, {})}, {"a": A},
     "not the model's"),
])
def test_coverage_check_names_what_is_wrong(partials, accepted, expected):
    problems = check_partials(partials, num_partitions=2, participants={"a", "b"}, accepted=accepted, specs=SPECS,
                              previous_to={0: 5, 1: 5})
    assert any(expected in p for p in problems), problems


def test_a_sum_that_does_not_match_its_digest_is_refused():
    bad = partial(0, {"a": (3, A)})
    tampered = Partial(bad.header, [s * 2 for s in bad.sums])
    assert any("announced digest" in p for p in check_partials(
        {0: tampered, 1: partial(1, {})}, num_partitions=2, participants={"a"}, accepted={}, specs=SPECS))


# ------------------------------------------------------------------ a worker's core


def run_core(core, opened, node_updates, num_partitions=2):
    """Feed every node's records to ``core`` on its own partition; returns verdicts and the close's partials."""
    core.assign(set(range(num_partitions)))
    core.open(opened)
    verdicts = []
    offsets = dict.fromkeys(range(num_partitions), 0)
    for node_id, (weights, n) in node_updates.items():
        partition = expected_partition(node_id, num_partitions)
        for record in records(node_id, weights, num_samples=n, partition=partition, first_offset=offsets[partition]):
            verdicts += core.take(partition, record.offset, inspect_record(record, keys=core.keys))
        offsets[partition] += len(records(node_id, weights, num_samples=n, partition=partition))
    return verdicts, core.close(RoundClose("s", opened.server_round, {}))


def test_core_folds_with_the_collectors_checks_and_its_partials_give_the_fedavg():
    nodes = {f"n{i}": (update(i), 5 + i) for i in range(4)}
    core = AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS))
    opened = RoundOpen("s", 1, {n: 100 for n in nodes}, SPECS, 2)
    verdicts, partials = run_core(core, opened, nodes)
    assert sorted(v.node_id for v in verdicts if v.accepted) == sorted(nodes)
    assert [p.header.partition for p in partials] == [0, 1]
    found = {p.header.partition: Partial(p.header, p.sums) for p in partials}
    assert check_partials(found, num_partitions=2, participants=set(nodes),
                          accepted={v.node_id: v.sha256 for v in verdicts}, specs=SPECS) == []
    sums, weight = add_partials(list(found.values()))
    fedavg = FedAvg()
    fedavg.begin_round(1, MODEL)
    fedavg.add_partial_sum(sums, weight)
    for got, want in zip(fedavg.aggregate(), weighted_average(list(nodes.values())), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_core_caps_weights_refuses_strangers_and_records_on_the_wrong_partition():
    core = AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS))
    core.assign({0, 1})
    core.open(RoundOpen("s", 1, {"n0": 100, "n1": 100}, SPECS, 2, sample_cap=6))
    home = expected_partition("n0", 2)
    elsewhere = 1 - home
    wrong = records("n0", update(0), num_samples=50, partition=elsewhere)[0]
    assert core.take(elsewhere, 0, inspect_record(wrong, keys=core.keys)) == []
    stranger = records("n2", update(2), num_samples=5, partition=expected_partition("n2", 2))[0]
    core.take(stranger.partition, 0, inspect_record(stranger, keys=core.keys))
    verdicts = []
    for record in records("n0", update(0), num_samples=50, partition=home, first_offset=1):
        verdicts += core.take(home, record.offset, inspect_record(record, keys=core.keys))
    assert [(v.node_id, v.num_samples, v.weight, v.accepted) for v in verdicts] == [("n0", 50, 6, True)]
    partials: list[PartialOut] = core.close(RoundClose("s", 1, {}))
    rejected = {r: c for p in partials for r, c in p.header.rejected.items()}
    assert rejected == {"wrong_partition": 1, "not_participant": 1}
    assert {p.header.partition: p.header.total_weight for p in partials}[home] == 6


def test_a_revoked_partition_is_forgotten_and_a_record_of_a_closed_round_is_late():
    core = AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS))
    core.assign({0, 1})
    core.open(RoundOpen("s", 1, {"n0": 100}, SPECS, 2))
    home = expected_partition("n0", 2)
    for record in records("n0", update(0), num_samples=5, partition=home):
        core.take(home, record.offset, inspect_record(record, keys=core.keys))
    core.revoke({home})
    partials = core.close(RoundClose("s", 1, {"n0": "0" * 64}))
    assert [p.header.partition for p in partials] == [1 - home] and not partials[0].header.nodes
    late = records("n0", update(0), num_samples=5, partition=1 - home)[0]
    assert core.take(1 - home, 9, inspect_record(late, keys=core.keys)) == []
    assert core.waiting_for_open(inspect_record(records("n0", update(0), num_samples=5, partition=0,
                                                        server_round=2)[0], keys=core.keys))


def test_coordinator_collector_takes_verdicts_once():
    collector = RoundCollector(session_id="s", server_round=1, participants=["a", "b"], expected_specs=SPECS)
    assert collector.take_verdict("a", accepted=True, num_samples=4, sha256=A, records=[(0, 1)])
    assert not collector.take_verdict("a", accepted=True, num_samples=4, sha256=A)  # a new owner repeats it
    assert collector.take_verdict("b", accepted=False, num_samples=0, sha256="", reason="non_finite")
    assert not collector.take_verdict("z", accepted=True, num_samples=1, sha256=A)
    assert collector.all_updates_in() and collector.failed == {"b": "non_finite"}
    assert [u.to_wire() for u in collector.accepted_updates] == [
        {"node": "a", "num_samples": 4, "sha256": A, "records": [[0, 1]]}]


# ------------------------------------------------------------------ which sessions may scale out


@pytest.mark.parametrize(("changes", "expected"), [
    ({"strategy": "median"}, "needs every update"),
    ({"secure_aggregation": "secagg"}, "--secure-aggregation cannot run"),
    ({"dp": "central"}, "--dp central cannot run"),
    ({"max_update_norm": 3.0}, "--max-update-norm cannot run"),
    ({"aggregator_key": None}, "--aggregators needs --aggregator-key"),
])
def test_sessions_that_cannot_be_summed_by_workers_are_refused_with_the_reason(tmp_path, changes, expected):
    key_file = tmp_path / "aggregation.key"
    key_file.write_text("ab" * 32)
    config = ServerConfig(aggregators=2, aggregator_key=key_file)
    config = ServerConfig(**{**config.__dict__, **changes})
    with pytest.raises(UsageError, match=expected):
        aggregation_key(config, make_strategy(config.strategy))


def test_the_aggregation_key_is_loaded_for_a_summable_strategy(tmp_path: Path):
    key_file = tmp_path / "aggregation.key"
    key_file.write_text("ab" * 32 + "\n")
    assert aggregation_key(ServerConfig(aggregators=2, aggregator_key=key_file), FedAvg()) is not None
    assert aggregation_key(ServerConfig(), FedAvg()) is None


# ------------------------------------------------------------------ the server's side of the results topic


def result_records(partial: PartialOut, worker: str, key: AggregationKey = KEY) -> list[RawRecord]:
    """A worker's records for one partial, as ``AggregatorWorker._publish_partial`` writes them."""
    from dataclasses import replace

    from fl_server.aggregator.worker import sum_partition_id

    header = partial.header
    chunks = list(split_weights(partial.sums, kind=KIND_UPDATE, session_id="s", server_round=header.server_round,
                                node_id=sum_partition_id(header.partition), num_samples=max(header.total_weight, 1),
                                chunk_bytes=16)) if partial.sums else []
    out = []
    for kind, value in [*(("sum", encode_chunk(c)) for c in chunks),
                        ("partial", replace(header, num_chunks=len(chunks)).to_value())]:
        out.append(RawRecord(value, worker.encode(), tuple(key.headers(kind, worker.encode(), value))))
    return out


def closing_link():
    import asyncio

    from fl_server.aggregator.link import AggregatorLink

    link = AggregatorLink(kafka="unused:0", updates_topic="u", num_partitions=2, key=KEY, session_id="s",
                          round_timeout_s=1.0)
    link._loop = asyncio.new_event_loop()  # only for call_soon_threadsafe: never run in these tests
    link._closing = (1, tuple(ArraySpec("float64", s.shape) for s in SPECS))
    return link


def test_the_server_assembles_signed_partials_and_refuses_forged_ones():
    nodes = {f"n{i}": (update(i), 5 + i) for i in range(3)}
    _, partials = run_core(AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS)),
                           RoundOpen("s", 1, {n: 100 for n in nodes}, SPECS, 2), nodes)
    link = closing_link()
    forged = result_records(partials[0], "agg-1", key=AggregationKey(b"x" * 32))
    for record in forged + [r for p in partials for r in result_records(p, "agg-1")]:
        link._on_result(record)
    link._loop.close()
    assert link.refused == {"bad_signature": len(forged)}
    assert sorted(link._partials) == [0, 1] and not link._conflicts
    for partition, got in link._partials.items():
        want = partials[partition]
        assert got.header.nodes == want.header.nodes
        for a, b in zip(got.sums, want.sums, strict=True):
            np.testing.assert_array_equal(a, b)


def test_two_different_partials_for_one_partition_are_a_conflict_that_fails_the_round():
    nodes = {f"n{i}": (update(i), 5 + i) for i in range(3)}
    _, first = run_core(AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS)),
                        RoundOpen("s", 1, {n: 100 for n in nodes}, SPECS, 2), nodes)
    fewer = dict(list(nodes.items())[:1])
    _, second = run_core(AggregatorCore("agg-2", keys=KeyRegistry(NODE_KEYS)),
                         RoundOpen("s", 1, {n: 100 for n in nodes}, SPECS, 2), fewer)
    link = closing_link()
    home = expected_partition("n0", 2)
    for record in result_records(first[home], "agg-1") + result_records(first[home], "agg-1") \
            + result_records(second[home], "agg-2"):
        link._on_result(record)
    link._loop.close()
    assert set(first[home].header.nodes) == {"n0", "n1"} and set(second[home].header.nodes) == {"n0"}
    (conflict,) = link._conflicts  # the repeat of agg-1's own partial is no conflict; agg-2's other one is
    assert "different partials from agg-1 and agg-2" in conflict and "rebalanced" in conflict


def test_records_judged_between_two_rounds_leave_no_gap_in_the_offsets():
    core = AggregatorCore("agg-1", keys=KeyRegistry(NODE_KEYS))
    core.assign({0, 1})
    core.open(RoundOpen("s", 1, {"n0": 100}, SPECS, 2))
    home = expected_partition("n0", 2)
    sent = records("n0", update(0), num_samples=5, partition=home)
    for record in sent:
        core.take(home, record.offset, inspect_record(record, keys=core.keys))
    first = {p.header.partition: p.header for p in core.close(RoundClose("s", 1, {}))}
    late = records("n0", update(0), num_samples=5, partition=home, first_offset=len(sent))[0]
    core.take(home, late.offset, inspect_record(late, keys=core.keys))  # after the close: late
    core.open(RoundOpen("s", 2, {"n0": 100}, SPECS, 2))
    second = {p.header.partition: p for p in core.close(RoundClose("s", 2, {}))}
    header = second[home].header
    assert (first[home].to_offset, header.from_offset, header.to_offset) == (len(sent), len(sent), len(sent) + 1)
    assert header.rejected == {"late_update": 1}
    partials = {p: Partial(q.header, q.sums) for p, q in second.items()}
    assert check_partials(partials, num_partitions=2, participants={"n0"}, accepted={}, specs=SPECS,
                          previous_to={p: h.to_offset for p, h in first.items()}) == []


def test_a_worker_holds_records_of_unannounced_rounds_then_judges_them(monkeypatch):
    from fl_server.aggregator import worker as worker_module
    from fl_server.aggregator.worker import AggregatorWorker, WorkerSettings

    worker = AggregatorWorker(WorkerSettings("unused:0", "u", "agg-1", "g"), keys=KeyRegistry(NODE_KEYS), key=KEY)
    round_two = inspect_record(records("n0", update(0), num_samples=5, partition=0, server_round=2)[0],
                               keys=worker.keys)
    clock = [100.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    clock[0] += 10_000
    assert worker._should_hold(round_two, 0, 7)  # no round known yet: held however long it takes
    worker.core.open(RoundOpen("s", 1, {"n0": 100}, SPECS, 2))
    assert worker._should_hold(round_two, 0, 7)  # a later round than the open one: held OPEN_WAIT_S
    clock[0] += worker_module.OPEN_WAIT_S + 1
    assert not worker._should_hold(round_two, 0, 7)  # then judged as it stands (wrong_round)
    round_one = inspect_record(records("n0", update(0), num_samples=5, partition=0)[0], keys=worker.keys)
    assert not worker._should_hold(round_one, 0, 0)
