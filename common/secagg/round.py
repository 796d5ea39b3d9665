"""What a secure-aggregation round adds to ``start_round``, and how a model update becomes one masked-able vector.

``SecureRoundSpec`` travels as the optional ``secure_aggregation`` object of ``start_round``::

    {"protocol": "secagg" | "secagg+" | "paillier", "config": <secagg/config>, "clip": float, "bits": int,
     "max_examples": int, "weighting": "samples" | "equal"[, "paillier": {"key_id", "packing"}]}

``config`` fixes who takes part, the threshold, the neighbour graph and the vector length; ``clip``, ``bits`` and
``max_examples`` fix the fixed-point encoding (``common.secagg.quantize``). ``clip`` bounds each entry of the
update's *delta* (trained minus global weights): the encoded entries are ``delta * n`` clipped to
``clip * max_examples``, so that the sum decodes to ``Σ n_k·delta_k`` and ``Σ n_k`` (the last entry), and FedAvg
is ``global + Σ n_k·delta_k / Σ n_k``. The server never needs a node's own ``n_k``. With ``weighting`` "equal"
every node encodes ``n = 1`` (DP-FedAvg's equal-weight mean, for distributed differential privacy).
With ``protocol`` "paillier" the same encoded vector is packed and encrypted instead of masked
(``common.paillier``); ``paillier`` (present for that protocol only) names the key and the packing, and
``config`` only fixes the participants and the vector length (its threshold and graph are unused).

Everything here is pure (numpy only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.paillier.packing import PaillierSpec
from common.secagg.messages import SecAggConfig
from common.secagg.quantize import MAX_UINT32, Quantizer, WeightedSum
from common.wire.codec import ArraySpec
from common.wire.errors import ProtocolError

PROTOCOLS = ("secagg", "secagg+", "paillier")
WEIGHTINGS = ("samples", "equal")
MAX_BITS = 24  # more precision than float32 deltas carry is wasted, and fewer nodes fit the ring

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureRoundSpec:
    """The round's secure-aggregation parameters: the protocol config and the update encoding."""

    protocol: str
    config: SecAggConfig
    clip: float  # largest |delta| per entry that is encoded exactly (larger entries are clipped)
    bits: int
    max_examples: int
    weighting: str = "samples"
    paillier: PaillierSpec | None = None  # protocol "paillier" only

    def __post_init__(self) -> None:
        if (self.protocol == "paillier") != (self.paillier is not None):
            raise ProtocolError("bad_config", "paillier parameters go with protocol paillier, and only with it")
        if self.weighting not in WEIGHTINGS:
            raise ProtocolError("bad_config", f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r:.40}")
        if self.protocol not in PROTOCOLS:
            raise ProtocolError("bad_config", f"protocol must be one of {PROTOCOLS}, got {self.protocol!r:.40}")
        if not (math.isfinite(self.clip) and 0 < self.clip <= 1e6):
            raise ProtocolError("bad_config", f"clip must be in (0, 1e6], got {self.clip!r:.40}")
        if not 1 <= self.bits <= MAX_BITS:
            raise ProtocolError("bad_config", f"bits must be in 1..{MAX_BITS}, got {self.bits}")
        if not 1 <= self.max_examples <= MAX_UINT32:
            raise ProtocolError("bad_config", f"max_examples must be in 1..{MAX_UINT32}, got {self.max_examples}")
        try:
            self.quantizer.check_capacity(len(self.config.node_ids))
        except ValueError as exc:
            raise ProtocolError("bad_config", str(exc)) from None
        packing = self.paillier.packing if self.paillier is not None else None
        if packing is not None and (packing.length, packing.num_nodes, packing.max_value) != (
                self.config.vector_length, len(self.config.node_ids), self.max_encoded_value):
            raise ProtocolError("bad_config", "the paillier packing does not fit the round (vector length, nodes "
                                              "or largest encoded value)")

    @property
    def max_encoded_value(self) -> int:
        """The largest entry ``encode_update`` produces (a quantized weight or the example count)."""
        return max(self.quantizer.levels, self.max_examples)

    def weight_of(self, num_examples: int) -> int:
        """What a node that trained on ``num_examples`` encodes as its weight."""
        return 1 if self.weighting == "equal" else num_examples

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(max_abs_value=self.clip * self.max_examples, bits=self.bits,
                         max_examples=self.max_examples)

    def error_bound(self, num_nodes: int, total_examples: int) -> float:
        """Largest error of one entry of the decoded FedAvg delta, for deltas within ``clip``."""
        return self.quantizer.error_bound(num_nodes) / max(total_examples, 1)

    def to_wire(self) -> dict[str, Any]:
        wire = {"protocol": self.protocol, "config": self.config.to_wire(), "clip": self.clip, "bits": self.bits,
                "max_examples": self.max_examples, "weighting": self.weighting}
        if self.paillier is not None:
            wire["paillier"] = self.paillier.to_wire()
        return wire

    @classmethod
    def from_wire(cls, document: object) -> SecureRoundSpec:
        names = {"protocol", "config", "clip", "bits", "max_examples", "weighting"}
        if not isinstance(document, dict) or set(document) - {"paillier"} != names:
            raise ProtocolError("bad_schema", "secure_aggregation must be an object with exactly protocol, config, "
                                              "clip, bits, max_examples and weighting (and paillier)")
        clip, bits, most = document["clip"], document["bits"], document["max_examples"]
        if not isinstance(clip, (int, float)) or isinstance(clip, bool):
            raise ProtocolError("bad_schema", "secure_aggregation.clip must be a number")
        for name, value in (("bits", bits), ("max_examples", most)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError("bad_schema", f"secure_aggregation.{name} must be an integer")
        protocol, weighting = document["protocol"], document["weighting"]
        if not isinstance(protocol, str) or not isinstance(weighting, str):
            raise ProtocolError("bad_schema", "secure_aggregation.protocol and weighting must be strings")
        try:
            clip = float(clip)
        except OverflowError:
            raise ProtocolError("bad_config", "secure_aggregation.clip is out of range") from None
        paillier = PaillierSpec.from_wire(document["paillier"]) if "paillier" in document else None
        return cls(protocol=protocol, config=SecAggConfig.from_wire(document["config"]), clip=clip, bits=bits,
                   max_examples=most, weighting=weighting, paillier=paillier)


def vector_length(specs: Sequence[ArraySpec]) -> int:
    """Entries of the encoded vector for a model with these layers: every weight, plus the example count."""
    return sum(math.prod(spec.shape) for spec in specs) + 1


def encode_update(spec: SecureRoundSpec, reference: Sequence[np.ndarray], trained: Sequence[np.ndarray],
                  num_examples: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """A node's trained weights -> the uint32 vector it masks (``(trained - reference)·n``, then ``n``)."""
    if len(reference) != len(trained) or any(np.shape(a) != np.shape(b) for a, b in zip(reference, trained,
                                                                                        strict=True)):
        raise ValueError("the trained weights do not have the global model's layout")
    delta = np.concatenate([np.asarray(t, dtype=np.float64).ravel() - np.asarray(r, dtype=np.float64).ravel()
                            for r, t in zip(reference, trained, strict=True)]) if trained else np.zeros(0)
    if delta.size + 1 != spec.config.vector_length:
        raise ValueError(f"the model has {delta.size} weights; the round expects {spec.config.vector_length - 1}")
    clipped = int(np.count_nonzero(np.abs(delta) > spec.clip))
    if clipped:
        logger.warning("secure aggregation: %d of %d delta entries exceed the clip range %g and are clipped "
                       "(raise --secagg-clip)", clipped, delta.size, spec.clip)
    return spec.quantizer.encode(delta, num_examples, rng=rng)


def decode_mean(spec: SecureRoundSpec, total: np.ndarray, num_nodes: int,
                reference: Sequence[np.ndarray]) -> tuple[list[np.ndarray], WeightedSum]:
    """The unmasked sum of ``num_nodes`` vectors -> FedAvg weights (in the reference's dtypes) and the raw sum."""
    weighted = spec.quantizer.decode_sum(total, num_nodes)
    mean_delta = weighted.mean()
    layers, start = [], 0
    for layer in reference:
        size = int(np.size(layer))
        update = np.asarray(layer, dtype=np.float64) + mean_delta[start:start + size].reshape(np.shape(layer))
        layers.append(update.astype(np.asarray(layer).dtype))
        start += size
    return layers, weighted
