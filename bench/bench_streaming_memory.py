"""Peak memory of aggregating N updates: streaming FedAvg vs. collect-all-then-average, side by side.

Both runs see the same updates, produced one at a time as they would arrive from Kafka. The
streaming strategy folds each into a float64 running sum and drops it; the reference keeps
every update and averages at the end (``weighted_average``). Peaks come from ``tracemalloc``
(numpy reports its buffers to it), measured in one process, one after the other.

    .venv/bin/python bench/bench_streaming_memory.py [--updates 50] [--model-mb 10]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_server.strategies import FedAvg, weighted_average

MB = 1024 * 1024


def model_shapes(model_mb: float) -> list[tuple[int, ...]]:
    """A dense-net-like float32 model of about ``model_mb`` MiB: one big matrix, a bias, a small head."""
    params = int(model_mb * MB / 4)
    width = 1000
    rows = max(1, (params - 10 * width - width - 10) // width)
    return [(rows, width), (width,), (width, 10), (10,)]


def updates(shapes: list[tuple[int, ...]], count: int, seed: int = 0) -> Iterator[tuple[list[np.ndarray], int]]:
    """``count`` updates, generated lazily: only the one being handed over exists at a time."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield [rng.standard_normal(shape, dtype=np.float32) for shape in shapes], 10 + index


def streaming(shapes: list[tuple[int, ...]], count: int) -> list[np.ndarray]:
    strategy = FedAvg()
    strategy.begin_round(1, [np.empty(0, np.float32) for _ in shapes])
    source = updates(shapes, count)
    for index in range(count):  # not enumerate(): its reused tuple would keep the previous update alive
        weights, num_samples = next(source)
        strategy.accumulate(f"n{index}", weights, num_samples)
        del weights
    result = strategy.aggregate()
    assert result is not None
    return result


def collect_all(shapes: list[tuple[int, ...]], count: int) -> list[np.ndarray]:
    return weighted_average(list(updates(shapes, count)))


def measure(run: Callable[[list[tuple[int, ...]], int], list[np.ndarray]], shapes: list[tuple[int, ...]],
            count: int) -> tuple[int, float, list[np.ndarray]]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        started = time.perf_counter()
        result = run(shapes, count)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, elapsed, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50, help="number of node updates (default 50)")
    parser.add_argument("--model-mb", type=float, default=10.0, help="model size in MiB of float32 (default 10)")
    args = parser.parse_args(argv)

    shapes = model_shapes(args.model_mb)
    model_bytes = sum(int(np.prod(s)) for s in shapes) * 4
    stream_peak, stream_s, stream_result = measure(streaming, shapes, args.updates)
    collect_peak, collect_s, collect_result = measure(collect_all, shapes, args.updates)
    for got, want in zip(stream_result, collect_result, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    print(f"model: {model_bytes / MB:.2f} MiB float32 ({model_bytes // 4:,} parameters), {args.updates} updates")
    print(f"{'method':<28}{'peak MiB':>10}{'peak / model':>14}{'time s':>9}")
    print(f"{'streaming FedAvg':<28}{stream_peak / MB:>10.1f}{stream_peak / model_bytes:>14.2f}{stream_s:>9.2f}")
    print(f"{'collect-all, then average':<28}{collect_peak / MB:>10.1f}{collect_peak / model_bytes:>14.2f}"
          f"{collect_s:>9.2f}")
    print(f"collect-all / streaming peak: {collect_peak / stream_peak:.1f}x (results agree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
