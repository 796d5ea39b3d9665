"""The server's side of a Paillier round (``--secure-aggregation paillier``; pure apart from the clock).

Nodes publish their packed, encrypted updates as ordinary signed update records (one uint8 layer of fixed-width
ciphertexts, ``common.paillier.round.layer_spec``); ``take_encrypted`` multiplies each accepted one into the
round's sum (the server never holds a key that decrypts). When the round's updates are in, ``request`` is what
the coordinator sends the decryptor, and ``finish`` checks the decryptor's signed answer (its key, this round,
these nodes, its signature) and decodes it into FedAvg with the quantization masking secure aggregation uses.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.paillier.keys import PaillierPublic
from common.paillier.messages import DecryptedSum, DecryptRequest
from common.paillier.packing import PackingLayout, PaillierSpec, ciphertext_bytes
from common.paillier.round import add_encrypted, decode_sum, layer_spec
from common.secagg.messages import SecAggConfig
from common.secagg.round import MAX_BITS, SecureRoundSpec
from common.wire.codec import ArraySpec
from common.wire.errors import ProtocolError

logger = logging.getLogger(__name__)


class PaillierFailure(Exception):
    """The round cannot produce a model: the decryptor refused, or its answer does not check out."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class PaillierSettings:
    """``--secure-aggregation paillier`` and its options."""

    public: PaillierPublic
    decryptor_url: str
    clip: float = 1.0
    bits: int = 16
    packed: bool = True  # False: one value per ciphertext (the benchmark's comparison)
    decrypt_timeout_s: float = 120.0


class PaillierRound:
    """One round's encrypted sum as the coordinator sees it (``take_encrypted`` runs on the worker thread the
    round loop awaits, one update at a time)."""

    def __init__(self, settings: PaillierSettings, *, session_id: str, server_round: int,
                 participants: Sequence[str], declared_samples: Mapping[str, int], specs: Sequence[ArraySpec],
                 equal_weights: bool = False) -> None:
        nodes = tuple(sorted(participants))
        length = sum(math.prod(spec.shape) for spec in specs) + 1
        max_examples = 1 if equal_weights else max([1, *(declared_samples.get(n, 1) for n in participants)])
        bits = min(settings.bits, MAX_BITS)
        config = SecAggConfig(session_id=session_id, server_round=server_round, node_ids=nodes,
                              threshold=len(nodes), vector_length=length)  # threshold and graph unused here
        layout = PackingLayout.plan(length=length, max_value=max((1 << bits) - 1, max_examples),
                                    num_nodes=len(nodes), key_bits=settings.public.key_bits, packed=settings.packed)
        self.settings = settings
        self.spec = SecureRoundSpec(protocol="paillier", config=config, clip=settings.clip, bits=bits,
                                    max_examples=max_examples, weighting="equal" if equal_weights else "samples",
                                    paillier=PaillierSpec(key_id=settings.public.key_id, packing=layout))
        self.layout = layout
        self.total: list[int] | None = None
        self.summed: list[str] = []
        self.timings_s: dict[str, float] = {"aggregate_cpu": 0.0}
        self.result_info: dict[str, Any] = {}

    @property
    def vector_spec(self) -> ArraySpec:
        return layer_spec(self.layout)

    def take_encrypted(self, node_id: str, layer: np.ndarray) -> None:
        """A node's ciphertexts, from a complete signed update record: multiplied into the round's sum."""
        t0 = time.thread_time()
        try:
            self.total = add_encrypted(self.settings.public.public_key, self.total, layer)
        except ValueError as exc:
            raise ProtocolError("bad_ciphertext", str(exc)) from None
        self.summed.append(node_id)
        self.timings_s["aggregate_cpu"] = round(self.timings_s["aggregate_cpu"] + time.thread_time() - t0, 6)

    def request(self, offsets_from: Mapping[int, int], offsets_to: Mapping[int, int]) -> DecryptRequest:
        """What the decryptor is asked: the sum of the accepted updates, and where their records are."""
        if self.total is None:
            raise PaillierFailure("no_updates", "no encrypted update was accepted")
        config = self.spec.config
        spans = {p: (offsets_from.get(p, 0), end) for p, end in offsets_to.items() if end > offsets_from.get(p, 0)}
        return DecryptRequest(config.session_id, config.server_round, self.settings.public.key_id,
                              tuple(sorted(self.summed)), spans, tuple(self.total))

    def request_wire(self, request: DecryptRequest) -> dict[str, Any]:
        return request.to_wire(ciphertext_bytes(self.layout.key_bits))

    def finish(self, request: DecryptRequest, answer: DecryptedSum,
               reference: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Check the decryptor's answer and decode it: FedAvg weights and the total examples."""
        if not answer.verify(self.settings.public.decryptor):
            raise PaillierFailure("bad_decryptor_signature", "the decrypted sum is not signed by the decryptor's key")
        if (answer.session_id, answer.server_round, answer.key_id, answer.nodes) != (
                request.session_id, request.server_round, request.key_id, request.nodes):
            raise PaillierFailure("wrong_answer", "the decrypted sum is for another round, key or set of nodes")
        t0 = time.thread_time()
        try:
            weights, weighted = decode_sum(self.spec, answer.plaintexts, len(request.nodes), reference)
        except ValueError as exc:
            raise PaillierFailure("bad_sum", str(exc)) from None
        self.timings_s["decode_cpu"] = round(time.thread_time() - t0, 6)
        self.result_info = {"survivors": list(request.nodes), "num_samples_total": weighted.num_examples,
                            "quantization_error_bound": self.spec.error_bound(len(request.nodes),
                                                                              weighted.num_examples),
                            # What fl-audit re-checks the aggregation from: the decryptor's signed sum, its key,
                            # and the encoding the nodes used.
                            "decryption": answer.to_wire(),
                            "decryptor_public_key": self.settings.public.decryptor.to_pem(),
                            "spec": self.spec.to_wire()}
        return weights, weighted.num_examples

    def fail(self, failure: PaillierFailure) -> str:
        self.result_info = {"failure": failure.reason}
        return f"paillier aggregation failed: {failure.reason}: {failure}"

    def record(self) -> dict[str, Any]:
        """The history's ``secure_aggregation`` object for this round."""
        layout = self.layout
        return {"protocol": "paillier", "key_bits": layout.key_bits, "key_id": self.settings.public.key_id,
                "nodes": len(self.spec.config.node_ids), "clip": self.spec.clip, "bits": self.spec.bits,
                "weighting": self.spec.weighting, "max_examples": self.spec.max_examples,
                "vector_length": layout.length,
                "packing": {"values_per_ciphertext": layout.slots, "bits_per_value": layout.value_bits,
                            "headroom_bits": layout.headroom_bits, "slot_bits": layout.slot_bits},
                "ciphertexts_per_update": layout.num_plaintexts,
                "ciphertext_bytes": layout.num_plaintexts * ciphertext_bytes(layout.key_bits),
                "plaintext_bytes": 4 * (layout.length - 1),
                "timings_s": dict(self.timings_s), **self.result_info}
