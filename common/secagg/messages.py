"""Secure-aggregation wire types: the round's public config and the messages of its four stages.

Every message is a JSON object ``{"type": "secagg/<kind>", "session": str, "round": int, ...}`` with exactly
the fields listed below; bytes travel as standard base64 strings. ``from_wire`` accepts only that (no extra
fields, exact byte lengths) and raises ``ProtocolError(reason, message)`` otherwise.

=================  ===========  ==========================================================================
type               direction    fields
=================  ===========  ==========================================================================
secagg/config      server→node  nodes [str], threshold int, vector_length int, neighbours int|null, seed b64
secagg/advert      node→server  node, enc_pk b64(32), mask_pk b64(32), signature b64(32 or 64)
secagg/adverts     server→node  recipient, adverts [secagg/advert objects]
secagg/shares      node→server  sender, ciphertexts {recipient: b64}
secagg/delivery    server→node  recipient, ciphertexts {sender: b64}
secagg/masked      node→server  node, vector b64(4·vector_length, uint32 little-endian)
secagg/unmask      server→node  recipient, survivors [str], dropped [str]
secagg/unmasked    node→server  node, seed_shares {owner: b64(32)}, key_shares {owner: b64(32)}
=================  ===========  ==========================================================================
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from common.secagg.crypto import ED25519_SIGNATURE_BYTES, HMAC_TAG_BYTES, KEY_BYTES, NONCE_BYTES
from common.secagg.graph import neighbour_graph
from common.secagg.shamir import SHARE_BYTES
from common.wire.errors import ProtocolError
from common.wire.protocol import check_node_id, check_session_id

SHARE_PLAINTEXT_BYTES = 2 * SHARE_BYTES  # a share of the masking private key, then one of the self-mask seed
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + 16  # + the GCM tag
MAX_NODES = 10_000
MAX_VECTOR_LENGTH = 1 << 28
SEED_BYTES = 32

logger = logging.getLogger(__name__)


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(value: object, where: str, *, lengths: tuple[int, ...] | None = None) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("bad_schema", f"{where} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProtocolError("bad_schema", f"{where} is not valid base64") from None
    if lengths is not None and len(raw) not in lengths:
        raise ProtocolError("bad_length", f"{where} has {len(raw)} bytes, expected {' or '.join(map(str, lengths))}")
    return raw


def _fields(document: object, kind: str, names: set[str]) -> dict[str, Any]:
    """The fields of a ``secagg/<kind>`` object, checked to be exactly ``names`` plus the common ones."""
    if not isinstance(document, dict):
        raise ProtocolError("bad_schema", f"secagg/{kind} must be an object")
    expected = names | {"type", "session", "round"}
    if set(document) != expected:
        raise ProtocolError("bad_schema", f"secagg/{kind} fields must be {sorted(expected)}, got "
                                          f"{sorted(map(str, document))!r:.200}")
    if document["type"] != f"secagg/{kind}":
        raise ProtocolError("bad_schema", f"expected type secagg/{kind}, got {document['type']!r:.80}")
    check_session_id(document["session"])
    server_round = document["round"]
    if not isinstance(server_round, int) or isinstance(server_round, bool) or not 0 <= server_round < 1 << 31:
        raise ProtocolError("bad_schema", f"round must be a non-negative integer, got {server_round!r:.80}")
    return document


def _header(kind: str, session_id: str, server_round: int) -> dict[str, Any]:
    return {"type": f"secagg/{kind}", "session": session_id, "round": server_round}


def _node_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_NODES:
        raise ProtocolError("bad_schema", f"{where} must be a list of at most {MAX_NODES} node ids")
    nodes = tuple(check_node_id(node) for node in value)
    if len(set(nodes)) != len(nodes):
        raise ProtocolError("bad_schema", f"{where} has duplicate node ids")
    return nodes


def _bytes_map(value: object, where: str, lengths: tuple[int, ...]) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_NODES:
        raise ProtocolError("bad_schema", f"{where} must map at most {MAX_NODES} node ids to base64")
    return {check_node_id(node): b64decode(raw, f"{where}[{node}]", lengths=lengths) for node, raw in value.items()}


def _int_field(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError("bad_schema", f"{where} must be an integer in {low}..{high}, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class SecAggConfig:
    """The public parameters of one secure-aggregation round, fixed by the server before any key exists.

    ``node_ids`` are the invited nodes (sorted), ``threshold`` the number of shares that reconstruct a secret and
    the fewest nodes the round may continue with, ``neighbours`` the SecAgg+ degree k (None: all pairs) and
    ``graph_seed`` the public seed of the neighbour graph. Each node's secrets are shared among its *holders*:
    its neighbours and itself, so ``threshold`` may not exceed ``k + 1``. Security wants it well above half of
    that (Bonawitz et al. recommend t > 2n/3 against an active server); the check here is only feasibility."""

    session_id: str
    server_round: int
    node_ids: tuple[str, ...]
    threshold: int
    vector_length: int
    neighbours: int | None = None
    graph_seed: bytes = field(default=bytes(SEED_BYTES))

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        _int_field(self.server_round, "round", 0, (1 << 31) - 1)
        for node_id in self.node_ids:
            check_node_id(node_id)
        if list(self.node_ids) != sorted(set(self.node_ids)) or not 2 <= len(self.node_ids) <= MAX_NODES:
            raise ProtocolError("bad_config", f"node ids must be 2..{MAX_NODES} distinct ids in sorted order")
        _int_field(self.vector_length, "vector_length", 1, MAX_VECTOR_LENGTH)
        if len(self.graph_seed) != SEED_BYTES:
            raise ProtocolError("bad_config", f"graph seed must be {SEED_BYTES} bytes")
        if self.neighbours is not None:
            _int_field(self.neighbours, "neighbours", 2, MAX_NODES)
            if self.neighbours % 2:
                raise ProtocolError("bad_config", f"neighbours must be even, got {self.neighbours}")
        smallest_holders = min(len(neighbours) for neighbours in self.graph.values()) + 1
        if not 2 <= self.threshold <= smallest_holders:
            raise ProtocolError("bad_config", f"threshold must be in 2..{smallest_holders} (a node's neighbours and "
                                              f"itself), got {self.threshold}")

    @cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        return neighbour_graph(self.node_ids, degree=self.neighbours, seed=self.graph_seed)

    def holders(self, owner: str) -> tuple[str, ...]:
        """The nodes that get a share of ``owner``'s secrets (its neighbours and itself), in share-index order."""
        return tuple(sorted(self.graph[owner] | {owner}))

    def share_index(self, owner: str, holder: str) -> int:
        """The Shamir x-coordinate (1-based) of ``holder``'s share of ``owner``'s secrets."""
        return self.holders(owner).index(holder) + 1

    def to_wire(self) -> dict[str, Any]:
        return {**_header("config", self.session_id, self.server_round), "nodes": list(self.node_ids),
                "threshold": self.threshold, "vector_length": self.vector_length, "neighbours": self.neighbours,
                "seed": b64encode(self.graph_seed)}

    @classmethod
    def from_wire(cls, document: object) -> SecAggConfig:
        d = _fields(document, "config", {"nodes", "threshold", "vector_length", "neighbours", "seed"})
        neighbours = None if d["neighbours"] is None else _int_field(d["neighbours"], "neighbours", 2, MAX_NODES)
        return cls(session_id=d["session"], server_round=d["round"], node_ids=_node_list(d["nodes"], "nodes"),
                   threshold=_int_field(d["threshold"], "threshold", 2, MAX_NODES),
                   vector_length=_int_field(d["vector_length"], "vector_length", 1, MAX_VECTOR_LENGTH),
                   neighbours=neighbours, graph_seed=b64decode(d["seed"], "seed", lengths=(SEED_BYTES,)))


