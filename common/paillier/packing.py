"""Packing of quantized update entries into Paillier plaintexts, with headroom for the round's sum (pure).

A node's update is first encoded by ``common.secagg.quantize`` (the same fixed point as masking secure
aggregation): every entry of ``delta·n`` becomes an integer in ``[0, 2^q - 1]`` (offset binary, so a negative
delta is a small integer, never a negative one) and the last entry holds ``n``. Offset binary is what makes
packing safe: a sum of non-negative slots never borrows across slot boundaries, as two's-complement negatives
would.

``PackingLayout`` puts ``slots`` such integers into one plaintext, each in a field of ``slot_bits`` bits, the
first entry in the lowest bits::

    plaintext = v_0 + v_1·2^s + v_2·2^(2s) + ...     (s = slot_bits)

``slot_bits`` is the bit length of the largest *sum* a slot can hold, ``num_nodes · max_value`` (the headroom
is ``slot_bits - value_bits`` ≈ ⌈log2 num_nodes⌉ bits), so the Paillier sum of ``num_nodes`` packed plaintexts
is the packed sum of the entries, slot by slot, exactly. ``slots · slot_bits < key_bits - 1`` keeps every
plaintext (and every sum) below the modulus n. With ``packed=False`` each plaintext holds one entry (what the
benchmark compares against).

The quantizer's capacity check (``N·(2^q - 1) < 2^32`` and ``N·max_examples < 2^32``) also bounds every slot's
sum below 2^32, so an unpacked sum is the uint32 vector ``common.secagg.round.decode_mean`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.wire.errors import ProtocolError

MIN_KEY_BITS = 1024  # anything smaller is broken today; the tests use 1024 for speed, use >= 2048 (or 3072)
MAX_KEY_BITS = 8192
MAX_SLOT_BITS = 32  # slot sums are below 2^32 (the quantizer's capacity check)


@dataclass(frozen=True)
class PackingLayout:
    """How ``length`` non-negative entries, each at most ``max_value``, are packed ``slots`` per plaintext."""

    length: int
    max_value: int
    num_nodes: int
    slot_bits: int
    slots: int
    key_bits: int

    def __post_init__(self) -> None:
        for name in ("length", "max_value", "num_nodes", "slot_bits", "slots", "key_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError("bad_config", f"packing {name} must be a positive integer, got {value!r:.40}")
        if not MIN_KEY_BITS <= self.key_bits <= MAX_KEY_BITS:
            raise ProtocolError("bad_config", f"key_bits must be in {MIN_KEY_BITS}..{MAX_KEY_BITS}")
        if (self.num_nodes * self.max_value).bit_length() > self.slot_bits or self.slot_bits > MAX_SLOT_BITS:
            raise ProtocolError("bad_config", f"slot_bits {self.slot_bits} cannot hold the sum of {self.num_nodes} "
                                              f"values up to {self.max_value} (or exceeds {MAX_SLOT_BITS})")
        if self.slots * self.slot_bits > self.key_bits - 2:
            raise ProtocolError("bad_config", f"{self.slots} slots of {self.slot_bits} bits do not fit below a "
                                              f"{self.key_bits}-bit modulus")

    @classmethod
    def plan(cls, *, length: int, max_value: int, num_nodes: int, key_bits: int, packed: bool = True
             ) -> PackingLayout:
        """The densest safe layout (or one entry per plaintext when not ``packed``)."""
        slot_bits = (num_nodes * max_value).bit_length()
        slots = max(1, (key_bits - 2) // slot_bits) if packed else 1
        return cls(length=length, max_value=max_value, num_nodes=num_nodes, slot_bits=slot_bits,
                   slots=min(slots, length), key_bits=key_bits)

    @property
    def value_bits(self) -> int:
        return self.max_value.bit_length()

    @property
    def headroom_bits(self) -> int:
        """Bits each slot keeps above one value, for the sum over the round's nodes."""
        return self.slot_bits - self.value_bits

    @property
    def num_plaintexts(self) -> int:
        return -(-self.length // self.slots)

    def pack(self, values: np.ndarray) -> list[int]:
        """A node's encoded vector -> its plaintexts (each entry must be in ``[0, max_value]``)."""
        flat = np.asarray(values)
        if flat.ndim != 1 or flat.size != self.length or not np.issubdtype(flat.dtype, np.integer):
            raise ValueError(f"expected a flat integer vector of {self.length} entries")
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) > self.max_value):
            raise ValueError(f"entries must be in 0..{self.max_value}")
        entries = [int(v) for v in flat.tolist()]
        plaintexts = []
        for start in range(0, self.length, self.slots):
            packed = 0
            for value in reversed(entries[start:start + self.slots]):
                packed = (packed << self.slot_bits) | value
            plaintexts.append(packed)
        return plaintexts

    def unpack_sum(self, plaintexts: Sequence[int]) -> np.ndarray:
        """The decrypted sum's plaintexts -> the uint32 vector of slot sums (``ValueError`` if malformed)."""
        if len(plaintexts) != self.num_plaintexts:
            raise ValueError(f"expected {self.num_plaintexts} plaintexts, got {len(plaintexts)}")
        mask = (1 << self.slot_bits) - 1
        out = np.empty(self.length, dtype=np.uint32)
        for index, packed in enumerate(plaintexts):
            count = min(self.slots, self.length - index * self.slots)
            if not 0 <= packed < 1 << (count * self.slot_bits):
                raise ValueError(f"plaintext {index} is not a sum of packed values (out of range)")
            for slot in range(count):
                out[index * self.slots + slot] = (packed >> (slot * self.slot_bits)) & mask
        return out

    def to_wire(self) -> dict[str, Any]:
        return {"length": self.length, "max_value": self.max_value, "num_nodes": self.num_nodes,
                "slot_bits": self.slot_bits, "slots": self.slots, "key_bits": self.key_bits}

    @classmethod
    def from_wire(cls, document: object) -> PackingLayout:
        names = {"length", "max_value", "num_nodes", "slot_bits", "slots", "key_bits"}
        if not isinstance(document, dict) or set(document) != names:
            raise ProtocolError("bad_schema", f"packing must be an object with exactly {sorted(names)}")
        return cls(**{name: document[name] for name in names})


