"""Streaming strategies hold one accumulator, not one model per node; robust ones say they keep every update."""

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

from fl_server.strategies import FedAvg, Median, make_strategy
from tests.test_collector import collector, records

STREAMING = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
MODEL = [np.zeros((256, 256), np.float32), np.zeros(256, np.float32)]  # ~260 KB
MODEL_BYTES = sum(layer.nbytes for layer in MODEL)


def feed(strategy, count, refs=None):
    """Accumulate ``count`` fresh updates, keeping no reference to them here (only weakrefs if asked)."""
    for index in range(count):
        update = [np.full_like(layer, index + 1) for layer in MODEL]
        if refs is not None:
            refs.extend(weakref.ref(layer) for layer in update)
        strategy.accumulate(f"n{index}", update, 10)
        del update


@pytest.mark.parametrize("name", STREAMING)
def test_inputs_are_released_after_accumulate(name):
    strategy = make_strategy(name)
    strategy.begin_round(1, MODEL)
    refs: list[weakref.ref] = []
    feed(strategy, 5, refs)
    gc.collect()
    assert all(ref() is None for ref in refs), "the strategy kept a reference to an update"
    assert strategy.aggregate() is not None


@pytest.mark.parametrize("name", STREAMING)
def test_state_does_not_grow_with_the_number_of_updates(name):
    strategy = make_strategy(name)
    strategy.begin_round(1, MODEL)
    feed(strategy, 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed(strategy, 30)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < MODEL_BYTES / 4, f"state grew by {grown} bytes over 30 updates of {MODEL_BYTES}"


def test_fedavg_state_is_one_float64_model():
    strategy = FedAvg()
    strategy.begin_round(1, MODEL)
    feed(strategy, 40)
    assert strategy.state_nbytes == 2 * MODEL_BYTES  # float64 sums of a float32 model


def test_robust_strategies_keep_every_update_in_one_stacked_array():
    strategy = Median()
    strategy.begin_round(1, MODEL)
    refs: list[weakref.ref] = []
    feed(strategy, 5, refs)
    gc.collect()
    assert all(ref() is None for ref in refs)  # copied into the stack, not referenced
    stack = strategy._stack
    assert stack.rows.shape == (5, MODEL_BYTES // 4)
    assert stack.nbytes >= 5 * MODEL_BYTES


def test_collector_hands_the_weights_over_and_keeps_none():
    round_collector = collector()
    update = next(u for u in map(round_collector.offer_record, records()) if u is not None)
    refs = [weakref.ref(layer) for layer in update.weights]
    assert round_collector.completed["a"].num_samples == update.num_samples == 5
    del update
    gc.collect()
    assert all(ref() is None for ref in refs)
