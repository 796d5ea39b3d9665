"""The server's own Ed25519 key: it signs every global-model record and every round of the history.

Node keys (``common.wire.integrity``) are secrets the server shares with each node (HMAC), so they prove a
record to the server only. The server key is a key pair: ``fl-keys create --server`` writes the private key
(PEM, PKCS#8, readable by its owner only; ``fl-server --server-key``) and the public key (PEM,
SubjectPublicKeyInfo; ``fl-node --server-public-key``, ``fl-audit --server-key``), so anyone holding the public
key can check, without trusting the operator, that a model or a round record is the server's and unchanged.

* **A model record** carries ``fl.server_key`` (the key id: first 16 hex digits of SHA-256 of the raw public
  key) and ``fl.server_sig`` (hex Ed25519 signature over ``"fl-model/1"``, the record's Kafka key and its exact
  value bytes, each length-prefixed; the value names the session, round, layer and chunk).
* **A round record** is signed over ``"fl-round/1"`` and its 32-byte canonical digest (``fl_server.chain``).

Verification failures raise ``ProtocolError`` with a short reason: ``unsigned_model``, ``wrong_server_key``,
``bad_model_signature``. All the cryptography is the ``cryptography`` package's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.atomic import OWNER_ONLY, write_text_atomic
from common.wire.errors import ProtocolError
from common.wire.integrity import encode_fields
from common.wire.protocol import WeightChunk

KEY_ID_HEADER = "fl.server_key"
SIGNATURE_HEADER = "fl.server_sig"
_MODEL_CONTEXT = b"fl-model/1"
_ROUND_CONTEXT = b"fl-round/1"
MAX_KEY_FILE_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


class UntrustedModel(ProtocolError):
    """A global model a node must not train on: unsigned, signed by another key, tampered with, or not the
    model the ``start_round`` reference names."""


def _model_message(record_key: bytes | None, value: bytes) -> bytes:
    return encode_fields(_MODEL_CONTEXT, record_key or b"", value)


def _round_message(digest_hex: str) -> bytes:
    return encode_fields(_ROUND_CONTEXT, bytes.fromhex(digest_hex))


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class ServerPublicKey:
    """Checks the server's signatures (what nodes and auditors hold)."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._key = public_key
        self.key_id = key_id_of(public_key)

    @classmethod
    def from_pem(cls, pem: bytes, *, where: str = "server public key") -> ServerPublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{where}: not an Ed25519 key (make one with fl-keys create --server)")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> ServerPublicKey:
        """A public key file (``server.pub``); a private key file is accepted too (its public half is used)."""
        try:
            pem = Path(path).read_bytes()[:MAX_KEY_FILE_BYTES]
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the server key ({exc.strerror or exc})") from None
        if b"PRIVATE KEY" in pem:
            return ServerSigner.from_pem(pem, where=str(path)).public
        return cls.from_pem(pem, where=str(path))

    def to_pem(self) -> str:
        return self._key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def verify_model_record(self, record_key: bytes | None, headers: Mapping[str, bytes], value: bytes) -> None:
        """Raise ``ProtocolError`` unless the record is a model record this key signed, byte for byte."""
        signature_hex, key_id = headers.get(SIGNATURE_HEADER), headers.get(KEY_ID_HEADER)
        if signature_hex is None:
            raise ProtocolError("unsigned_model", "the model record carries no server signature")
        if key_id is not None and key_id != self.key_id.encode():
            raise ProtocolError("wrong_server_key", f"the model record is signed by key {key_id[:16]!r}, not this "
                                                    f"server's {self.key_id}")
        if not self.verify(_model_message(record_key, value), signature_hex):
            raise ProtocolError("bad_model_signature", "the model record's server signature does not verify "
                                                       "(tampered with, or signed by another key)")

    def verify_round(self, digest_hex: str, signature_hex: str) -> bool:
        """Whether ``signature_hex`` is this key's signature of a round record whose digest is ``digest_hex``."""
        try:
            message = _round_message(digest_hex)
        except ValueError:
            return False
        return self.verify(message, signature_hex.encode("ascii", "replace"))

    def verify(self, message: bytes, signature_hex: bytes) -> bool:
        try:
            self._key.verify(bytes.fromhex(signature_hex.decode("ascii")), message)
        except (InvalidSignature, ValueError, UnicodeDecodeError):
            return False
        return True


class ServerSigner:
    """The server's private key: signs model records and round records."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public = ServerPublicKey(private_key.public_key())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @classmethod
    def generate(cls) -> ServerSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes, *, where: str = "server key") -> ServerSigner:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{where}: not an Ed25519 key (make one with fl-keys create --server)")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> ServerSigner:
        try:
            pem = Path(path).read_bytes()[:MAX_KEY_FILE_BYTES]
            mode = Path(path).stat().st_mode
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the server key ({exc.strerror or exc})") from None
        if mode & 0o077:
            logger.warning("%s is readable by other users; chmod 600 it", path)
        return cls.from_pem(pem, where=str(path))

    def private_pem(self) -> str:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode("ascii")

    def save(self, private_path: Path, public_path: Path) -> None:
        """The private key readable by its owner only, the public key as a plain file (give it to everyone)."""
        write_text_atomic(private_path, self.private_pem(), encoding="ascii", permissions=OWNER_ONLY)
        write_text_atomic(public_path, self.public.to_pem(), encoding="ascii")

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()

    def model_headers(self, chunk: WeightChunk, value: bytes) -> list[tuple[str, bytes]]:
        """The headers of a signed model record (``kafka_io.publish_chunks``'s ``sign``)."""
        signature = self.sign(_model_message(chunk.node_id.encode(), value))
        return [*chunk.headers(), (KEY_ID_HEADER, self.key_id.encode()), (SIGNATURE_HEADER, signature.encode())]

    def sign_round(self, digest_hex: str) -> str:
        return self.sign(_round_message(digest_hex))
