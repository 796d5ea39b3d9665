"""The two HTTP messages between the server and the decryptor (``POST /decrypt``), JSON only.

=================  ============  ===========================================================================
type               direction     fields
=================  ============  ===========================================================================
paillier/decrypt   server→dec.   session, round, key_id, nodes [str] (the accepted updates, sorted),
                                 offsets {partition: [start, end]} (where the round's records are),
                                 ciphertexts [b64] (the server's homomorphic sum, fixed-width big-endian)
paillier/sum       dec.→server   session, round, key_id, nodes, plaintexts [hex], signature (hex Ed25519)
paillier/refused   dec.→server   reason, detail (HTTP 409 for a refusal, 400 for a malformed request)
=================  ============  ===========================================================================

``paillier/sum``'s signature is the decryptor's Ed25519 signature over ``"fl-paillier-sum/1"`` and the canonical
JSON (sorted keys, no spaces) of the message without its signature, length-prefixed (``encode_fields``).
``from_wire`` accepts exactly these fields and raises ``ProtocolError(reason, message)`` otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.secagg.messages import b64decode, b64encode
from common.wire.errors import ProtocolError
from common.wire.integrity import encode_fields
from common.wire.protocol import check_node_id, check_session_id
from common.wire.server_key import ServerPublicKey, ServerSigner

MAX_NODES = 10_000
MAX_CIPHERTEXTS = 1 << 20
MAX_PARTITIONS = 1024
MAX_OFFSET = 1 << 62
_SUM_CONTEXT = b"fl-paillier-sum/1"


def _fields(document: object, kind: str, names: set[str]) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ProtocolError("bad_schema", f"paillier/{kind} must be an object")
    expected = names | {"type", "session", "round", "key_id", "nodes"}
    if set(document) != expected:
        raise ProtocolError("bad_schema", f"paillier/{kind} fields must be {sorted(expected)}")
    if document["type"] != f"paillier/{kind}":
        raise ProtocolError("bad_schema", f"expected type paillier/{kind}")
    check_session_id(document["session"])
    server_round = document["round"]
    if not isinstance(server_round, int) or isinstance(server_round, bool) or not 0 <= server_round < 1 << 31:
        raise ProtocolError("bad_schema", "round must be a non-negative integer")
    key_id = document["key_id"]
    if not isinstance(key_id, str) or len(key_id) != 16:
        raise ProtocolError("bad_schema", "key_id must be 16 hex digits")
    nodes = document["nodes"]
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise ProtocolError("bad_schema", f"nodes must be a list of at most {MAX_NODES} node ids")
    if [check_node_id(n) for n in nodes] != sorted(set(nodes)):
        raise ProtocolError("bad_schema", "nodes must be distinct and sorted")
    return document


def _ciphertext_list(value: object, where: str) -> list[bytes]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CIPHERTEXTS:
        raise ProtocolError("bad_schema", f"{where} must be a list of 1..{MAX_CIPHERTEXTS} entries")
    return [b64decode(item, f"{where}[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True)
class DecryptRequest:
    session_id: str
    server_round: int
    key_id: str
    nodes: tuple[str, ...]
    offsets: dict[int, tuple[int, int]]  # partition -> [start, end) of the records the server read this round
    ciphertexts: tuple[int, ...]

    def to_wire(self, ciphertext_bytes: int) -> dict[str, Any]:
        return {"type": "paillier/decrypt", "session": self.session_id, "round": self.server_round,
                "key_id": self.key_id, "nodes": list(self.nodes),
                "offsets": {str(p): [a, b] for p, (a, b) in sorted(self.offsets.items())},
                "ciphertexts": [b64encode(c.to_bytes(ciphertext_bytes, "big")) for c in self.ciphertexts]}

    @classmethod
    def from_wire(cls, document: object) -> DecryptRequest:
        d = _fields(document, "decrypt", {"offsets", "ciphertexts"})
        offsets_in = d["offsets"]
        if not isinstance(offsets_in, dict) or len(offsets_in) > MAX_PARTITIONS:
            raise ProtocolError("bad_schema", f"offsets must map at most {MAX_PARTITIONS} partitions to ranges")
        offsets: dict[int, tuple[int, int]] = {}
        for partition, span in offsets_in.items():
            if not (isinstance(partition, str) and partition.isdigit() and len(partition) < 6):
                raise ProtocolError("bad_schema", "offsets keys must be partition numbers")
            if not (isinstance(span, list) and len(span) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_OFFSET for v in span)
                    and span[0] <= span[1]):
                raise ProtocolError("bad_schema", "an offsets range must be [start, end] with 0 <= start <= end")
            offsets[int(partition)] = (span[0], span[1])
        ciphertexts = tuple(int.from_bytes(raw, "big") for raw in _ciphertext_list(d["ciphertexts"], "ciphertexts"))
        return cls(d["session"], d["round"], d["key_id"], tuple(d["nodes"]), offsets, ciphertexts)


@dataclass(frozen=True)
class DecryptedSum:
    session_id: str
    server_round: int
    key_id: str
    nodes: tuple[str, ...]
    plaintexts: tuple[int, ...]
    signature: str = ""

    def body(self) -> dict[str, Any]:
        return {"type": "paillier/sum", "session": self.session_id, "round": self.server_round,
                "key_id": self.key_id, "nodes": list(self.nodes), "plaintexts": [format(p, "x") for p in
                                                                                   self.plaintexts]}

    def signed_message(self) -> bytes:
        return encode_fields(_SUM_CONTEXT, json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode())

    def signed_by(self, signer: ServerSigner) -> DecryptedSum:
        return DecryptedSum(self.session_id, self.server_round, self.key_id, self.nodes, self.plaintexts,
                            signer.sign(self.signed_message()))

    def verify(self, key: ServerPublicKey) -> bool:
        return key.verify(self.signed_message(), self.signature.encode("ascii", "replace"))

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_wire(cls, document: object) -> DecryptedSum:
        d = _fields(document, "sum", {"plaintexts", "signature"})
        plaintexts, signature = d["plaintexts"], d["signature"]
        if not isinstance(plaintexts, list) or not 1 <= len(plaintexts) <= MAX_CIPHERTEXTS or not all(
                isinstance(p, str) and 0 < len(p) <= 4096 for p in plaintexts):
            raise ProtocolError("bad_schema", "plaintexts must be a list of hex strings")
        if not isinstance(signature, str) or len(signature) > 256:
            raise ProtocolError("bad_schema", "signature must be a hex string")
        try:
            values = tuple(int(p, 16) for p in plaintexts)
        except ValueError:
            raise ProtocolError("bad_schema", "plaintexts must be hex") from None
        return cls(d["session"], d["round"], d["key_id"], tuple(d["nodes"]), values, signature)
