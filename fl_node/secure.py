"""The node's side of a secure-aggregation round (``--secure-aggregation`` at the server).

``NodeSecureRound`` wraps one round's ``SecAggClient``: the node advertises its keys as soon as ``start_round``
arrives (while it trains), answers the server's advert broadcast with its encrypted shares, waits for the
shares addressed to it before masking its update, and answers the unmask request. The masked vector goes to
Kafka as the round's update (one uint32 layer, chunked and signed like any update); everything else travels
over Socket.IO. Pure apart from the asyncio future the delivery arrives in.

``NodePaillierRound`` is the node's side of ``--secure-aggregation paillier``: the same encoded vector, packed and
encrypted with the federation's public key instead of masked; it needs no messages besides the update record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.paillier.keys import PaillierPublic
from common.paillier.packing import PaillierSpec
from common.paillier.round import encrypt_update
from common.secagg.crypto import HmacAdvertSigner
from common.secagg.messages import (
    AdvertBroadcast,
    KeyAdvert,
    ShareDelivery,
    SharePackage,
    UnmaskRequest,
    UnmaskResponse,
)
from common.secagg.protocol import SecAggClient
from common.secagg.round import SecureRoundSpec, encode_update, vector_length
from common.wire.codec import ArraySpec
from common.wire.errors import ProtocolError

logger = logging.getLogger(__name__)

# Server -> node events, and the message each carries.
SERVER_EVENTS: dict[str, type[AdvertBroadcast] | type[ShareDelivery] | type[UnmaskRequest]] = {
    "secagg_adverts": AdvertBroadcast, "secagg_delivery": ShareDelivery, "secagg_unmask": UnmaskRequest}


def check_spec(spec: SecureRoundSpec, *, node_id: str, session_id: str, server_round: int) -> None:
    """What a node checks before it takes part: the round is this one, it is invited, and the threshold is a
    majority of its holders (a lower one would let fewer colluders rebuild its secrets)."""
    config = spec.config
    if (config.session_id, config.server_round) != (session_id, server_round):
        raise ProtocolError("wrong_round", "the secure-aggregation config is not for this round")
    if node_id not in config.node_ids:
        raise ProtocolError("not_participant", f"node {node_id} is not in the secure-aggregation config")
    holders = len(config.holders(node_id))
    if 2 * config.threshold <= holders:
        raise ProtocolError("weak_threshold", f"threshold {config.threshold} is not a majority of this node's "
                                              f"{holders} share holders")


class NodeSecureRound:
    """One node's secure aggregation of one round."""

    def __init__(self, spec: SecureRoundSpec, node_id: str, node_key: bytes) -> None:
        self.spec = spec
        self.client = SecAggClient(spec.config, node_id, signer=HmacAdvertSigner(node_key))
        self.delivery: asyncio.Future[ShareDelivery] = asyncio.get_running_loop().create_future()

    def advertise(self) -> KeyAdvert:
        return self.client.advertise()

    def share_keys(self, broadcast: AdvertBroadcast) -> SharePackage:
        return self.client.share_keys(broadcast)

    def deliver(self, delivery: ShareDelivery) -> None:
        if self.delivery.done():
            raise ProtocolError("duplicate", "a second share delivery for this round")
        self.delivery.set_result(delivery)

    def masked_update(self, delivery: ShareDelivery, reference: Sequence[np.ndarray], trained: Sequence[np.ndarray],
                      num_examples: int) -> np.ndarray:
        """The update to publish: the encoded delta, masked (worker thread: O(model) numpy and ChaCha20)."""
        expected = vector_length([ArraySpec.of(np.asarray(w)) for w in reference])
        if expected != self.spec.config.vector_length:
            raise ProtocolError("bad_config", f"the round's vector length {self.spec.config.vector_length} does not "
                                              f"fit the model ({expected})")
        encoded = encode_update(self.spec, reference, trained, self.spec.weight_of(num_examples))
        return self.client.mask_input(delivery, encoded).vector

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        return self.client.unmask(request)


def parse_server_message(event: str, data: Any) -> AdvertBroadcast | ShareDelivery | UnmaskRequest:
    return SERVER_EVENTS[event].from_wire(data)


def check_paillier_spec(spec: SecureRoundSpec, public: PaillierPublic | None, *, node_id: str, session_id: str,
                        server_round: int) -> PaillierSpec:
    """What a node checks before it encrypts for a Paillier round: this round, invited, and the federation key
    in its own ``--paillier-public-key`` file (a server that names another key may hold its private half)."""
    if public is None:
        raise ProtocolError("no_paillier_key", "a paillier round needs this node's --paillier-public-key")
    if (spec.config.session_id, spec.config.server_round) != (session_id, server_round):
        raise ProtocolError("wrong_round", "the secure-aggregation config is not for this round")
    if node_id not in spec.config.node_ids:
        raise ProtocolError("not_participant", f"node {node_id} is not in the secure-aggregation config")
    if spec.paillier is None or spec.paillier.key_id != public.key_id or (
            spec.paillier.packing.key_bits != public.key_bits):
        raise ProtocolError("wrong_paillier_key", "the round names a Paillier key other than this node's "
                                                  f"{public.key_id}")
    return spec.paillier


class NodePaillierRound:
    """One node's encrypted update of one Paillier round (no key stages: the federation key is fixed)."""

    def __init__(self, spec: SecureRoundSpec, public: PaillierPublic) -> None:
        self.spec = spec
        self.public = public
        self.encrypt_s = 0.0

    def encrypted_update(self, reference: Sequence[np.ndarray], trained: Sequence[np.ndarray],
                         num_examples: int) -> np.ndarray:
        """The update to publish: encoded, packed and encrypted (worker thread: one exponentiation per plaintext)."""
        expected = vector_length([ArraySpec.of(np.asarray(w)) for w in reference])
        if expected != self.spec.config.vector_length:
            raise ProtocolError("bad_config", f"the round's vector length {self.spec.config.vector_length} does not "
                                              f"fit the model ({expected})")
        t0 = time.perf_counter()
        layer = encrypt_update(self.spec, self.public.public_key, reference, trained, self.spec.weight_of(num_examples))
        self.encrypt_s = time.perf_counter() - t0
        return layer
