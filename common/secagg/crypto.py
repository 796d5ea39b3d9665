"""The cryptographic primitives of secure aggregation, all from ``cryptography`` (pure: no I/O, no globals).

* **Key agreement**: X25519. Each node makes two key pairs per round: ``c`` (to encrypt shares to its
  neighbours) and ``s`` (to agree on pairwise mask seeds).
* **Key derivation**: HKDF-SHA256 over the X25519 agreement, with a distinct ``info`` per purpose (mask seed or
  share-encryption key) that also binds the session and round, so keys of one round never serve another.
* **Share encryption**: AES-256-GCM, random 96-bit nonce prepended; the associated data is the length-prefixed
  (session, round, sender, recipient), so a ciphertext moved to another pair or round fails to decrypt.
* **Mask PRG**: the ChaCha20 keystream (key = the 32-byte seed, zero nonce, zero plaintext) read as little-endian
  uint32. Each seed is used for one mask only (seeds are derived per round and per pair), so the fixed nonce
  never repeats under one key.
* **Advert authentication** (who owns a pair of public keys):

  - ``HmacAdvertSigner`` / ``HmacAdvertVerifier``: HMAC-SHA256 with the node key the project already has
    (``common.wire.integrity``). Only the server can verify it, and the server holds every node key, so it
    could forge adverts itself: this authenticates nodes *to* the server and stops outsiders, but it does not
    protect nodes from a malicious server substituting keys (a man in the middle on the masks).
  - ``Ed25519AdvertSigner`` / ``Ed25519AdvertVerifier``: a node signs with its own Ed25519 key; anyone holding
    the public keys (the server and, given them out of band, every peer) can verify, and the server cannot
    forge. This is the PKI the active-adversary model of Bonawitz et al. assumes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.wire.errors import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
HMAC_TAG_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
_MASK_INFO = b"fl-secagg/mask-seed/1"
_SHARE_INFO = b"fl-secagg/share-key/1"
_SHARE_AAD = b"fl-secagg/share/1"
_ADVERT_CONTEXT = b"fl-secagg/advert/1"
_CHACHA_ZERO_NONCE = bytes(16)

logger = logging.getLogger(__name__)


def encode_fields(*fields: bytes) -> bytes:
    """Length-prefixed concatenation: no field can bleed into the next."""
    return b"".join(len(field).to_bytes(8, "big") + field for field in fields)


# --------------------------------------------------------------------- X25519 key pairs


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw public key that travels."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate())

    @classmethod
    def from_private(cls, private: X25519PrivateKey) -> KeyPair:
        return cls(private, private.public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from the 32 raw private bytes (as reconstructed from Shamir shares)."""
        return cls.from_private(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; ``ProtocolError('bad_public_key')`` for a malformed or low-order key."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise ProtocolError("bad_public_key", f"cannot agree on a key ({exc})") from None


def _hkdf(shared: bytes, info: bytes, session_id: str, server_round: int) -> bytes:
    context = encode_fields(info, session_id.encode(), str(server_round).encode())
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context).derive(shared)


def mask_seed(shared: bytes, *, session_id: str, server_round: int) -> bytes:
    """The pairwise mask seed of two nodes (from their ``s`` keys' agreement)."""
    return _hkdf(shared, _MASK_INFO, session_id, server_round)


def share_key(shared: bytes, *, session_id: str, server_round: int) -> bytes:
    """The AES-256-GCM key two nodes encrypt shares with (from their ``c`` keys' agreement)."""
    return _hkdf(shared, _SHARE_INFO, session_id, server_round)


# --------------------------------------------------------------------- share encryption


def _share_aad(session_id: str, server_round: int, sender: str, recipient: str) -> bytes:
    return encode_fields(_SHARE_AAD, session_id.encode(), str(server_round).encode(), sender.encode(),
                         recipient.encode())


def encrypt_share(key: bytes, plaintext: bytes, *, session_id: str, server_round: int, sender: str,
                  recipient: str) -> bytes:
    """``nonce || AES-GCM(plaintext)`` bound to (session, round, sender, recipient)."""
    nonce = os.urandom(NONCE_BYTES)
    aad = _share_aad(session_id, server_round, sender, recipient)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_share(key: bytes, ciphertext: bytes, *, session_id: str, server_round: int, sender: str,
                  recipient: str) -> bytes:
    """The plaintext, or ``ProtocolError('bad_ciphertext')`` if anything was changed or moved."""
    if len(ciphertext) < NONCE_BYTES + 16:
        raise ProtocolError("bad_ciphertext", f"share from {sender} is too short")
    aad = _share_aad(session_id, server_round, sender, recipient)
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ProtocolError("bad_ciphertext", f"share from {sender} to {recipient} does not decrypt") from None


# --------------------------------------------------------------------- mask PRG


def prg_uint32(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudorandom uint32 from a 32-byte seed: the ChaCha20 keystream, little-endian."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"seed must be {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_ZERO_NONCE), mode=None).encryptor()
    keystream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(keystream, dtype="<u4").astype(np.uint32)


# --------------------------------------------------------------------- advert authentication


def advert_message(*, session_id: str, server_round: int, node_id: str, encryption_public: bytes,
                   masking_public: bytes) -> bytes:
    """What an advert's signature covers: the session, round, node and both public keys."""
    return encode_fields(_ADVERT_CONTEXT, session_id.encode(), str(server_round).encode(), node_id.encode(),
                         encryption_public, masking_public)


class AdvertSigner(Protocol):
    def sign(self, message: bytes) -> bytes: ...


class AdvertVerifier(Protocol):
    def verify(self, node_id: str, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is ``node_id``'s over ``message``; else raise ``ProtocolError``."""


@dataclass(frozen=True)
class HmacAdvertSigner:
    """HMAC-SHA256 with the node's shared key (the server can verify, and could forge: see the module doc)."""

    node_key: bytes

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.node_key, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class HmacAdvertVerifier:
    """The server side of ``HmacAdvertSigner``: node id -> node key (e.g. a ``KeyRegistry``'s keys)."""

    node_keys: Mapping[str, bytes]

    def verify(self, node_id: str, message: bytes, signature: bytes) -> None:
        key = self.node_keys.get(node_id)
        if key is None:
            raise ProtocolError("unknown_node", f"node {node_id!r:.80} has no key")
        if not hmac.compare_digest(signature, HmacAdvertSigner(key).sign(message)):
            raise ProtocolError("bad_signature", f"key advert of node {node_id} does not verify")


@dataclass(frozen=True)
class Ed25519AdvertSigner:
    signing_key: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)


@dataclass(frozen=True)
class Ed25519AdvertVerifier:
    """Node id -> raw 32-byte Ed25519 public key; usable by the server and by peers."""

    public_keys: Mapping[str, bytes]

    def verify(self, node_id: str, message: bytes, signature: bytes) -> None:
        raw = self.public_keys.get(node_id)
        if raw is None:
            raise ProtocolError("unknown_node", f"node {node_id!r:.80} has no signing key")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise ProtocolError("bad_signature", f"key advert of node {node_id} does not verify") from None
