"""A node refuses an architecture over its parameter budget before building it (a hostile or mistaken server)."""

import asyncio
import json

import numpy as np
import pytest

from common.ml.model_budget import ModelTooLarge, estimate_parameters
from common.ml.models import build_model
from fl_node.trainer import LocalTrainer


@pytest.mark.parametrize(("name", "shape"), [("logreg", (64,)), ("mlp:32", (64,)), ("mlp:1024,1024,512", (64,)),
                                             ("cnn", (8, 8, 1))])
def test_the_estimate_is_exact_for_the_catalogue(name, shape):
    model = build_model(name, shape, 10)
    assert estimate_parameters(json.loads(model.to_json())) == model.count_params()


def huge(units: int, declared_input: int | None = None) -> str:
    config = json.loads(build_model("mlp:32", (64,), 10).to_json())
    dense = config["config"]["layers"][1]
    dense["config"]["units"] = units
    if declared_input is not None:
        dense["build_config"]["input_shape"] = [None, declared_input]
    config["config"]["layers"][2]["build_config"]["input_shape"] = [None, units]
    return json.dumps(config)


def test_a_six_million_unit_layer_is_refused_without_building_anything(monkeypatch):
    import fl_node.trainer as trainer_module

    def never(*_):
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer_module, "model_from_architecture", never)
    trainer = LocalTrainer(np.zeros((4, 64), np.float32), np.zeros(4), node_id="n1", max_model_params=50_000_000)
    with pytest.raises(ModelTooLarge, match="about 450,000,010 parameters"):  # 6e6 * 65 + 10 * (6e6 + 1)
        trainer._model_for(huge(6_000_000))


def test_an_architecture_that_lies_about_its_shapes_cannot_allocate_more_than_it_declared():
    """Keras builds each layer from its declared build_config, which is what the estimate reads; a config whose
    declared input (1) is not the real one (64) then fails to build instead of allocating the real size."""
    trainer = LocalTrainer(np.zeros((4, 64), np.float32), np.zeros(4), node_id="n1", max_model_params=1_000_000)
    architecture = huge(20_000, declared_input=1)
    assert estimate_parameters(json.loads(architecture)) == 20_000 * 2 + 10 * 20_001
    with pytest.raises(ValueError, match="incompatible with the layer"):
        trainer._model_for(architecture)


def test_the_node_refuses_the_round_with_model_too_large(tmp_path):
    from tests.test_node_client import make_node, refusals, start_round

    trainer = LocalTrainer(np.zeros((6, 4), np.float32), np.zeros(6), node_id="n1", max_model_params=1000)
    node = make_node(tmp_path, trainer)  # type: ignore[arg-type]
    start = start_round()
    start = type(start)(start.session_id, start.server_round, start.config,
                        type(start.model)(huge(6_000_000), {"optimizer": "adam", "loss":
                                          "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
                                          start.model.weights, start.model.data))
    asyncio.run(asyncio.wait_for(node._run_round(start), 30))
    (refusal,) = refusals(node)
    assert refusal["reason"] == "model_too_large" and "--max-model-params" in refusal["detail"]
