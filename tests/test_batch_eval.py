"""The batched evaluation the server and nodes use gives what Keras' own ``evaluate``/``predict`` give."""

from __future__ import annotations

import numpy as np
import pytest

from common.ml.batch_eval import evaluate_in_batches, predict_in_batches
from common.ml.models import build_model, compile_model, compile_spec
from common.ml.tasks import BINARY, CLASSIFICATION, REGRESSION


@pytest.mark.parametrize("task", [CLASSIFICATION, BINARY, REGRESSION])
def test_batched_evaluation_equals_keras_evaluate_and_predict(task):
    rng = np.random.default_rng(3)
    rows = 517  # 517 = 2 * 200 + 117: the last batch is short
    x = rng.normal(size=(rows, 12)).astype("float32")
    classes = {CLASSIFICATION: 4, BINARY: 2, REGRESSION: 1}[task]
    y = (rng.normal(size=rows).astype("float32") if task == REGRESSION
         else rng.integers(0, classes, rows).astype("int64"))
    model = build_model("mlp:16", (12,), classes, task=task)
    compile_model(model, compile_spec("adam", 0.01, task, None))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # not the initial weights: the metrics are not trivial

    expected = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    for batch_rows in (200, 4096):
        got = evaluate_in_batches(model, x, y, batch_rows)
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
        np.testing.assert_allclose(predict_in_batches(model, x, batch_rows), model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-6)


def test_batched_evaluation_refuses_an_empty_set():
    with pytest.raises(ValueError, match="no rows"):
        evaluate_in_batches(None, np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="no rows"):
        predict_in_batches(None, np.zeros((0, 3)))
