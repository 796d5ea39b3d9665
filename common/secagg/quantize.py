"""Fixed-point encoding of a weighted update into integers mod 2^32, and decoding of their sum (pure numpy).

Secure aggregation adds vectors in the ring Z_{2^32}; a node therefore turns its float update ``w`` (trained on
``n`` examples) into integers first:

* the entries of ``w·n`` are clipped to ``[-c, c]`` (``c = max_abs_value``; pick ``c >= max|w|·max_examples``
  so clipping never bites in practice) and mapped affinely onto ``[0, 2^q - 1]`` (``q = bits``), then rounded;
* one extra entry holds ``n`` itself, exact (an integer in ``[0, max_examples]``).

The sum of ``N`` such vectors decodes to ``Σ w_k·n_k`` (the offset ``N·c`` is known once the survivors are) and
``Σ n_k``; their ratio is FedAvg. Nothing here needs the node's individual ``n_k`` at the server.

Overflow: the sum is taken mod 2^32 and must not wrap, so ``N·(2^q - 1) < 2^32`` and ``N·max_examples < 2^32``
(``check_capacity``). Equivalently ``N·(2^q - 1)`` bounds the sum of the scaled ``N·max_weight·max_examples``
range. With q = 16, up to 65,537 nodes fit; with q = 24, 256.

Rounding: ``stochastic=True`` (default) rounds up with probability equal to the fraction, drawn from a numpy
generator seeded by the OS (unbiased: the error averages out across nodes); ``stochastic=False`` rounds to
nearest (deterministic, biased per entry but at most half a step).

Error bound (``error_bound``) on each entry of the decoded ``Σ w_k·n_k``, for inputs inside ``[-c, c]``: each
node's entry is off by less than one step ``Δ = 2c / (2^q - 1)`` (stochastic) or at most ``Δ/2`` (nearest), so
the sum of ``N`` is off by at most ``N·Δ`` (resp. ``N·Δ/2``). Divided by ``Σ n_k`` this bounds the FedAvg error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS
MAX_UINT32 = MODULUS - 1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightedSum:
    """A decoded aggregate: ``Σ w_k·n_k`` (float64) and ``Σ n_k``; ``mean()`` is FedAvg."""

    weighted_total: np.ndarray
    num_examples: int

    def mean(self) -> np.ndarray:
        if self.num_examples <= 0:
            raise ValueError("no examples in the aggregate: the weighted mean is undefined")
        return self.weighted_total / self.num_examples


@dataclass(frozen=True, kw_only=True)
class Quantizer:
    """Clipping range ``max_abs_value`` (c) for the entries of ``w·n``, ``bits`` (q) of quantization range,
    the largest example count a node may report, and the rounding mode (see the module docstring)."""

    max_abs_value: float
    bits: int = 16
    max_examples: int = 1 << 16
    stochastic: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_abs_value) and self.max_abs_value > 0):
            raise ValueError(f"max_abs_value must be positive and finite, got {self.max_abs_value}")
        if not 1 <= self.bits <= MODULUS_BITS - 1:
            raise ValueError(f"bits must be in 1..{MODULUS_BITS - 1}, got {self.bits}")
        if not 1 <= self.max_examples <= MAX_UINT32:
            raise ValueError(f"max_examples must be in 1..{MAX_UINT32}, got {self.max_examples}")

    @property
    def levels(self) -> int:
        """The largest quantized value, ``2^q - 1``."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """The width ``Δ`` of one quantization step in units of ``w·n``."""
        return 2.0 * self.max_abs_value / self.levels

    def max_nodes(self) -> int:
        """The most nodes whose encoded vectors can be summed without wrapping mod 2^32."""
        return min(MAX_UINT32 // self.levels, MAX_UINT32 // self.max_examples)

    def check_capacity(self, num_nodes: int) -> None:
        """Raise ``ValueError`` if ``num_nodes`` encoded vectors could wrap around mod 2^32 when summed."""
        if num_nodes > self.max_nodes():
            raise ValueError(f"{num_nodes} nodes could overflow the 2^32 ring with bits={self.bits} and "
                             f"max_examples={self.max_examples}: at most {self.max_nodes()} fit")

    def error_bound(self, num_nodes: int) -> float:
        """Largest error of one entry of the decoded ``Σ w_k·n_k`` over ``num_nodes`` in-range inputs."""
        return num_nodes * self.step * (1.0 if self.stochastic else 0.5)

    def encode(self, update: np.ndarray, num_examples: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """``update`` (flat, float) trained on ``num_examples`` -> uint32 vector of ``len(update) + 1`` entries.

        ``rng`` only matters for stochastic rounding; the default is a fresh OS-seeded generator."""
        if not 0 <= num_examples <= self.max_examples:
            raise ValueError(f"num_examples {num_examples} is outside 0..{self.max_examples}")
        values = np.asarray(update, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"update must be a flat vector, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("update has non-finite entries")
        scaled = np.clip(values * num_examples, -self.max_abs_value, self.max_abs_value)
        position = (scaled + self.max_abs_value) / self.step  # in [0, levels] up to float rounding
        if self.stochastic:
            generator = rng if rng is not None else np.random.default_rng()
            floor = np.floor(position)
            rounded = floor + (generator.random(position.shape) < position - floor)
        else:
            rounded = np.rint(position)
        encoded = np.empty(values.size + 1, dtype=np.uint32)
        encoded[:-1] = np.clip(rounded, 0, self.levels).astype(np.uint32)
        encoded[-1] = num_examples
        return encoded

    def decode_sum(self, total: np.ndarray, num_nodes: int) -> WeightedSum:
        """The sum mod 2^32 of ``num_nodes`` encoded vectors -> ``Σ w_k·n_k`` and ``Σ n_k``."""
        self.check_capacity(num_nodes)
        summed = np.asarray(total)
        if summed.dtype != np.uint32 or summed.ndim != 1 or summed.size < 1:
            raise ValueError("the sum must be a non-empty flat uint32 vector")
        if np.any(summed[:-1].astype(np.int64) > num_nodes * self.levels) or int(summed[-1]) > (
                num_nodes * self.max_examples):
            raise ValueError(f"the sum has entries that {num_nodes} encoded vectors cannot produce (wrong node count "
                             "or a corrupted aggregate)")
        weighted = summed[:-1].astype(np.float64) * self.step - num_nodes * self.max_abs_value
        return WeightedSum(weighted_total=weighted, num_examples=int(summed[-1]))
