"""Round-loop logic with fake transport and fake nodes (no network, no TensorFlow)."""

import asyncio
from pathlib import Path

import numpy as np

from common.wire.protocol import (
    KIND_UPDATE,
    ModelRef,
    NodeRefusal,
    RawRecord,
    StartRound,
    TrainConfig,
    UpdateAck,
    encode_chunk,
    split_weights,
)
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg

INITIAL = [np.zeros(3, np.float32)]


class FakeFederation:
    """Plays the nodes: answers start_round with an update (weights = round number * node factor)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour  # node_id -> "ok" | "silent"
        self.coordinator: Coordinator | None = None
        self.starts: list[tuple[str, int]] = []
        self.configs: list[TrainConfig] = []  # every start_round config the nodes were sent

    async def publish_model(self, server_round, weights, model_sha256):
        return ModelRef("models", 0, server_round, server_round, 1)

    async def emit(self, event, data, sid):
        if event != "start_round":
            return
        start = StartRound.from_wire(data)
        self.starts.append((sid, start.server_round))
        self.configs.append(start.config)
        behaviour = self.behaviour.get(sid)
        if behaviour == "late":  # answers after the round's timeout has passed
            asyncio.get_running_loop().call_later(0.5, self._answer, start, sid)
        elif behaviour == "ok":
            self._answer(start, sid)
        elif behaviour == "partial":  # sends the first chunk of its update, then nothing
            chunk = next(split_weights([np.full(3, 1.0, np.float32)], kind=KIND_UPDATE, session_id=start.session_id,
                                       server_round=start.server_round, node_id=sid, num_samples=1, chunk_bytes=4))
            self.coordinator.on_record(RawRecord(encode_chunk(chunk)))
        elif behaviour == "nan_loss":  # its loss diverged: the ack carries null (see test_non_finite.py)
            self._answer(start, sid, metrics={"loss": None})
        elif behaviour == "train_fails":  # the node's training raised: it says so instead of going silent
            self.coordinator.on_refusal(NodeRefusal(start.session_id, start.server_round, sid, "train_failed",
                                                    "RuntimeError: out of memory"))

    def _answer(self, start, sid, metrics=None):
        factor = float(sid[1:])
        weights = [np.full(3, factor * start.server_round, np.float32)]
        for chunk in split_weights(weights, kind=KIND_UPDATE, session_id=start.session_id,
                                   server_round=start.server_round, node_id=sid, num_samples=int(factor),
                                   chunk_bytes=4):
            self.coordinator.on_record(RawRecord(encode_chunk(chunk)))
        self.coordinator.on_ack(UpdateAck(start.session_id, start.server_round, sid, int(factor), 3,
                                          metrics if metrics is not None else {"loss": factor}, {"train": 0.01}))


async def run_session(tmp_path, behaviour, rounds=2, timeout_s=0.3, connect=("n1", "n3"), strategy=None,
                      history=None, fake_class=None, evaluate=None, registry=None, **options):
    """A session with fake nodes; ``options`` go to ``SessionSettings`` or, for the checkpoint/resume
    keywords (``checkpoint_file``, ``commit``, ``resume``, ``privacy``), to the ``Coordinator``."""
    registry = registry or NodeRegistry()
    for node_id in connect:
        await registry.add(NodeInfo(node_id, node_id, int(node_id[1:])))
    fake = (fake_class or FakeFederation)(behaviour)
    wiring = {k: options.pop(k) for k in ("checkpoint_file", "commit", "resume", "privacy") if k in options}
    settings = SessionSettings("s", rounds, len(connect), timeout_s, TrainConfig(1, 8, 0.1), end_grace_s=0.1,
                               **options)
    coordinator = Coordinator(
        settings=settings, registry=registry, strategy=strategy or FedAvg(), model=GlobalModel("{}", {}, INITIAL, {}),
        evaluate=evaluate or (lambda r, w: {"loss": float(np.sum(w[0]))}), publish_model=fake.publish_model,
        emit=fake.emit,
        history=history or SessionHistory.create(tmp_path, "s", {}), **wiring,
    )
    fake.coordinator = coordinator
    weights = await asyncio.wait_for(coordinator.run(), 10)
    return weights, coordinator.history.document, fake


async def test_all_nodes_answer_weighted_average_and_full_history(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"})
    # round 2: n1 sends 2.0 with 1 sample, n3 sends 6.0 with 3 samples -> (2 + 18) / 4 = 5
    np.testing.assert_allclose(weights[0], [5.0] * 3)
    last = history["rounds"][-1]
    assert last["accepted"] == ["n1", "n3"] and not last["timed_out"]
    assert last["train"]["loss"] == (1 * 1 + 3 * 3) / 4
    assert last["num_samples"] == {"n1": 1, "n3": 3}


async def test_silent_node_round_closes_at_timeout_with_the_rest(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "silent"})
    np.testing.assert_allclose(weights[0], [2.0] * 3)
    assert all(r["timed_out"] and r["accepted"] == ["n1"] for r in history["rounds"])


async def test_a_node_whose_training_fails_is_not_waited_for(tmp_path):
    """The refusal closes the round as soon as everyone else delivered: a 60 s timeout is never reached."""
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "train_fails"}, rounds=2, timeout_s=60)
    np.testing.assert_allclose(weights[0], [2.0] * 3)  # n1's round-2 update alone
    for record in history["rounds"]:
        assert record["accepted"] == ["n1"] and not record["timed_out"]
        assert record["refused_nodes"] == {"n3": "train_failed: RuntimeError: out of memory"}


async def test_round_without_updates_fails_and_keeps_the_model(tmp_path):
    weights, history, _ = await run_session(tmp_path, {}, rounds=1)
    np.testing.assert_array_equal(weights[0], INITIAL[0])
    assert history["rounds"][0]["status"] == "failed"


async def test_late_updates_are_refused_and_counted_in_the_next_round(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "late"}, rounds=2, timeout_s=0.3)
    first, second = history["rounds"]
    assert first["accepted"] == ["n1"] and first["timed_out"]
    assert second["rejected_updates_by_reason"] == {"late_update": 1}  # n3's round-1 record, judged in round 2
    np.testing.assert_allclose(weights[0], [2.0] * 3)  # only n1's round-2 update made it in


async def test_round_below_min_fit_fails_and_keeps_the_model(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "silent"}, rounds=1, min_fit=2)
    record = history["rounds"][0]
    assert record["status"] == "failed" and record["accepted"] == ["n1"] and record["required_updates"] == 2
    assert "the round needs 2" in record["failure_reason"]
    np.testing.assert_array_equal(weights[0], INITIAL[0])
    assert record["model_sha256"] == record["start_model_sha256"]


async def test_fraction_fit_samples_a_seeded_share_of_nodes_each_round(tmp_path):
    nodes = ("n1", "n2", "n3", "n4")
    _, history, fake = await run_session(tmp_path, dict.fromkeys(nodes, "ok"), rounds=4, connect=nodes,
                                         fraction_fit=0.5, seed=3)
    chosen = [r["participants"] for r in history["rounds"]]
    assert all(len(p) == 2 for p in chosen) and len({tuple(p) for p in chosen}) > 1
    assert [sorted(sid for sid, r in fake.starts if r == i + 1) for i in range(4)] == chosen  # only they were asked
    assert all(r["connected"] == 4 for r in history["rounds"])
    _, again, _ = await run_session(tmp_path / "again", dict.fromkeys(nodes, "ok"), rounds=4, connect=nodes,
                                    fraction_fit=0.5, seed=3)
    assert [r["participants"] for r in again["rounds"]] == chosen


async def test_resume_from_the_round_2_checkpoint_reproduces_the_uninterrupted_session(tmp_path):
    """Run 4 rounds straight; separately stop after round 2 and resume from its checkpoint. Same rounds, same model."""
    from fl_server.checkpoint import load_checkpoint_for
    from fl_server.strategies import FedAvgM

    behaviour = {"n1": "ok", "n3": "ok"}
    straight, straight_history, _ = await run_session(tmp_path / "a", behaviour, rounds=4, strategy=FedAvgM())

    ckpt = tmp_path / "b" / "checkpoints" / "s.json"
    history = SessionHistory.create(tmp_path / "b", "s", {})
    saved: dict[int, dict[Path, bytes]] = {}
    commits: list[dict[int, int]] = []

    def commit(offsets):  # called after each round is persisted: keep round 2's checkpoint (JSON and arrays) as it was
        commits.append(offsets)
        saved[len(commits)] = {f: f.read_bytes() for f in ckpt.parent.iterdir()}

    await run_session(tmp_path / "b", behaviour, rounds=4, strategy=FedAvgM(), checkpoint_file=ckpt, commit=commit,
                      history=history)
    assert len(commits) == 4
    for f in ckpt.parent.iterdir():
        f.unlink()
    for f, content in saved[2].items():
        f.write_bytes(content)
    history.document["rounds"] = history.document["rounds"][:2]
    history.document["status"] = "running"
    history.save()
    checkpoint, _ = load_checkpoint_for(history.path)
    assert checkpoint.completed_round == 2
    resumed_history = SessionHistory(history.path, checkpoint.history)
    resumed, document, fake = await run_session(tmp_path / "b", behaviour, rounds=4, strategy=FedAvgM(),
                                                resume=checkpoint, history=resumed_history, checkpoint_file=ckpt)
    assert sorted({r for _, r in fake.starts}) == [3, 4]  # rounds 1 and 2 were not run again
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3, 4]
    assert document["rounds"][2]["start_model_sha256"] == document["rounds"][1]["model_sha256"]
    np.testing.assert_array_equal(resumed[0], straight[0])  # the momentum came back too
    assert [r["model_sha256"] for r in document["rounds"]] == [r["model_sha256"] for r in straight_history["rounds"]]


async def test_assembly_checks_and_aggregation_run_off_the_event_loop(tmp_path, monkeypatch):
    """O(model) work on an update (joining chunks, value checks, folding, aggregating, digests) is in workers."""
    import threading

    import fl_server.coordinator as coordinator_module

    loop_thread = threading.current_thread()
    threads: dict[str, set[threading.Thread]] = {"assemble": set(), "accumulate": set(), "aggregate": set()}
    real_assemble = coordinator_module.assemble_update

    def assemble(*args, **kwargs):
        threads["assemble"].add(threading.current_thread())
        return real_assemble(*args, **kwargs)

    class RecordingFedAvg(FedAvg):
        def accumulate(self, *args):
            threads["accumulate"].add(threading.current_thread())
            super().accumulate(*args)

        def aggregate(self):
            threads["aggregate"].add(threading.current_thread())
            return super().aggregate()

    monkeypatch.setattr(coordinator_module, "assemble_update", assemble)
    weights, _, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, strategy=RecordingFedAvg())
    np.testing.assert_allclose(weights[0], [5.0] * 3)
    assert all(found and loop_thread not in found for found in threads.values()), threads


async def test_the_next_round_starts_while_the_last_one_is_evaluated(tmp_path):
    """Pipelined boundary: evaluating round 1 waits until round 2 has been sent out. A loop that evaluated
    before starting the next round would wait here until the event's timeout and record the flag False."""
    import threading

    round_2_sent = threading.Event()
    seen_in_time: dict[int, bool] = {}

    class Fake(FakeFederation):
        async def emit(self, event, data, sid):
            if event == "start_round" and data["round"] == 2:
                round_2_sent.set()
            await super().emit(event, data, sid)

    def evaluate(server_round, weights):
        if server_round == 1:
            seen_in_time[1] = round_2_sent.wait(timeout=5)
        return {"loss": float(np.sum(weights[0]))}

    _, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=3, timeout_s=5.0, fake_class=Fake,
                                      evaluate=evaluate)
    assert seen_in_time == {1: True}
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # still recorded in order
    assert [r["holdout"]["loss"] for r in rounds] == [3 * 2.5 * r for r in (1, 2, 3)]  # (1r*1 + 3r*3)/4 each
    assert [r["start_model_sha256"] for r in rounds[1:]] == [r["model_sha256"] for r in rounds[:-1]]


