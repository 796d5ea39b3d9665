"""The one way metrics are written as text."""

import numpy as np
import pytest

from common.metrics_format import format_metrics, format_number


@pytest.mark.parametrize(("value", "digits", "shown"), [
    (0.123456, 4, "0.1235"),
    (np.float32(0.5), 4, "0.5000"),
    (3, 2, "3.00"),
    (float("nan"), 4, "nan"),
    (None, 4, "-"),
    (True, 4, "-"),
    ("0.5", 4, "-"),
])
def test_format_number(value, digits, shown):
    assert format_number(value, digits) == shown


def test_format_metrics_keeps_the_order_of_the_mapping():
    assert format_metrics({"loss": 0.25, "accuracy": 0.9, "auc": None}) == "loss=0.2500 accuracy=0.9000 auc=-"
    assert format_metrics({}) == ""
