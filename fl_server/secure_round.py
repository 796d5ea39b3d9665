"""The server's side of one secure-aggregation round, between the round loop and ``SecAggServer`` (pure: no I/O).

The coordinator drives the four stages (``STAGES``) and does the transport; this class decides what each
stage expects, takes the nodes' messages, says what to send when a stage closes, and keeps the round's
secure-aggregation record (who dropped at which stage, per-stage timings, what was refused, the
quantization error bound). Masked vectors arrive as ordinary signed update records (one uint32 layer) and are
handed over by ``take_masked``; the other messages come from Socket.IO as ``SecAggInput``.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.secagg.crypto import AdvertVerifier
from common.secagg.messages import KeyAdvert, MaskedInput, SecAggConfig, SharePackage, UnmaskResponse
from common.secagg.protocol import SecAggFailure, SecAggServer
from common.secagg.round import MAX_BITS, SecureRoundSpec, decode_mean
from common.wire.codec import ArraySpec
from common.wire.errors import ProtocolError

logger = logging.getLogger(__name__)

STAGES = ("advertise", "share_keys", "masked_input", "unmask")
SecAggMessage = KeyAdvert | SharePackage | UnmaskResponse
# Node -> server Socket.IO events and the message type each carries.
NODE_EVENTS: dict[str, type[KeyAdvert] | type[SharePackage] | type[UnmaskResponse]] = {
    "secagg_advert": KeyAdvert, "secagg_shares": SharePackage, "secagg_unmasked": UnmaskResponse}


@dataclass(frozen=True)
class SecAggInput:
    """A secure-aggregation message from the node authenticated on the Socket.IO session that sent it."""

    node_id: str
    message: SecAggMessage


@dataclass(frozen=True)
class SecureAggregationSettings:
    """``--secure-aggregation`` and its options (None threshold/neighbours: chosen per round, see ``plan``)."""

    protocol: str  # "secagg" (all pairs) or "secagg+" (k neighbours)
    threshold: int | None = None
    neighbours: int | None = None
    clip: float = 1.0
    bits: int = 16
    stage_timeout_s: float = 30.0

    def plan(self, num_nodes: int) -> tuple[int | None, int]:
        """(neighbours k or None for all pairs, threshold t) for a round with ``num_nodes`` participants.

        SecAgg+ defaults to k = 2·⌈log2 n⌉ (Bell et al.: O(log n) neighbours); the threshold defaults to
        ⌈2/3⌉ of a node's holders (its neighbours and itself), Bonawitz et al.'s choice against an active server."""
        degree = self.neighbours
        if self.protocol == "secagg+" and degree is None:
            degree = max(2, 2 * math.ceil(math.log2(max(num_nodes, 2))))
        holders = num_nodes if degree is None else min(degree, num_nodes - 1) + 1
        threshold = self.threshold if self.threshold is not None else max(2, math.ceil(2 * holders / 3))
        return (None if degree is not None and degree >= num_nodes - 1 else degree), threshold


class SecureRound:
    """One round's secure aggregation as the coordinator sees it (event loop, but ``take_masked`` may run on
    the worker thread the round loop awaits)."""

    def __init__(self, settings: SecureAggregationSettings, *, session_id: str, server_round: int,
                 participants: Sequence[str], declared_samples: Mapping[str, int], specs: Sequence[ArraySpec],
                 verifier: AdvertVerifier, equal_weights: bool = False) -> None:
        degree, threshold = settings.plan(len(participants))
        length = sum(math.prod(spec.shape) for spec in specs) + 1
        self.settings = settings
        self.spec = SecureRoundSpec(
            protocol=settings.protocol,
            config=SecAggConfig(session_id=session_id, server_round=server_round,
                                node_ids=tuple(sorted(participants)), threshold=threshold, vector_length=length,
                                neighbours=degree, graph_seed=secrets.token_bytes(32)),
            clip=settings.clip, bits=min(settings.bits, MAX_BITS),
            max_examples=1 if equal_weights else max([1, *(declared_samples.get(n, 1) for n in participants)]),
            weighting="equal" if equal_weights else "samples")
        self.server = SecAggServer(self.spec.config, verifier=verifier)
        self.stage = STAGES[0]
        self.timings_s: dict[str, float] = {}
        self.dropped_by_stage: dict[str, list[str]] = {}
        self.rejected: Counter[str] = Counter()
        self.result_info: dict[str, Any] = {}
        self._received: dict[str, set[str]] = {stage: set() for stage in STAGES}
        self._expected: set[str] = set(participants)

    @property
    def vector_spec(self) -> ArraySpec:
        """The one layer a masked update record carries."""
        return ArraySpec(dtype="uint32", shape=(self.spec.config.vector_length,))

    @property
    def threshold(self) -> int:
        return self.spec.config.threshold

    def expected(self) -> set[str]:
        """The nodes the current stage waits for."""
        return set(self._expected)

    def missing(self, gone: set[str] | Mapping[str, object]) -> set[str]:
        """Expected at this stage, not in yet, and not known to be gone (refused, forfeited)."""
        return self._expected - self._received[self.stage] - set(gone)

    # ----------------------------------------------------------- inputs

    def offer(self, item: SecAggInput) -> None:
        """Take a Socket.IO message; ``ProtocolError`` (with its reason) if it is refused (nothing changes)."""
        message = item.message
        sender = message.sender if isinstance(message, SharePackage) else message.node_id
        if sender != item.node_id:
            raise ProtocolError("node_mismatch", f"a message from {item.node_id} names node {sender!r:.80}")
        if isinstance(message, KeyAdvert):
            self.server.receive_advert(message)
            stage = "advertise"
        elif isinstance(message, SharePackage):
            self.server.receive_shares(message)
            stage = "share_keys"
        else:
            self.server.receive_unmask(message)
            stage = "unmask"
        self._received[stage].add(item.node_id)

    def take_masked(self, node_id: str, vector: np.ndarray) -> None:
        """A masked vector that arrived as a complete, signed update record of ``node_id``."""
        self.server.receive_masked(MaskedInput(self.spec.config.session_id, self.spec.config.server_round, node_id,
                                               vector))
        self._received["masked_input"].add(node_id)

    def refuse(self, reason: str) -> None:
        self.rejected[reason] += 1

    # ----------------------------------------------------------- stage ends

    def close_stage(self, elapsed_s: float) -> dict[str, tuple[str, dict[str, Any]]]:
        """End the current stage: what to send to whom (node -> (event, payload)). Raises ``SecAggFailure`` when
        too few nodes are left (below the threshold)."""
        stage = self.stage
        self.timings_s[stage] = round(elapsed_s, 4)
        self.dropped_by_stage[stage] = sorted(self._expected - self._received[stage])
        outgoing: dict[str, tuple[str, dict[str, Any]]]
        if stage == "advertise":
            outgoing = {node: ("secagg_adverts", msg.to_wire()) for node, msg in self.server.close_adverts().items()}
        elif stage == "share_keys":
            outgoing = {node: ("secagg_delivery", msg.to_wire()) for node, msg in self.server.close_shares().items()}
        elif stage == "masked_input":
            outgoing = {node: ("secagg_unmask", msg.to_wire()) for node, msg in self.server.close_masked().items()}
        else:
            raise ValueError("the unmask stage ends with finish()")
        self._expected = set(outgoing)
        self.stage = STAGES[STAGES.index(stage) + 1]
        return outgoing

    def finish(self, elapsed_s: float, reference: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """End the unmask stage: the survivors' FedAvg (in the reference's layout) and their total examples."""
        self.timings_s["unmask"] = round(elapsed_s, 4)
        self.dropped_by_stage["unmask"] = sorted(self._expected - self._received["unmask"])
        result = self.server.finish()
        weights, weighted = decode_mean(self.spec, result.total, len(result.survivors), reference)
        self.result_info = {"survivors": list(result.survivors), "unmasked_dropped": list(result.dropped),
                            "num_samples_total": weighted.num_examples,
                            "quantization_error_bound": self.spec.error_bound(len(result.survivors),
                                                                              weighted.num_examples),
                            # What fl-audit redoes the unmasking from (with the masked records in Kafka): the
                            # adverts, partners and revealed shares, which let anyone rebuild the sum and no more.
                            "transcript": self.server.transcript().to_wire()}
        return weights, weighted.num_examples

    def fail(self, failure: SecAggFailure) -> str:
        """The round's failure reason for the history."""
        self.result_info = {"failure": failure.reason}
        return f"secure aggregation failed: {failure}"

    def record(self) -> dict[str, Any]:
        """The history's ``secure_aggregation`` object for this round."""
        config = self.spec.config
        return {"protocol": self.spec.protocol, "threshold": config.threshold, "neighbours": config.neighbours,
                "nodes": len(config.node_ids), "clip": self.spec.clip, "bits": self.spec.bits,
                "weighting": self.spec.weighting, "max_examples": self.spec.max_examples,
                "vector_length": config.vector_length,
                "dropped_by_stage": {stage: nodes for stage, nodes in self.dropped_by_stage.items() if nodes},
                "timings_s": dict(self.timings_s), "rejected_by_reason": dict(sorted(self.rejected.items())),
                **self.result_info}
