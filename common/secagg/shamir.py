"""t-of-n Shamir secret sharing of 32-byte secrets, on top of PyCryptodome's vetted ``Shamir`` (GF(2^128)).

PyCryptodome shares 16-byte secrets over GF(2^128) (the AES-GCM field), with random coefficients from the OS.
A 32-byte secret (an X25519 private key, a mask seed) is split into two 16-byte halves, each shared with its own
random polynomial at the same share indices; a share is the two 16-byte values concatenated (32 bytes).
Fewer than ``threshold`` shares reveal nothing about either half.

Share indices are 1-based integers (the recipient's position in the holder list). Shares carry no integrity:
wrong shares reconstruct a wrong secret, not an error. The protocol checks what it can (a reconstructed
private key must match its advertised public key) and transports shares inside AES-GCM.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from Crypto.Protocol.SecretSharing import Shamir

SECRET_BYTES = 32
SHARE_BYTES = 32
_HALF = 16
MAX_SHARES = 1 << 16

logger = logging.getLogger(__name__)


def _check_parameters(threshold: int, num_shares: int) -> None:
    if not 2 <= threshold <= num_shares <= MAX_SHARES:
        raise ValueError(f"need 2 <= threshold <= num_shares <= {MAX_SHARES}, got threshold={threshold}, "
                         f"num_shares={num_shares}")


def split_secret(secret: bytes, *, threshold: int, num_shares: int) -> dict[int, bytes]:
    """Shares of ``secret`` for indices ``1..num_shares``; any ``threshold`` of them reconstruct it."""
    _check_parameters(threshold, num_shares)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    low = Shamir.split(threshold, num_shares, secret[:_HALF])
    high = Shamir.split(threshold, num_shares, secret[_HALF:])
    return {index: low_share + high_share for (index, low_share), (_, high_share) in zip(low, high, strict=True)}


def combine_shares(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (index -> share); uses the ``threshold`` lowest indices."""
    if threshold < 2:
        raise ValueError(f"threshold must be at least 2, got {threshold}")
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    chosen = sorted(shares.items())[:threshold]
    for index, share in chosen:
        if not 1 <= index <= MAX_SHARES or len(share) != SHARE_BYTES:
            raise ValueError(f"share {index} is malformed (index in 1..{MAX_SHARES}, {SHARE_BYTES} bytes)")
    low = Shamir.combine([(index, share[:_HALF]) for index, share in chosen])
    high = Shamir.combine([(index, share[_HALF:]) for index, share in chosen])
    return low + high
