import json

import numpy as np
import pytest

from fl_server.checkpoint import Checkpoint, CheckpointError, checkpoint_path, load_checkpoint_for, save_checkpoint
from fl_server.sampling import required_updates, sample_participants
from fl_server.strategies import make_strategy


def history(rounds, status="running"):
    return {"session_id": "s1", "status": status, "config": {"rounds": 5},
            "rounds": [{"round": r} for r in range(1, rounds + 1)]}


def make(rounds=2, strategy_state=None):
    return Checkpoint(session_id="s1", completed_round=rounds, weights=[np.arange(6, dtype=np.float32).reshape(2, 3)],
                      model={"architecture": "{}", "compile": {}, "data": {}}, history=history(rounds),
                      strategy_state=strategy_state or {"momentum": [np.ones(3)]}, offsets={0: 12, 2: 7})


def test_checkpoint_round_trips_weights_state_offsets_and_history(tmp_path):
    (tmp_path / "s1.json").write_text(json.dumps(history(2)))
    save_checkpoint(checkpoint_path(tmp_path, "s1"), make())
    loaded, _ = load_checkpoint_for(tmp_path / "s1.json")
    np.testing.assert_array_equal(loaded.weights[0], make().weights[0])
    assert loaded.weights[0].dtype == np.float32
    assert loaded.offsets == {0: 12, 2: 7} and loaded.completed_round == 2
    np.testing.assert_array_equal(loaded.strategy_state["momentum"][0], np.ones(3))
    assert loaded.weights_sha256 == make().weights_sha256


def test_damaged_or_mismatched_checkpoints_are_refused(tmp_path):
    (tmp_path / "s1.json").write_text(json.dumps(history(2)))
    path = checkpoint_path(tmp_path, "s1")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint_for(tmp_path / "s1.json")
    path.parent.mkdir()
    document = make().to_wire()
    document["weights"][0]["data"] = document["weights"][0]["data"][:-4] + "AAAA"
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint_for(tmp_path / "s1.json")
    document = make().to_wire()
    document["history"]["rounds"] = [{"round": 1}, {"round": 1}]
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="do not run"):
        load_checkpoint_for(tmp_path / "s1.json")
    save_checkpoint(path, make())
    (tmp_path / "s1.json").write_text(json.dumps(history(5, status="completed")))
    with pytest.raises(CheckpointError, match="already completed"):
        load_checkpoint_for(tmp_path / "s1.json")


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizer_state_survives_a_checkpoint(name):
    """Two strategies, one of them restored from the other's state after round 1, agree on round 2."""
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 2)).astype(np.float32)]
    updates = [[rng.normal(size=(3, 2)).astype(np.float32)] for _ in range(4)]
    original = make_strategy(name)
    original.begin_round(1, start)
    original.accumulate("a", updates[0], 3)
    after_one = original.aggregate()
    restored = make_strategy(name)
    saved = make(strategy_state=original.state()).to_wire()["strategy_state"]  # through the JSON codec
    restored.load_state(Checkpoint.from_wire(make().to_wire() | {"strategy_state": saved}).strategy_state)
    for strategy in (original, restored):
        strategy.begin_round(2, after_one)
        strategy.accumulate("a", updates[1], 3)
    np.testing.assert_array_equal(original.aggregate()[0], restored.aggregate()[0])


def test_sampling_is_seeded_sized_and_spread():
    nodes = [f"n{i}" for i in range(10)]
    first = sample_participants(nodes, fraction=0.3, min_count=1, seed=7, server_round=1)
    assert len(first) == 3 and first == sample_participants(reversed(nodes), fraction=0.3, min_count=1, seed=7,
                                                            server_round=1)
    rounds = [tuple(sample_participants(nodes, fraction=0.3, min_count=1, seed=7, server_round=r)) for r in range(20)]
    assert len(set(rounds)) > 10  # not the same three every round
    assert len(sample_participants(nodes, fraction=0.1, min_count=4, seed=7, server_round=1)) == 4
    assert sample_participants(nodes[:2], fraction=0.5, min_count=5, seed=7, server_round=1) == ["n0", "n1"]
    assert required_updates(10, min_fit=2, min_fit_fraction=0.5) == 5
    assert required_updates(3, min_fit=2, min_fit_fraction=0.0) == 2


def test_checkpoint_arrays_live_in_an_npz_next_to_a_small_json(tmp_path):
    (tmp_path / "s1.json").write_text(json.dumps(history(3)))
    path = checkpoint_path(tmp_path, "s1")
    big = [np.arange(250_000, dtype=np.float32), np.ones(3, np.float64)]
    for rounds in (2, 3):
        save_checkpoint(path, Checkpoint(**{**make(rounds).__dict__, "weights": big}))
    assert sorted(f.name for f in path.parent.iterdir()) == ["s1.json", "s1.r3.npz"]  # round 2's arrays are gone
    assert path.stat().st_size < 10_000  # no base64 weights in the JSON
    assert json.loads(path.read_text())["format"] == "fl-checkpoint/2"
    loaded, _ = load_checkpoint_for(tmp_path / "s1.json")
    assert [w.dtype for w in loaded.weights] == [np.float32, np.float64] and loaded.completed_round == 3
    np.testing.assert_array_equal(loaded.weights[0], big[0])
    np.testing.assert_array_equal(loaded.strategy_state["momentum"][0], np.ones(3))
    (path.parent / "s1.r3.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="arrays file"):
        load_checkpoint_for(tmp_path / "s1.json")


def test_an_npz_holding_a_pickled_object_array_is_refused(tmp_path):
    (tmp_path / "s1.json").write_text(json.dumps(history(2)))
    path = checkpoint_path(tmp_path, "s1")
    save_checkpoint(path, make())
    np.savez(path.parent / "s1.r2.npz", w0=np.array([{"x": 1}], dtype=object), s0_0=np.ones(3))
    with pytest.raises(CheckpointError):
        load_checkpoint_for(tmp_path / "s1.json")
