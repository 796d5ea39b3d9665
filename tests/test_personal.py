"""FedPer: which weight arrays are personal, and how shared and personal parts are split and put back."""

import pytest

from common.ml.models import build_model
from common.ml.personal import personal_indices, shared_part, with_personal, with_shared
from common.wire.protocol import ProtocolError, TrainConfig


def test_personal_arrays_are_the_last_layers_with_weights():
    # Flatten (0 arrays), Dense (2), Dropout (0), Dense (2), BatchNormalization (4), Dense (2)
    counts = [0, 2, 0, 2, 4, 2]
    assert personal_indices(counts, 0) == []
    assert personal_indices(counts, 1) == [8, 9]  # 10 arrays in all
    assert personal_indices(counts, 2) == [4, 5, 6, 7, 8, 9]
    assert personal_indices(counts, 3) == [2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="at least one must stay shared"):
        personal_indices(counts, 4)


def test_indices_match_keras_weight_order():
    model = build_model("mlp:8,4", (6,), 3)
    personal = personal_indices([len(layer.weights) for layer in model.layers], 1)
    shapes = [w.shape for w in model.get_weights()]
    assert [shapes[i] for i in personal] == [(4, 3), (3,)]
    assert [w.shape for w in shared_part(model.get_weights(), personal)] == [(6, 8), (8,), (8, 4), (4,)]


def test_split_and_merge_round_trip():
    weights = ["a", "b", "c", "d"]
    personal = [2, 3]
    assert shared_part(weights, personal) == ["a", "b"]
    assert with_shared(weights, personal, ["A", "B"]) == ["A", "B", "c", "d"]
    assert with_personal(weights, personal, ["C", "D"]) == ["a", "b", "C", "D"]
    with pytest.raises(ValueError):
        with_shared(weights, personal, ["A"])
    with pytest.raises(ValueError):
        with_personal(weights, personal, ["C"])


def test_train_config_personal_layers_is_optional_and_bounded():
    assert "personal_layers" not in TrainConfig(1, 32, 0.01).to_wire()
    wire = TrainConfig(1, 32, 0.01, personal_layers=2).to_wire()
    assert TrainConfig.from_wire(wire).personal_layers == 2
    for bad in (0, -1, 1001, True, 1.5):
        with pytest.raises(ProtocolError, match="personal_layers"):
            TrainConfig.from_wire({**wire, "personal_layers": bad})