async def test_a_round_whose_updates_are_in_waits_only_briefly_for_missing_acks(tmp_path, monkeypatch):
    """After a server restart a node's update may be read back from Kafka while its ack went to the dead server:
    the round must not wait its whole timeout (60 s here) for an ack that may never come."""
    import fl_server.coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "ACK_GRACE_S", 0.2)

    class NoAckFederation(FakeFederation):
        def _answer(self, start, sid):
            if sid == "n3":
                self.coordinator.on_ack = lambda ack: None  # n3's acknowledgement is lost
            super()._answer(start, sid)
            self.coordinator.on_ack = Coordinator.on_ack.__get__(self.coordinator)

    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=1, timeout_s=60.0,
                                            fake_class=NoAckFederation)
    (record,) = history["rounds"]
    assert record["accepted"] == ["n1", "n3"] and not record["timed_out"] and record["missing_acks"] == ["n3"]
    np.testing.assert_allclose(weights[0], [2.5] * 3)  # both updates count: (1*1 + 3*3) / 4


async def test_a_reconnecting_participant_whose_update_is_in_is_asked_only_to_repeat_its_ack(tmp_path):
    from fl_server.collector import RoundCollector

    coordinator = Coordinator(
        settings=SessionSettings("s", 1, 1, 1.0, TrainConfig(1, 8, 0.1)), registry=NodeRegistry(), strategy=FedAvg(),
        model=GlobalModel("{}", {}, INITIAL, {}), evaluate=lambda r, w: {}, publish_model=None, emit=None,
        history=SessionHistory.create(tmp_path, "s", {}))
    collector = RoundCollector(session_id="s", server_round=1, participants=["n1"],
                               expected_specs=coordinator._specs)
    start = object()
    coordinator._current = (start, collector)
    assert coordinator.pending_start("n1") is start
    for chunk in split_weights(INITIAL, kind=KIND_UPDATE, session_id="s", server_round=1, node_id="n1",
                               num_samples=1):
        collector.offer_record(RawRecord(encode_chunk(chunk)))
    assert "n1" in collector.completed and coordinator.pending_start("n1") is start  # no ack yet: ask again
    collector.offer_ack(UpdateAck("s", 1, "n1", 1, 1, {}, {}))
    assert coordinator.pending_start("n1") is None


