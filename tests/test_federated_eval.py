"""Federated evaluation: the wire fields, the nodes' local test split, the sample-weighted record, the history
check and a server without a holdout (pure parts)."""

import numpy as np
import pytest

from common.data.datasets import load_builtin
from common.data.tabular import local_statistics
from common.wire.protocol import LocalEvaluation, ProtocolError, TrainConfig, UpdateAck
from fl_node.local_eval import split_local_test
from fl_server.data import resolve_server_data
from fl_server.evaluation import KerasHoldout
from fl_server.federated_eval import federated_record, weighted_metrics
from fl_server.history import round_problem


def test_weighted_metrics_match_a_hand_computation():
    per_node = {"a": (10, {"loss": 1.0, "accuracy": 0.5}), "b": (30, {"loss": 2.0, "accuracy": 0.9})}
    weighted = weighted_metrics(per_node)
    assert weighted["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)  # 0.8
    assert weighted["loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)  # 1.75


def test_a_metric_some_node_could_not_measure_is_null_and_one_only_some_report_averages_over_those():
    weighted = weighted_metrics({"a": (10, {"loss": None, "auc": 0.7}), "b": (30, {"loss": 2.0})})
    assert weighted == {"auc": pytest.approx(0.7), "loss": None}


def test_federated_record_lists_nodes_and_personalized_means():
    record = federated_record({
        "b": LocalEvaluation(30, {"accuracy": 0.9}, personalized={"accuracy": 1.0}),
        "a": LocalEvaluation(10, {"accuracy": 0.5}, personalized={"accuracy": 0.6}),
    })
    assert record["num_samples"] == 40
    assert list(record["per_node"]) == ["a", "b"]
    assert record["per_node"]["a"] == {"num_samples": 10, "metrics": {"accuracy": 0.5},
                                       "personalized": {"accuracy": 0.6}}
    assert record["weighted"]["accuracy"] == pytest.approx(0.8)
    assert record["weighted_personalized"]["accuracy"] == pytest.approx((6 + 30) / 40)
    assert federated_record({}) == {}
    assert "weighted_personalized" not in federated_record({"a": LocalEvaluation(1, {"accuracy": 1.0})})


def test_train_config_federated_eval_is_absent_when_off_and_must_be_a_boolean():
    assert "federated_eval" not in TrainConfig(1, 32, 0.01).to_wire()
    wire = TrainConfig(1, 32, 0.01, federated_eval=True).to_wire()
    assert wire["federated_eval"] is True
    assert TrainConfig.from_wire(wire).federated_eval is True
    assert TrainConfig.from_wire({"epochs": 1, "batch_size": 32, "learning_rate": 0.01}).federated_eval is False
    with pytest.raises(ProtocolError, match="federated_eval"):
        TrainConfig.from_wire({**wire, "federated_eval": 1})


def ack(**changes):
    return UpdateAck("s1", 1, "n0", 100, 1, {"loss": 0.5}, {"train": 1.0}, **changes)


def test_update_ack_carries_an_optional_evaluation():
    assert "evaluation" not in ack().to_wire()
    evaluation = LocalEvaluation(25, {"loss": 0.4, "accuracy": None}, personalized={"accuracy": 0.9})
    back = UpdateAck.from_wire(ack(evaluation=evaluation).to_wire())
    assert back.evaluation == evaluation
    assert UpdateAck.from_wire(ack().to_wire()).evaluation is None


@pytest.mark.parametrize("evaluation, problem", [
    ("x", "must be an object"),
    ({"num_samples": 0, "metrics": {}}, "num_samples"),
    ({"num_samples": True, "metrics": {}}, "num_samples"),
    ({"num_samples": 5, "metrics": {"accuracy": "high"}}, "evaluation.metrics"),
    ({"num_samples": 5, "metrics": {f"m{i}": 1.0 for i in range(65)}}, "evaluation.metrics"),
    ({"num_samples": 5, "metrics": {}, "personalized": [1]}, "evaluation.personalized"),
])
def test_a_malformed_evaluation_is_refused_with_its_reason(evaluation, problem):
    wire = {**ack().to_wire(), "evaluation": evaluation}
    with pytest.raises(ProtocolError, match=problem):
        UpdateAck.from_wire(wire)


def test_local_test_split_is_disjoint_deterministic_and_bounded():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    x_train, y_train, x_test, y_test = split_local_test(x, y, 0.25, seed=7)
    assert (x_train[:, 0] == 2 * y_train).all()
    assert len(y_test) == 2 and len(y_train) == 8
    assert sorted([*y_train, *y_test]) == list(range(10))
    assert (x_test[:, 0] == 2 * y_test).all()  # rows stay whole
    assert (split_local_test(x, y, 0.25, seed=7)[3] == y_test).all()
    assert len(split_local_test(x, y, 0.01, seed=7)[3]) == 1  # at least one row
    assert len(split_local_test(x[:1], y[:1], 0.5, seed=7)[3]) == 0  # never the only row
    assert len(split_local_test(x, y, 0.0, seed=7)[3]) == 0
    with pytest.raises(ValueError):
        split_local_test(x, y, 1.0, seed=7)


def test_history_check_refuses_a_federated_eval_that_is_not_numbers():
    good = {"round": 1, "federated_eval": {"weighted": {"accuracy": 0.5, "loss": None}}}
    assert round_problem(good) is None
    assert "federated_eval" in round_problem({"round": 1, "federated_eval": []})
    assert "weighted" in round_problem({"round": 1, "federated_eval": {"weighted": {"accuracy": "x"}}})


async def test_a_tabular_server_without_holdout_keeps_no_rows_and_evaluates_to_nothing():
    iris = load_builtin("iris", seed=1)
    asked = []

    async def gather(request):
        asked.append(request["target"])
        return {"a": local_statistics(iris.train, iris.target, [])}

    data = await resolve_server_data(dataset="csv-federation", holdout_csv=None, target=iris.target,
                                     schema_file=None, categorical=[], seed=1, gather_statistics=gather,
                                     no_holdout=True)
    assert asked == [iris.target]  # the schema still comes from the nodes' statistics
    assert data.source == "none" and data.spec.num_classes == 3 and data.spec.input_shape == (4,)
    assert data.x_holdout.shape == (0, 4) and len(data.y_holdout) == 0
    assert KerasHoldout(None, data.x_holdout, data.y_holdout)(1, []) == {}