def ciphertext_bytes(key_bits: int) -> int:
    """Bytes of one ciphertext on the wire (a number below n², fixed width, big-endian)."""
    return 2 * -(-key_bits // 8)


def ciphertexts_to_array(ciphertexts: Sequence[int], key_bits: int) -> np.ndarray:
    """Ciphertexts -> the uint8 layer (rows of fixed-width big-endian numbers) an update record carries."""
    width = ciphertext_bytes(key_bits)
    raw = b"".join(c.to_bytes(width, "big") for c in ciphertexts)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(ciphertexts), width).copy()


def array_to_ciphertexts(layer: np.ndarray, modulus_squared: int) -> list[int]:
    """The uint8 layer of an update record -> its ciphertexts (``ValueError`` if one is not below n²)."""
    rows = np.asarray(layer)
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError("a ciphertext layer is a 2-d uint8 array")
    values = [int.from_bytes(row.tobytes(), "big") for row in rows]
    if any(not 0 < v < modulus_squared for v in values):
        raise ValueError("a ciphertext is not in 1..n²-1")
    return values


@dataclass(frozen=True)
class PaillierSpec:
    """What a Paillier round adds to ``SecureRoundSpec``: the federation key's id and the packing layout."""

    key_id: str
    packing: PackingLayout

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or len(self.key_id) != 16 or any(
                c not in "0123456789abcdef" for c in self.key_id):
            raise ProtocolError("bad_config", "paillier.key_id must be 16 lower-case hex digits")

    def to_wire(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "packing": self.packing.to_wire()}

    @classmethod
    def from_wire(cls, document: object) -> PaillierSpec:
        if not isinstance(document, dict) or set(document) != {"key_id", "packing"}:
            raise ProtocolError("bad_schema", "paillier must be an object with exactly key_id and packing")
        return cls(key_id=document["key_id"], packing=PackingLayout.from_wire(document["packing"]))