@dataclass(frozen=True)
class KeyAdvert:
    session_id: str
    server_round: int
    node_id: str
    encryption_public: bytes
    masking_public: bytes
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {**_header("advert", self.session_id, self.server_round), "node": self.node_id,
                "enc_pk": b64encode(self.encryption_public), "mask_pk": b64encode(self.masking_public),
                "signature": b64encode(self.signature)}

    @classmethod
    def from_wire(cls, document: object) -> KeyAdvert:
        d = _fields(document, "advert", {"node", "enc_pk", "mask_pk", "signature"})
        return cls(d["session"], d["round"], check_node_id(d["node"]),
                   b64decode(d["enc_pk"], "enc_pk", lengths=(KEY_BYTES,)),
                   b64decode(d["mask_pk"], "mask_pk", lengths=(KEY_BYTES,)),
                   b64decode(d["signature"], "signature", lengths=(HMAC_TAG_BYTES, ED25519_SIGNATURE_BYTES)))


@dataclass(frozen=True)
class AdvertBroadcast:
    session_id: str
    server_round: int
    recipient: str
    adverts: tuple[KeyAdvert, ...]

    def to_wire(self) -> dict[str, Any]:
        return {**_header("adverts", self.session_id, self.server_round), "recipient": self.recipient,
                "adverts": [advert.to_wire() for advert in self.adverts]}

    @classmethod
    def from_wire(cls, document: object) -> AdvertBroadcast:
        d = _fields(document, "adverts", {"recipient", "adverts"})
        if not isinstance(d["adverts"], list) or len(d["adverts"]) > MAX_NODES:
            raise ProtocolError("bad_schema", f"adverts must be a list of at most {MAX_NODES}")
        return cls(d["session"], d["round"], check_node_id(d["recipient"]),
                   tuple(KeyAdvert.from_wire(advert) for advert in d["adverts"]))


