"""The named value checks every flag, strategy constructor and wire type shares."""

import math

import pytest

from common.config import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_fraction,
    positive_int,
)
from common.validation import (
    require_decay_rate,
    require_fraction,
    require_in_interval,
    require_non_negative_finite,
    require_non_negative_int,
    require_positive,
    require_positive_finite,
    require_positive_fraction,
    require_positive_int,
)

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(("check", "good", "bad", "says"), [
    (require_positive_int, [1, 7], [0, -3], "x must be a positive integer, got"),
    (require_non_negative_int, [0, 5], [-1], "x must be >= 0, got -1"),
    (require_positive, [1e-9, 3.0, INF], [0.0, -1.0, NAN], "x must be positive, got"),
    (require_positive_finite, [1e-9, 3.0], [0.0, INF, NAN, 10**400], "x must be a finite number > 0, got"),
    (require_non_negative_finite, [0.0, 2.5], [-0.1, INF, NAN], "x must be a finite number >= 0, got"),
    (require_fraction, [0.0, 0.5, 1.0], [-0.1, 1.1, NAN], "x must be in [0, 1], got"),
    (require_positive_fraction, [0.1, 1.0], [0.0, 1.5, NAN], "x must be in (0, 1], got"),
    (require_decay_rate, [0.0, 0.99], [1.0, -0.5, INF, NAN], "x must be in [0, 1), got"),
])
def test_each_check_accepts_its_range_and_names_the_value_it_refuses(check, good, bad, says):
    for value in good:
        assert check("x", value) == value
    for value in bad:
        with pytest.raises(ValueError) as info:
            check("x", value)
        assert str(info.value).startswith(says)


def test_interval_bounds_are_written_as_given():
    with pytest.raises(ValueError, match=r"^trim must be in \[0, 0.5\), got 0.5$"):
        require_in_interval("trim", 0.5, 0, 0.5, high_open=True)
    assert require_in_interval("x", 0.5, 0, 0.5) == 0.5


@pytest.mark.parametrize(("argparse_type", "text", "says"), [
    (positive_int, "0", "must be a positive integer"),
    (non_negative_int, "-1", "must be >= 0"),
    (non_negative_float, "inf", "must be a finite number >= 0"),
    (positive_float, "0", "must be positive"),
    (fraction, "1.5", "must be in [0, 1]"),
    (positive_fraction, "0", "must be in (0, 1]"),
])
def test_argparse_types_leave_the_setting_name_to_their_caller(argparse_type, text, says):
    with pytest.raises(ValueError) as info:
        argparse_type(text)
    assert str(info.value) == says
