"""Node keys, update signatures and connect proofs (pure: hashing only, no I/O but the key files).

Every node shares one secret key with the server (``fl-keys`` makes them). Two things use it:

* **Kafka update records** carry ``fl.node`` and ``fl.mac`` headers. The MAC is HMAC-SHA256 over a
  length-prefixed encoding of the record's routing fields (kind, session, round, node, Kafka key)
  and its exact value bytes, so changing any byte of the value or any of those headers breaks it.
  A record of an old round replayed later still verifies, which is why the collector also checks
  the round and remembers digests of what it already took (``replayed``).
* **Socket.IO connect** sends ``HMAC(key, "fl-connect/2", node_id, server_id, challenge, timestamp, nonce)``,
  never the key itself, over a challenge the node fetched from this server just before (``GET
  /fl/challenge``). The server accepts a challenge once and a proof within a clock-skew window.

Untrusted input is refused with ``ProtocolError(reason, message)``; reasons are short tags that
end up in the round history (``unsigned``, ``unknown_node``, ``bad_signature``, ``header_mismatch``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.atomic import OWNER_ONLY, write_text_atomic
from common.wire.protocol import ProtocolError, WeightChunk, check_node_id
from common.wire.safe_json import MiB, read_json_file

KEY_BYTES = 32
KEYS_FORMAT = "fl-keys/1"
NODE_HEADER = "fl.node"
MAC_HEADER = "fl.mac"
CONNECT_SKEW_S = 300.0
CHALLENGE_TTL_S = 60.0
CHALLENGE_BYTES = 16
MAX_REGISTRY_BYTES = 16 * MiB
_MAC_CONTEXT = b"fl-record/1"
_CONNECT_CONTEXT = b"fl-connect/2"

logger = logging.getLogger(__name__)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _encode_fields(*fields: bytes) -> bytes:
    """Length-prefixed concatenation: no field can bleed into the next."""
    return b"".join(len(f).to_bytes(8, "big") + f for f in fields)


encode_fields = _encode_fields  # the server key's signatures use the same framing


def record_mac(key: bytes, *, kind: str, session_id: str, server_round: int, node_id: str, record_key: bytes | None,
               value: bytes) -> bytes:
    message = _encode_fields(_MAC_CONTEXT, kind.encode(), session_id.encode(), str(server_round).encode(),
                             node_id.encode(), record_key or b"", value)
    return hmac.new(key, message, hashlib.sha256).digest()


def signed_headers(key: bytes, chunk: WeightChunk, value: bytes) -> list[tuple[str, bytes]]:
    """The headers of a signed update record: routing hints plus ``fl.node`` and ``fl.mac``."""
    mac = record_mac(key, kind=chunk.kind, session_id=chunk.session_id, server_round=chunk.server_round,
                     node_id=chunk.node_id, record_key=chunk.node_id.encode(), value=value)
    return [*chunk.headers(), (NODE_HEADER, chunk.node_id.encode()), (MAC_HEADER, mac.hex().encode())]


def value_digest(value: bytes) -> bytes:
    """Identity of a record's exact bytes (for replay detection)."""
    return hashlib.sha256(value).digest()