@dataclass(frozen=True)
class SharePackage:
    """A node's encrypted shares, one ciphertext per holder (recipient -> ciphertext)."""

    session_id: str
    server_round: int
    sender: str
    ciphertexts: Mapping[str, bytes]

    def to_wire(self) -> dict[str, Any]:
        return {**_header("shares", self.session_id, self.server_round), "sender": self.sender,
                "ciphertexts": {node: b64encode(raw) for node, raw in sorted(self.ciphertexts.items())}}

    @classmethod
    def from_wire(cls, document: object) -> SharePackage:
        d = _fields(document, "shares", {"sender", "ciphertexts"})
        return cls(d["session"], d["round"], check_node_id(d["sender"]),
                   _bytes_map(d["ciphertexts"], "ciphertexts", (SHARE_CIPHERTEXT_BYTES,)))


@dataclass(frozen=True)
class ShareDelivery:
    """The ciphertexts addressed to one node (sender -> ciphertext); their senders are its mask partners."""

    session_id: str
    server_round: int
    recipient: str
    ciphertexts: Mapping[str, bytes]

    def to_wire(self) -> dict[str, Any]:
        return {**_header("delivery", self.session_id, self.server_round), "recipient": self.recipient,
                "ciphertexts": {node: b64encode(raw) for node, raw in sorted(self.ciphertexts.items())}}

    @classmethod
    def from_wire(cls, document: object) -> ShareDelivery:
        d = _fields(document, "delivery", {"recipient", "ciphertexts"})
        return cls(d["session"], d["round"], check_node_id(d["recipient"]),
                   _bytes_map(d["ciphertexts"], "ciphertexts", (SHARE_CIPHERTEXT_BYTES,)))


@dataclass(frozen=True, eq=False)
class MaskedInput:
    session_id: str
    server_round: int
    node_id: str
    vector: np.ndarray  # uint32

    def to_wire(self) -> dict[str, Any]:
        return {**_header("masked", self.session_id, self.server_round), "node": self.node_id,
                "vector": b64encode(self.vector.astype("<u4").tobytes())}

    @classmethod
    def from_wire(cls, document: object) -> MaskedInput:
        d = _fields(document, "masked", {"node", "vector"})
        raw = b64decode(d["vector"], "vector")
        if not raw or len(raw) % 4 or len(raw) > 4 * MAX_VECTOR_LENGTH:
            raise ProtocolError("bad_length", f"masked vector has {len(raw)} bytes (not a whole uint32 vector)")
        return cls(d["session"], d["round"], check_node_id(d["node"]),
                   np.frombuffer(raw, dtype="<u4").astype(np.uint32))


@dataclass(frozen=True)
class UnmaskRequest:
    """Survivors (send their self-mask seed shares) and dropped nodes (send their masking-key shares)."""

    session_id: str
    server_round: int
    recipient: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {**_header("unmask", self.session_id, self.server_round), "recipient": self.recipient,
                "survivors": list(self.survivors), "dropped": list(self.dropped)}

    @classmethod
    def from_wire(cls, document: object) -> UnmaskRequest:
        d = _fields(document, "unmask", {"recipient", "survivors", "dropped"})
        return cls(d["session"], d["round"], check_node_id(d["recipient"]), _node_list(d["survivors"], "survivors"),
                   _node_list(d["dropped"], "dropped"))


@dataclass(frozen=True)
class UnmaskResponse:
    """Shares a node reveals: of survivors' self-mask seeds and of dropped nodes' masking keys (owner -> share)."""

    session_id: str
    server_round: int
    node_id: str
    seed_shares: Mapping[str, bytes]
    key_shares: Mapping[str, bytes]

    def to_wire(self) -> dict[str, Any]:
        return {**_header("unmasked", self.session_id, self.server_round), "node": self.node_id,
                "seed_shares": {node: b64encode(raw) for node, raw in sorted(self.seed_shares.items())},
                "key_shares": {node: b64encode(raw) for node, raw in sorted(self.key_shares.items())}}

    @classmethod
    def from_wire(cls, document: object) -> UnmaskResponse:
        d = _fields(document, "unmasked", {"node", "seed_shares", "key_shares"})
        return cls(d["session"], d["round"], check_node_id(d["node"]),
                   _bytes_map(d["seed_shares"], "seed_shares", (SHARE_BYTES,)),
                   _bytes_map(d["key_shares"], "key_shares", (SHARE_BYTES,)))
