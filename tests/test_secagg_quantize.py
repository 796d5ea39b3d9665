"""Fixed-point encoding for secure aggregation: hand-computed codes, the documented error bound, overflow checks."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.secagg.quantize import MODULUS, Quantizer


def test_nearest_rounding_by_hand() -> None:
    # c = 4, q = 3: 7 steps of 8/7 over [-4, 4]; w·n = [0.5·2, -2·2, 10·2 (clipped to 4)] = [1, -4, 4].
    quantizer = Quantizer(max_abs_value=4.0, bits=3, max_examples=10, stochastic=False)
    encoded = quantizer.encode(np.array([0.5, -2.0, 10.0]), 2)
    assert encoded.dtype == np.uint32
    assert encoded.tolist() == [4, 0, 7, 2]  # (1 + 4) / (8/7) = 4.375 -> 4; the last entry is n
    decoded = quantizer.decode_sum(encoded, 1)
    assert decoded.num_examples == 2
    np.testing.assert_allclose(decoded.weighted_total, [4 * 8 / 7 - 4, -4, 4])


def test_fedavg_of_two_nodes() -> None:
    quantizer = Quantizer(max_abs_value=1000.0, bits=20, max_examples=100, stochastic=False)
    total = quantizer.encode(np.array([1.0, 3.0]), 10) + quantizer.encode(np.array([4.0, -3.0]), 30)
    mean = quantizer.decode_sum(total, 2).mean()
    np.testing.assert_allclose(mean, [(10 + 120) / 40, (30 - 90) / 40], atol=quantizer.error_bound(2) / 40)


@given(num_nodes=st.integers(1, 12), bits=st.integers(2, 24), stochastic=st.booleans(), seed=st.integers(0, 2**32),
       max_abs_value=st.floats(1e-3, 1e6))
def test_aggregate_error_within_the_documented_bound(num_nodes: int, bits: int, stochastic: bool, seed: int,
                                                     max_abs_value: float) -> None:
    quantizer = Quantizer(max_abs_value=max_abs_value, bits=bits, max_examples=50, stochastic=stochastic)
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 51, size=num_nodes)
    updates = [rng.uniform(-1, 1, size=16) * max_abs_value / n for n in counts]  # w·n inside [-c, c]
    total = np.zeros(17, dtype=np.uint32)
    for update, count in zip(updates, counts, strict=True):
        total = total + quantizer.encode(update, int(count), rng=rng)
    decoded = quantizer.decode_sum(total, num_nodes)
    exact = sum(update * count for update, count in zip(updates, counts, strict=True))
    assert decoded.num_examples == counts.sum()
    assert np.max(np.abs(decoded.weighted_total - exact)) <= quantizer.error_bound(num_nodes) * (1 + 1e-9)


def test_stochastic_rounding_is_unbiased_on_average() -> None:
    quantizer = Quantizer(max_abs_value=1.0, bits=2, max_examples=1)  # steps of 2/3: 0.1 sits between two codes
    codes = quantizer.encode(np.full(20_000, 0.1), 1, rng=np.random.default_rng(7))[:-1]
    assert set(codes.tolist()) == {1, 2}
    assert np.mean(codes * quantizer.step - 1.0) == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize(("bits", "max_examples", "fits"), [(16, 1, 65_537), (24, 1, 256), (8, 1 << 20, 4095)])
def test_capacity_keeps_the_sum_below_the_modulus(bits: int, max_examples: int, fits: int) -> None:
    quantizer = Quantizer(max_abs_value=1.0, bits=bits, max_examples=max_examples)
    assert quantizer.max_nodes() == fits
    assert fits * quantizer.levels < MODULUS and fits * max_examples < MODULUS
    quantizer.check_capacity(fits)
    with pytest.raises(ValueError, match="overflow"):
        quantizer.check_capacity(fits + 1)


@pytest.mark.parametrize("update", [np.array([np.nan]), np.array([[1.0]]), np.array([np.inf])])
def test_rejects_bad_updates(update: np.ndarray) -> None:
    with pytest.raises(ValueError):
        Quantizer(max_abs_value=1.0).encode(update, 1)


def test_rejects_a_sum_no_encoding_can_produce() -> None:
    quantizer = Quantizer(max_abs_value=1.0, bits=4, max_examples=5)
    with pytest.raises(ValueError, match="cannot produce"):
        quantizer.decode_sum(np.array([31, 3], dtype=np.uint32), 2)  # 2 nodes reach at most 2·15 = 30
