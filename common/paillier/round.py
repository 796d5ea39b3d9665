"""A node's encrypted update and the server's homomorphic sum, on ``phe`` (pure: no I/O).

``encrypt_update`` is the node's side: the update encoded exactly as for masking secure aggregation
(``common.secagg.round.encode_update``), packed (``PackingLayout``), each plaintext encrypted with the federation's
public key. ``add_encrypted`` is the server's (and the decryptor's) side: the product of ciphertexts mod n², i.e.
the sum of plaintexts, through ``phe.EncryptedNumber`` addition. ``decode_sum`` turns the decrypted sum back into
FedAvg weights with the same ``decode_mean`` masking uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from phe import paillier

from common.paillier.packing import PackingLayout, array_to_ciphertexts, ciphertext_bytes, ciphertexts_to_array
from common.secagg.quantize import WeightedSum
from common.secagg.round import SecureRoundSpec, decode_mean, encode_update
from common.wire.codec import ArraySpec


def layer_spec(layout: PackingLayout) -> ArraySpec:
    """The one layer an encrypted update record carries: one row of fixed-width big-endian bytes per ciphertext."""
    return ArraySpec(dtype="uint8", shape=(layout.num_plaintexts, ciphertext_bytes(layout.key_bits)))


def spec_layout(spec: SecureRoundSpec) -> PackingLayout:
    if spec.paillier is None:
        raise ValueError("not a paillier round")
    return spec.paillier.packing


def encrypt_update(spec: SecureRoundSpec, public_key: paillier.PaillierPublicKey, reference: Sequence[np.ndarray],
                   trained: Sequence[np.ndarray], num_examples: int) -> np.ndarray:
    """A node's trained weights -> the uint8 ciphertext layer it publishes (O(model/slots) encryptions)."""
    return encrypt_encoded(spec_layout(spec), public_key, encode_update(spec, reference, trained, num_examples))


def encrypt_encoded(layout: PackingLayout, public_key: paillier.PaillierPublicKey, encoded: np.ndarray) -> np.ndarray:
    """An encoded vector -> its ciphertext layer (``phe``'s ``raw_encrypt``: fresh randomness per ciphertext)."""
    if public_key.n.bit_length() != layout.key_bits:
        raise ValueError("the public key does not have the round's key size")
    ciphertexts = [public_key.raw_encrypt(plaintext) for plaintext in layout.pack(encoded)]
    return ciphertexts_to_array(ciphertexts, layout.key_bits)


def add_encrypted(public_key: paillier.PaillierPublicKey, total: list[int] | None,
                  layer: np.ndarray) -> list[int]:
    """``total`` (ciphertexts of a sum so far, None for none) plus one update's ciphertext layer."""
    ciphertexts = array_to_ciphertexts(layer, public_key.nsquare)
    if total is not None and len(total) != len(ciphertexts):
        raise ValueError(f"an update of {len(ciphertexts)} ciphertexts does not add to a sum of {len(total)}")
    if total is None:
        return ciphertexts
    return [int((paillier.EncryptedNumber(public_key, a) + paillier.EncryptedNumber(public_key, b)).ciphertext(
        be_secure=False)) for a, b in zip(total, ciphertexts, strict=True)]


def decode_sum(spec: SecureRoundSpec, plaintexts: Sequence[int], num_nodes: int,
               reference: Sequence[np.ndarray]) -> tuple[list[np.ndarray], WeightedSum]:
    """The decrypted sum of ``num_nodes`` updates -> FedAvg weights and the raw weighted sum."""
    return decode_mean(spec, spec_layout(spec).unpack_sum(plaintexts), num_nodes, reference)
