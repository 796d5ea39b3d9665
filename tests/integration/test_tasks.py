"""Regression end to end: scikit-learn's bundled diabetes data, target standardised through the federated schema."""

import numpy as np

from common.data.datasets import load_builtin
from tests.integration.harness import Federation, expect_clean_exit


def test_regression_on_diabetes_improves_and_reports_original_units(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "2", "--rounds", "3", "--round-timeout", "90", "--epochs", "5",
                                     "--dataset", "diabetes", "--model", "mlp:32", "--learning-rate", "0.01")
    nodes = federation.start_nodes(2, "--dataset", "diabetes")
    expect_clean_exit(server, nodes, server_timeout_s=240)

    history = federation.history()
    assert history["status"] == "completed"
    schema = history["config"]["data"]["schema"]
    assert schema["task"] == "regression" and schema["classes"] == []  # inferred: --task was not given
    # The target's mean and std are pooled from the two nodes' counts and sums: those of all training rows.
    train = load_builtin("diabetes").train["target"].to_numpy(dtype=np.float64)
    assert np.isclose(schema["target_mean"], train.mean()) and np.isclose(schema["target_std"], train.std())

    r2 = [history["initial_holdout"]["r2"]] + [r["holdout"]["r2"] for r in history["rounds"]]
    assert r2[-1] > r2[0] + 0.3 and r2[-1] > 0.3, r2
    last = history["rounds"][-1]["holdout"]
    assert set(last) == {"loss", "mse", "mae", "rmse", "r2"}
    # Original units: the loss is the MSE of the standardised target, mse is the same error in the target's units.
    assert np.isclose(last["mse"], last["loss"] * schema["target_std"] ** 2, rtol=1e-3)
    assert np.isclose(last["rmse"], np.sqrt(last["mse"])) and 20 < last["mae"] < 80  # the target spans 25 to 346