class KeyRegistry:
    """node id -> key. Loaded from a ``fl-keys/1`` JSON file the server operator controls."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        for node_id, key in keys.items():
            check_node_id(node_id)
            if len(key) < 16:
                raise ValueError(f"key of node {node_id} is shorter than 16 bytes")
        self._keys = dict(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._keys

    def node_ids(self) -> list[str]:
        return sorted(self._keys)

    def key_of(self, node_id: str) -> bytes | None:
        return self._keys.get(node_id)

    def to_wire(self) -> dict[str, Any]:
        return {"format": KEYS_FORMAT, "nodes": {n: k.hex() for n, k in sorted(self._keys.items())}}

    @classmethod
    def load(cls, path: Path) -> KeyRegistry:
        try:
            document = read_json_file(Path(path), max_bytes=MAX_REGISTRY_BYTES)
        except (OSError, ProtocolError) as exc:
            raise ValueError(f"{path}: cannot read the node key registry ({exc})") from exc
        if not isinstance(document, dict) or document.get("format") != KEYS_FORMAT:
            raise ValueError(f"{path}: not a node key registry (format must be {KEYS_FORMAT!r}; make one with fl-keys)")
        nodes = document.get("nodes")
        if not isinstance(nodes, dict):
            raise ValueError(f"{path}: 'nodes' must map node ids to hex keys")
        try:
            keys = {str(n): bytes.fromhex(k) for n, k in nodes.items()}
            return cls(keys)
        except (TypeError, ValueError, ProtocolError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def verify_record(self, record_key: bytes | None, headers: Mapping[str, bytes], value: bytes) -> str:
        """Check an update record's signature; returns the authenticated node id or raises ``ProtocolError``.

        The routing headers are the ones signed; ``check_headers_match`` later ties them to the value."""
        return self.verify_record_mac(record_key, headers, value)[0]

    def verify_record_mac(self, record_key: bytes | None, headers: Mapping[str, bytes],
                          value: bytes) -> tuple[str, bytes]:
        """``verify_record`` that also returns the verified MAC. Once the headers are known to equal the value's
        fields, the MAC identifies the record's exact bytes (it is a keyed SHA-256 over them), so it can stand in
        for a digest of the value without a second pass over it."""
        node_raw, mac_raw = headers.get(NODE_HEADER), headers.get(MAC_HEADER)
        if node_raw is None or mac_raw is None:
            raise ProtocolError("unsigned", "record has no fl.node/fl.mac headers")
        try:
            node_id = node_raw.decode("ascii")
            mac = bytes.fromhex(mac_raw.decode("ascii"))
            kind = headers["fl.kind"].decode("ascii")
            session_id = headers["fl.session"].decode("ascii")
            server_round = int(headers["fl.round"].decode("ascii"))
        except (KeyError, UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError("bad_signature", f"unreadable signature headers ({exc!r:.80})") from None
        key = self._keys.get(node_id)
        if key is None:
            raise ProtocolError("unknown_node", f"node {node_id!r:.80} is not in the key registry")
        want = record_mac(key, kind=kind, session_id=session_id, server_round=server_round, node_id=node_id,
                          record_key=record_key, value=value)
        if not hmac.compare_digest(mac, want):
            raise ProtocolError("bad_signature", f"signature of a record from {node_id} does not verify")
        return node_id, want


def check_headers_match(headers: Mapping[str, bytes], chunk: WeightChunk) -> None:
    """The signed headers must say what the value says (else a signature could be moved onto other fields)."""
    said = (headers.get("fl.kind"), headers.get("fl.session"), headers.get("fl.round"), headers.get(NODE_HEADER))
    value = (chunk.kind.encode(), chunk.session_id.encode(), str(chunk.server_round).encode(), chunk.node_id.encode())
    if said != value:
        raise ProtocolError("header_mismatch", f"headers of a record from {chunk.node_id} disagree with its value")


# --------------------------------------------------------------------- Socket.IO connect proof


def connect_proof(key: bytes, node_id: str, *, challenge: str, server_id: str, timestamp: float | None = None,
                  nonce: str | None = None) -> dict[str, Any]:
    """Fields a node adds to its hello: proves it holds ``key`` without sending it, for this server's
    ``challenge`` only (fetched from ``GET /fl/challenge`` just before connecting)."""
    ts = int(time.time() if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {"ts": ts, "nonce": nonce, "challenge": challenge, "server_id": server_id,
            "mac": _connect_mac(key, node_id, server_id, challenge, ts, nonce)}


def _connect_mac(key: bytes, node_id: str, server_id: str, challenge: str, ts: int, nonce: str) -> str:
    fields = _encode_fields(_CONNECT_CONTEXT, node_id.encode(), server_id.encode(), challenge.encode(),
                            str(ts).encode(), nonce.encode())
    return hmac.new(key, fields, hashlib.sha256).hexdigest()


def _is_hex(text: object, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and all(c in "0123456789abcdef" for c in text)


class ConnectVerifier:
    """Checks connect proofs against the registry: the right key, over a challenge this server issued (once,
    within ``challenge_ttl_s``) and its own ``server_id``, fresh (within ``skew_s``), not seen before.

    A challenge is single use: a hello captured on the wire, or harvested by a server that is not this one,
    is not valid again here (not even after a restart: challenges live in the process that issued them)."""

    def __init__(self, registry: KeyRegistry, *, skew_s: float = CONNECT_SKEW_S, max_nonces: int = 100_000,
                 server_id: str | None = None, challenge_ttl_s: float = CHALLENGE_TTL_S,
                 max_challenges: int = 100_000) -> None:
        self.registry = registry
        self.skew_s = skew_s
        self.server_id = server_id or secrets.token_hex(8)
        self.challenge_ttl_s = challenge_ttl_s
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max_nonces = max_nonces
        self._challenges: OrderedDict[str, float] = OrderedDict()  # challenge -> issued at (oldest first)
        self._max_challenges = max_challenges

    def issue_challenge(self, *, now: float | None = None) -> dict[str, Any]:
        """A fresh challenge for one connect (``GET /fl/challenge``); the oldest are forgotten past the cap."""
        now = time.time() if now is None else now
        horizon = now - self.challenge_ttl_s
        while self._challenges and (len(self._challenges) >= self._max_challenges
                                    or next(iter(self._challenges.values())) < horizon):
            self._challenges.popitem(last=False)
        challenge = secrets.token_hex(CHALLENGE_BYTES)
        self._challenges[challenge] = now
        return {"challenge": challenge, "server_id": self.server_id, "ttl_s": self.challenge_ttl_s}

    def verify(self, node_id: str, auth: Mapping[str, Any], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key = self.registry.key_of(node_id)
        if key is None:
            raise ProtocolError("unknown_node", f"node {node_id!r} is not in the key registry")
        ts, nonce, mac = auth.get("ts"), auth.get("nonce"), auth.get("mac")
        if not (isinstance(ts, int) and not isinstance(ts, bool) and isinstance(nonce, str) and isinstance(mac, str)):
            raise ProtocolError("unauthenticated", "connect needs ts, nonce and mac (this node has no key?)")
        challenge, server_id = auth.get("challenge"), auth.get("server_id")
        if challenge is None or server_id is None:
            raise ProtocolError("no_challenge", "connect needs a challenge from GET /fl/challenge")
        if not (abs(ts) < 1 << 40 and 8 <= len(nonce) <= 64 and nonce.isascii() and nonce.isprintable()
                and _is_hex(mac, 64) and _is_hex(challenge, 2 * CHALLENGE_BYTES) and isinstance(server_id, str)
                and len(server_id) <= 64):
            raise ProtocolError("bad_proof", "connect proof fields are out of range")
        if abs(now - ts) > self.skew_s:
            raise ProtocolError("stale_proof",
                                f"connect proof is {now - ts:.0f}s old (clock skew > {self.skew_s:.0f}s?)")
        if server_id != self.server_id:
            raise ProtocolError("wrong_server", "the connect proof was made for another server")
        issued = self._challenges.get(challenge)
        if issued is None or now - issued > self.challenge_ttl_s:
            raise ProtocolError("unknown_challenge", "the challenge was not issued by this server, was used, or "
                                                     "expired")
        want = _connect_mac(key, node_id, server_id, challenge, ts, nonce)
        if not hmac.compare_digest(mac, want):
            raise ProtocolError("bad_signature", f"connect proof of node {node_id} does not verify")
        if (node_id, nonce) in self._seen:
            raise ProtocolError("replayed", f"connect proof of node {node_id} was used before")
        del self._challenges[challenge]  # single use
        self._seen[(node_id, nonce)] = now
        horizon = now - 2 * self.skew_s  # older proofs fail the time check anyway
        while self._seen and (len(self._seen) > self._max_nonces or next(iter(self._seen.values())) < horizon):
            self._seen.popitem(last=False)


# --------------------------------------------------------------------- key files


def read_key_file(path: Path) -> bytes:
    """A node's key: a file holding the hex key (``fl-keys`` writes them with mode 0600)."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a hex node key ({exc})") from exc
    if len(key) < 16:
        raise ValueError(f"{path}: key is shorter than 16 bytes")
    if os.name == "posix" and Path(path).stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; chmod 600 it", path)
    return key


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, replaced atomically)."""
    write_text_atomic(path, text, encoding="ascii", permissions=OWNER_ONLY)
