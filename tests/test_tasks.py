"""Tasks (common.ml.tasks): inference from federated statistics, the target standardised from pooled sums,
the holdout metrics, the compile whitelist, and binary training through the node's trainer (real Keras)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from common.data.datasets import load_builtin
from common.data.dataspec import DataSpec
from common.data.tabular import (
    Schema,
    SchemaError,
    encode_frame,
    local_statistics,
    merge_statistics,
    pooled_class_counts,
)
from common.ml.models import build_model, class_weight_of, compile_model, compile_spec, model_from_architecture
from common.ml.tasks import (
    balanced_class_weights,
    binary_metrics,
    infer_task,
    original_units,
    pooled_mean_std,
    regression_metrics,
    strata,
)
from common.wire.protocol import TrainConfig
from fl_data.cli import main as fl_data
from fl_node.trainer import LocalTrainer
from fl_server.baseline import main as fl_baseline
from fl_server.evaluation import KerasHoldout, task_metrics


def node_stats(name, count=3):
    """The statistics each of ``count`` iid nodes of a built-in dataset would send (never rows)."""
    data = load_builtin(name)
    shares = np.array_split(np.random.default_rng(0).permutation(len(data.train)), count)
    return data, [local_statistics(data.train.iloc[rows], data.target) for rows in shares]


@pytest.mark.parametrize(("name", "task"), [("diabetes", "regression"), ("breast_cancer", "binary"),
                                            ("digits", "classification"), ("iris", "classification")])
def test_the_task_is_inferred_from_the_nodes_statistics(name, task):
    _, stats = node_stats(name)
    assert merge_statistics(stats, "target").task == task


def test_inference_rules():
    assert infer_task({"yes": 40, "no": 60}, None) == "binary"  # text: classes
    assert infer_task({"a": 5, "b": 5, "c": 5}, None) == "classification"
    assert infer_task({"0": 50, "1": 50}, 100) == "binary"  # numbers that cover their rows: classes
    assert infer_task({"7": 5}, 100) == "regression"  # k-anonymous counts cover 5% of the rows: a measurement
    assert infer_task({str(i): 2 for i in range(60)}, 120) == "regression"  # too many distinct values


def test_regression_target_is_standardised_with_the_pooled_mean_and_std():
    data, stats = node_stats("diabetes")
    assert all(set(s["target_numeric"]) == {"count", "sum", "sum_sq"} for s in stats)  # counts and sums only
    schema = merge_statistics(stats, "target")
    y = data.train["target"].to_numpy(dtype=np.float64)
    assert schema.classes == () and math.isclose(schema.target_mean, y.mean())
    assert math.isclose(schema.target_std, y.std())
    _, encoded, dropped = encode_frame(data.train, schema)
    assert dropped == 0 and np.allclose(encoded, (y - y.mean()) / y.std(), atol=1e-5)
    assert np.allclose(original_units(encoded, schema.target_mean, schema.target_std), y, atol=1e-3)
    assert pooled_mean_std(4, 10.0, 30.0) == (2.5, math.sqrt(30 / 4 - 6.25))
    assert pooled_mean_std(3, 6.0, 12.0) == (2.0, 1.0)  # a constant target: std 1, no division by zero


def test_regression_drops_rows_without_a_numeric_target_and_refuses_a_text_target():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [10.0, None, 30.0, 50.0]})
    schema = merge_statistics([local_statistics(frame, "y")], "y", task="regression")
    x, y, dropped = encode_frame(frame, schema)
    assert dropped == 1 and x.shape == (3, 1) and len(y) == 3
    text = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    with pytest.raises(SchemaError, match="numeric target"):
        merge_statistics([local_statistics(text, "y")], "y", task="regression")


def test_schema_wire_form_per_task():
    _, stats = node_stats("diabetes", 2)
    regression = merge_statistics(stats, "target")
    wire = regression.to_wire()
    assert wire["task"] == "regression" and wire["classes"] == []
    assert Schema.from_wire(json.loads(json.dumps(wire))) == regression
    classification = merge_statistics(node_stats("iris", 2)[1], "target")
    assert "task" not in classification.to_wire()  # as before tasks existed: old nodes read it unchanged
    with pytest.raises(SchemaError, match="no classes"):
        Schema.from_wire({**wire, "classes": ["1", "2"]})
    with pytest.raises(SchemaError, match="exactly two"):
        Schema.from_wire({**classification.to_wire(), "task": "binary"})
    with pytest.raises(SchemaError, match="task must be"):
        Schema.from_wire({**wire, "task": "ranking"})
    with pytest.raises(SchemaError, match="binary task"):
        merge_statistics(node_stats("iris", 2)[1], "target", task="binary")


def test_class_weights_come_from_the_pooled_target_counts():
    data, stats = node_stats("breast_cancer")
    schema = merge_statistics(stats, "target")
    counts = pooled_class_counts(stats, "target", schema)
    assert counts == tuple(data.train["target"].value_counts().sort_index())
    weights = balanced_class_weights(list(counts))
    assert weights == [sum(counts) / (2 * c) for c in counts]
    assert balanced_class_weights([30, 10, 0]) == [40 / 90, 40 / 30, 1.0]


def test_metrics_match_hand_computation():
    scores = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 3.0, 2.0]))
    assert scores == {"mse": 5 / 4, "mae": 3 / 4, "rmse": math.sqrt(5 / 4), "r2": 1 - 5 / 5}
    binary = binary_metrics(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8, 0.9]))
    # predicted 0,1,0,1,1: tp 2, fp 1, fn 1; AUC: 5 of the 6 (positive, negative) pairs are ordered right
    assert binary == pytest.approx({"auc": 5 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert "auc" not in binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]))  # undefined: left out, not NaN
    # The holdout's regression metrics are in original units: standardised values scaled back by std and mean.
    scaled = task_metrics("regression", {"loss": 0.5}, np.array([-1.0, 1.0]), np.array([[0.0], [1.0]]), (100.0, 10.0))
    assert scaled["mae"] == 5.0 and scaled["mse"] == 50.0 and scaled["loss"] == 0.5


def test_strata_bin_a_numeric_target_and_leave_classes_alone():
    values = np.arange(100.0)
    bins = strata(values, "regression")
    assert sorted(set(bins)) == list(range(10)) and all(np.bincount(bins) == 10)
    assert list(strata(np.array(["a", "b"]), "binary")) == ["a", "b"]


def test_compile_whitelist_is_strict_per_task():
    for task, loss, metric in [("classification", "sparse_categorical_crossentropy", "accuracy"),
                               ("binary", "binary_crossentropy", "binary_accuracy"),
                               ("regression", "mean_squared_error", "mean_absolute_error")]:
        spec = compile_spec("adam", 0.01, task)
        assert spec["loss"] == loss and spec["metrics"] == [metric]
        compile_model(build_model("logreg", (4,), 3, task=task), spec)
    model = build_model("logreg", (4,), 2, task="binary")
    refused = [
        {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["accuracy"]},  # metric of another loss
        {"optimizer": "adam", "loss": "hinge", "metrics": []},
        {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": [], "run_eagerly": True},
        {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": [], "class_weight": [1.0, -2.0]},
        {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": [], "class_weight": {"0": 1}},
        {"optimizer": "adam", "loss": "mean_squared_error", "metrics": [], "class_weight": [1.0, 2.0]},
    ]
    for spec in refused:
        with pytest.raises(ValueError):
            compile_model(model, spec)
    assert class_weight_of(compile_spec("adam", 0.01, "binary", [0.5, 2.0])) == {0: 0.5, 1: 2.0}


def test_output_layer_per_task():
    binary = build_model("mlp:8", (4,), 2, task="binary")
    regression = build_model("mlp:8", (4,), 0, task="regression")
    assert binary.output_shape == (None, 1) and binary.layers[-1].get_config()["activation"] == "sigmoid"
    assert regression.output_shape == (None, 1) and regression.layers[-1].get_config()["activation"] == "linear"


def test_binary_breast_cancer_through_the_node_trainer_reaches_auc_above_0_95():
    """The path a session takes: schema from statistics, architecture JSON rebuilt in safe mode at the node,
    the whitelisted compile spec with class weights, local training, the server's holdout metrics."""
    data, stats = node_stats("breast_cancer", 2)
    schema = merge_statistics(stats, "target")
    spec = DataSpec.from_wire(DataSpec.tabular(schema).to_wire())
    server_model = build_model("mlp:16", spec.input_shape, spec.num_classes, task=spec.task)
    counts = pooled_class_counts(stats, "target", schema)
    compile_settings = compile_spec("adam", 0.01, spec.task, balanced_class_weights(list(counts)))
    compile_model(server_model, compile_settings)
    x, y, _ = encode_frame(data.train, spec.schema)
    trainer = LocalTrainer(x, y, node_id="n0")
    result = trainer.train(server_model.to_json(), compile_settings, server_model.get_weights(),
                           TrainConfig(epochs=5, batch_size=32, learning_rate=0.01), server_round=1)
    assert set(result.metrics) == {"loss", "binary_accuracy"}
    x_holdout, y_holdout, _ = encode_frame(data.holdout, spec.schema)
    scores = KerasHoldout(model_from_architecture(server_model.to_json()), x_holdout, y_holdout,
                          task="binary")(1, result.weights)
    assert set(scores) == {"loss", "accuracy", "auc", "precision", "recall", "f1"}
    assert scores["auc"] > 0.95 and scores["f1"] > 0.9


def test_fl_data_and_fl_baseline_handle_a_regression_target(tmp_path, capsys):
    parts = tmp_path / "parts"
    assert fl_data(["partition", "--dataset", "diabetes", "--nodes", "3", "--scheme", "dirichlet", "--out",
                    str(parts), "--quiet"]) == 0
    shown = capsys.readouterr().out
    assert "q0" in shown and "q9" in shown  # partitioned on the target's quantile bins
    nodes = sorted(str(p) for p in parts.glob("node-*.csv"))
    assert sum(len(pd.read_csv(p)) for p in nodes) == len(load_builtin("diabetes").train)
    assert fl_baseline(["--data", *nodes, "--holdout", str(parts / "holdout.csv"), "--target", "target",
                        "--rounds", "2", "--epochs", "5", "--history-dir", str(tmp_path), "--session-id", "r",
                        "--quiet"]) == 0
    history = json.loads((tmp_path / "r.json").read_text())
    assert history["config"]["data_spec"]["schema"]["task"] == "regression"
    holdout = history["rounds"][-1]["holdout"]
    assert set(holdout) == {"loss", "mse", "mae", "rmse", "r2"} and holdout["r2"] > 0.2
