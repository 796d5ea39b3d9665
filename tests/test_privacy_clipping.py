"""Global L2 clipping of update deltas: hand-computed cases and properties over arbitrary deltas."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.privacy import clip_delta, global_l2_norm

TOLERANCE = 1e-6

# Finite values up to 1e6 keep float32 squares inside range; the clipping still has to handle every layout.
_layer = st.one_of(
    hnp.arrays(dtype=np.float32, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
               elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(dtype=np.float64, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
               elements=st.floats(-1e6, 1e6)),
)
_deltas = st.lists(_layer, min_size=0, max_size=4)
_clip_norms = st.floats(1e-3, 1e4)


def test_norm_spans_all_layers() -> None:
    # 3-4-5 split across two layers, then a third layer of zeros.
    assert global_l2_norm([np.array([3.0]), np.array([[4.0]]), np.zeros(2)]) == 5.0


def test_delta_outside_is_scaled_onto_the_ball() -> None:
    clipped = clip_delta([np.array([3.0, 0.0]), np.array([4.0])], clip_norm=1.0)
    assert clipped.original_norm == 5.0
    assert clipped.scale == pytest.approx(0.2)
    assert clipped.was_clipped
    np.testing.assert_allclose(clipped.delta[0], [0.6, 0.0])
    np.testing.assert_allclose(clipped.delta[1], [0.8])


def test_delta_inside_is_unchanged() -> None:
    delta = [np.array([0.3, -0.4], dtype=np.float32)]
    clipped = clip_delta(delta, clip_norm=1.0)
    assert not clipped.was_clipped
    assert clipped.original_norm == pytest.approx(0.5)
    assert clipped.delta[0].dtype == np.float32
    np.testing.assert_array_equal(clipped.delta[0], delta[0])


def test_input_is_not_modified() -> None:
    delta = [np.array([30.0, 40.0])]
    clip_delta(delta, clip_norm=1.0)
    np.testing.assert_array_equal(delta[0], [30.0, 40.0])


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_norm_must_be_positive_and_finite(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        clip_delta([np.ones(2)], clip_norm=clip_norm)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_delta_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_delta([np.array([1.0, bad])], clip_norm=1.0)


def test_integer_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="layer 1 has dtype int64"):
        clip_delta([np.ones(2), np.ones(2, dtype=np.int64)], clip_norm=1.0)


def test_float32_layers_whose_squares_overflow_are_clipped() -> None:
    # 3e38 squared overflows float32; the norm is taken in float64.
    clipped = clip_delta([np.array([3e38, 3e38], dtype=np.float32)], clip_norm=2.0)
    assert global_l2_norm(clipped.delta) == pytest.approx(2.0, rel=1e-6)


@given(_deltas, _clip_norms)
@example([np.array([1e6, 1e6], dtype=np.float32)], 1e-3)
def test_every_clipped_delta_is_inside_the_ball(delta: list[np.ndarray], clip_norm: float) -> None:
    clipped = clip_delta(delta, clip_norm)
    assert global_l2_norm(clipped.delta) <= clip_norm * (1 + TOLERANCE)
    assert [layer.shape for layer in clipped.delta] == [layer.shape for layer in delta]
    assert [layer.dtype for layer in clipped.delta] == [layer.dtype for layer in delta]
    assert clipped.original_norm == pytest.approx(global_l2_norm(delta))


@given(_deltas, _clip_norms)
def test_deltas_already_inside_are_unchanged(delta: list[np.ndarray], clip_norm: float) -> None:
    norm = global_l2_norm(delta)
    clipped = clip_delta(delta, max(clip_norm, norm) if norm > 0 else clip_norm)
    assert not clipped.was_clipped
    for before, after in zip(delta, clipped.delta, strict=True):
        np.testing.assert_array_equal(after, before)
