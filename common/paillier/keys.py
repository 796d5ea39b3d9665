"""The federation's Paillier key pair and the decryptor's signing key, as JSON files (no pickle).

``fl-keys create --paillier`` writes two files:

* ``paillier.pub.json`` (give it to the server and every node)::

    {"type": "fl-paillier-public/1", "n": "<hex>", "key_bits": int, "key_id": "<16 hex>",
     "decryptor_public_key": "<PEM, Ed25519>"}

* ``paillier.key.json`` (the decryptor's only, mode 0600)::

    {"type": "fl-paillier-private/1", "n": "<hex>", "p": "<hex>", "q": "<hex>", "decryptor_private_key": "<PEM>"}

``key_id`` is the first 16 hex digits of SHA-256 of n's big-endian bytes: a round's spec names it, and a node
refuses a round whose key is not the one in its own file (a server cannot slip in a key it holds). The Ed25519
key (``common.wire.server_key``) signs the decrypted sums the decryptor returns. The cryptosystem is ``phe``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phe import paillier

from common.atomic import OWNER_ONLY, write_text_atomic
from common.paillier.packing import MAX_KEY_BITS, MIN_KEY_BITS
from common.wire.server_key import ServerPublicKey, ServerSigner

PUBLIC_TYPE = "fl-paillier-public/1"
PRIVATE_TYPE = "fl-paillier-private/1"
MAX_KEY_FILE_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


def key_id_of(public_key: paillier.PaillierPublicKey) -> str:
    n = public_key.n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()[:16]


def _hex_int(document: dict[str, Any], name: str, where: str) -> int:
    value = document.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_BITS // 2:
        raise ValueError(f"{where}: {name} must be a hex string")
    try:
        return int(value, 16)
    except ValueError:
        raise ValueError(f"{where}: {name} is not hex") from None


def _read_json(path: Path, kind: str) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {kind} ({exc.strerror or exc})") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path}: too large for a {kind}")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: not JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a JSON object")
    return document


@dataclass(frozen=True)
class PaillierPublic:
    """What the server and the nodes hold: the Paillier public key and the decryptor's verification key."""

    public_key: paillier.PaillierPublicKey
    decryptor: ServerPublicKey

    @property
    def key_bits(self) -> int:
        return int(self.public_key.n.bit_length())

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    @property
    def modulus_squared(self) -> int:
        return int(self.public_key.nsquare)

    def to_wire(self) -> dict[str, Any]:
        return {"type": PUBLIC_TYPE, "n": format(self.public_key.n, "x"), "key_bits": self.key_bits,
                "key_id": self.key_id, "decryptor_public_key": self.decryptor.to_pem()}

    @classmethod
    def from_wire(cls, document: dict[str, Any], where: str = "Paillier public key") -> PaillierPublic:
        if document.get("type") != PUBLIC_TYPE:
            raise ValueError(f"{where}: not a {PUBLIC_TYPE} file (make one with fl-keys create --paillier)")
        n = _hex_int(document, "n", where)
        if not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS or n % 2 == 0:
            raise ValueError(f"{where}: n must be an odd {MIN_KEY_BITS}..{MAX_KEY_BITS}-bit modulus")
        pem = document.get("decryptor_public_key")
        if not isinstance(pem, str):
            raise ValueError(f"{where}: decryptor_public_key must be a PEM string")
        public = cls(paillier.PaillierPublicKey(n), ServerPublicKey.from_pem(pem.encode("ascii", "replace"),
                                                                            where=where))
        if document.get("key_id") != public.key_id:
            raise ValueError(f"{where}: key_id does not match n")
        return public

    @classmethod
    def load(cls, path: Path) -> PaillierPublic:
        return cls.from_wire(_read_json(path, "Paillier public key"), str(path))


@dataclass(frozen=True)
class PaillierPrivate:
    """The decryptor's key: the Paillier private key and its Ed25519 signing key."""

    private_key: paillier.PaillierPrivateKey
    signer: ServerSigner

    @property
    def public(self) -> PaillierPublic:
        return PaillierPublic(self.private_key.public_key, self.signer.public)

    @classmethod
    def generate(cls, key_bits: int = 3072) -> PaillierPrivate:
        if not MIN_KEY_BITS <= key_bits <= MAX_KEY_BITS:
            raise ValueError(f"key bits must be in {MIN_KEY_BITS}..{MAX_KEY_BITS}")
        _, private_key = paillier.generate_paillier_keypair(n_length=key_bits)
        return cls(private_key, ServerSigner.generate())

    def to_wire(self) -> dict[str, Any]:
        return {"type": PRIVATE_TYPE, "n": format(self.private_key.public_key.n, "x"),
                "p": format(self.private_key.p, "x"), "q": format(self.private_key.q, "x"),
                "decryptor_private_key": self.signer.private_pem()}

    @classmethod
    def load(cls, path: Path) -> PaillierPrivate:
        where = str(path)
        document = _read_json(path, "Paillier private key")
        if document.get("type") != PRIVATE_TYPE:
            raise ValueError(f"{where}: not a {PRIVATE_TYPE} file (make one with fl-keys create --paillier)")
        n, p, q = (_hex_int(document, name, where) for name in ("n", "p", "q"))
        if p * q != n or p == q or not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS:
            raise ValueError(f"{where}: p·q is not n (a damaged key file)")
        pem = document.get("decryptor_private_key")
        if not isinstance(pem, str):
            raise ValueError(f"{where}: decryptor_private_key must be a PEM string")
        try:
            if Path(path).stat().st_mode & 0o077:
                logger.warning("%s is readable by other users; chmod 600 it", path)
        except OSError:
            pass
        return cls(paillier.PaillierPrivateKey(paillier.PaillierPublicKey(n), p, q),
                   ServerSigner.from_pem(pem.encode("ascii", "replace"), where=where))

    def save(self, private_path: Path, public_path: Path) -> None:
        write_text_atomic(private_path, json.dumps(self.to_wire(), indent=2) + "\n", encoding="ascii",
                          permissions=OWNER_ONLY)
        write_text_atomic(public_path, json.dumps(self.public.to_wire(), indent=2) + "\n", encoding="ascii")