async def test_a_later_round_waits_for_min_round_nodes(tmp_path):
    """n3 leaves after round 1 and is back 0.3 s later: round 2 waits for it instead of federating one site."""
    registry = NodeRegistry()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    class LeavingFederation(FakeFederation):
        def _answer(self, start, sid):
            super()._answer(start, sid)
            if sid == "n3" and start.server_round == 1:
                tasks.add(loop.create_task(registry.remove_sid("n3")))
                loop.call_later(0.3, lambda: tasks.add(loop.create_task(registry.add(NodeInfo("n3", "n3", 3)))))

    _, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=2, timeout_s=5.0,
                                      fake_class=LeavingFederation, registry=registry, min_round_nodes=2)
    rounds = history["rounds"]
    assert [r["participants"] for r in rounds] == [["n1", "n3"], ["n1", "n3"]]
    assert [r["connected"] for r in rounds] == [2, 2]


async def test_time_spent_waiting_for_an_absent_node_is_waiting_not_transport(tmp_path):
    _, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "silent"}, rounds=1, timeout_s=1.0)
    timings = history["rounds"][0]["timings_s"]
    # transport runs to n1's delivery, waiting from there to the 1 s deadline: together they are the whole wait
    assert timings["waiting"] > 0 and timings["train"] + timings["transport"] + timings["waiting"] >= 1.0
    _, history, _ = await run_session(tmp_path / "ok", {"n1": "ok", "n3": "ok"}, rounds=1, timeout_s=30.0)
    timings = history["rounds"][0]["timings_s"]
    assert timings["waiting"] < 30.0 / 2  # everyone delivered: the round did not wait for its deadline


async def test_a_node_whose_loss_is_not_finite_still_counts_and_the_history_stays_json(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "nan_loss"}, rounds=1, timeout_s=30)
    record = history["rounds"][0]
    assert record["accepted"] == ["n1", "n3"] and not record["timed_out"]
    assert record["train"]["per_node"]["n3"] == {"loss": None} and record["train"]["loss"] == 1.0  # n1's alone
    np.testing.assert_allclose(weights[0], [2.5] * 3)


async def test_max_node_weight_caps_a_nodes_share_of_the_average(tmp_path):
    """n1 declares 1 sample, n3 3: with a cap of half the 4 declared, n3 weighs 2, not 3."""
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=1, max_node_weight=0.5)
    np.testing.assert_allclose(weights[0], [(1.0 * 1 + 3.0 * 2) / 3] * 3, rtol=1e-6)
    assert history["rounds"][0]["capped_weights"] == {"n3": {"claimed": 3, "used": 2}}


async def test_a_node_whose_update_is_incomplete_at_the_deadline_is_recorded_as_such(tmp_path):
    _, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "partial"}, rounds=1, timeout_s=0.3)
    record = history["rounds"][0]
    assert record["timed_out"] and record["accepted"] == ["n1"] and record["incomplete_updates"] == ["n3"]
