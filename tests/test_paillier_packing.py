"""Paillier packing and the encrypted sum: exact round trips, negatives, the headroom for n nodes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier

from common.paillier.packing import PackingLayout, PaillierSpec, array_to_ciphertexts, ciphertexts_to_array
from common.paillier.round import add_encrypted, decode_sum, encrypt_encoded
from common.secagg.messages import SecAggConfig
from common.secagg.round import SecureRoundSpec, encode_update
from common.wire.errors import ProtocolError

KEY_BITS = 1024  # tests only: small keys keep them fast
PUBLIC, PRIVATE = paillier.generate_paillier_keypair(n_length=KEY_BITS)


@st.composite
def vectors_and_layout(draw: st.DrawFn) -> tuple[PackingLayout, list[np.ndarray]]:
    value_bits = draw(st.integers(1, 24))
    max_value = draw(st.integers(1, (1 << value_bits) - 1))
    num_nodes = draw(st.integers(1, min(64, (1 << 32) // (max_value + 1))))
    length = draw(st.integers(1, 300))
    layout = PackingLayout.plan(length=length, max_value=max_value, num_nodes=num_nodes, key_bits=KEY_BITS,
                                packed=draw(st.booleans()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(["random", "max", "zero"]))  # all at max_value: every slot's sum at its limit
    vectors = [rng.integers(0, max_value, length, endpoint=True, dtype=np.uint64) if fill == "random" else
               np.full(length, max_value if fill == "max" else 0, np.uint64) for _ in range(num_nodes)]
    return layout, [v.astype(np.uint32) for v in vectors]


@given(vectors_and_layout())
def test_the_packed_sum_of_n_vectors_unpacks_to_their_exact_sum(case: tuple[PackingLayout, list[np.ndarray]]) -> None:
    layout, vectors = case
    packed = [layout.pack(v) for v in vectors]
    assert all(0 <= p < PUBLIC.n for plaintexts in packed for p in plaintexts)
    sums = [sum(column) for column in zip(*packed, strict=True)]
    want = np.sum(np.stack(vectors).astype(np.int64), axis=0)
    np.testing.assert_array_equal(layout.unpack_sum(sums).astype(np.int64), want)
    np.testing.assert_array_equal(layout.unpack_sum(packed[0]), vectors[0])  # one vector round-trips too


@pytest.mark.parametrize(("num_nodes", "headroom"), [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1000, 10)])
def test_the_headroom_is_the_bits_the_sum_of_n_nodes_needs(num_nodes: int, headroom: int) -> None:
    layout = PackingLayout.plan(length=1000, max_value=(1 << 16) - 1, num_nodes=num_nodes, key_bits=2048)
    assert (layout.value_bits, layout.headroom_bits, layout.slot_bits) == (16, headroom, 16 + headroom)
    assert layout.slots == 2046 // (16 + headroom) and layout.slots * layout.slot_bits < 2048 - 1


def test_a_layout_without_room_for_the_sum_is_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot hold the sum"):
        PackingLayout(length=4, max_value=255, num_nodes=3, slot_bits=8, slots=4, key_bits=KEY_BITS)
    with pytest.raises(ProtocolError, match="do not fit"):
        PackingLayout(length=400, max_value=255, num_nodes=3, slot_bits=10, slots=200, key_bits=KEY_BITS)


def test_ciphertext_rows_round_trip_and_out_of_range_ones_are_refused() -> None:
    ciphertexts = [PUBLIC.raw_encrypt(v) for v in (0, 1, 12345)]
    layer = ciphertexts_to_array(ciphertexts, KEY_BITS)
    assert layer.shape == (3, 256) and layer.dtype == np.uint8
    assert array_to_ciphertexts(layer, PUBLIC.nsquare) == ciphertexts
    with pytest.raises(ValueError, match="not in"):
        array_to_ciphertexts(np.full((1, 256), 255, np.uint8), PUBLIC.nsquare)


def spec_for(nodes: int, length: int, *, max_examples: int, packed: bool = True) -> SecureRoundSpec:
    config = SecAggConfig("s1", 1, tuple(f"n{i}" for i in range(nodes)), threshold=2, vector_length=length + 1)
    layout = PackingLayout.plan(length=length + 1, max_value=max((1 << 16) - 1, max_examples), num_nodes=nodes,
                                key_bits=KEY_BITS, packed=packed)
    return SecureRoundSpec(protocol="paillier", config=config, clip=0.5, bits=16, max_examples=max_examples,
                           paillier=PaillierSpec(key_id="0" * 16, packing=layout))


@settings(max_examples=25)  # Paillier encryptions are slow-ish: 25 cases of up to 5 nodes
@given(st.integers(2, 5), st.integers(1, 40), st.booleans(), st.integers(0, 2**32 - 1))
def test_the_decrypted_sum_is_the_plain_sum_of_the_quantized_updates(nodes: int, length: int, packed: bool,
                                                                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = spec_for(nodes, length, max_examples=50, packed=packed)
    layout = spec.paillier.packing if spec.paillier is not None else None
    assert layout is not None
    reference = [rng.normal(size=length).astype(np.float32)]
    total, plain, weighted, examples_total = None, np.zeros(length + 1, np.int64), np.zeros(length), 0
    for _ in range(nodes):
        delta = rng.uniform(-0.5, 0.5, length)  # negative entries included
        examples = int(rng.integers(1, 51))
        trained = [(reference[0] + delta).astype(np.float32)]
        encoded = encode_update(spec, reference, trained, examples, rng=rng)
        total = add_encrypted(PUBLIC, total, encrypt_encoded(layout, PUBLIC, encoded))
        plain += encoded.astype(np.int64)
        weighted += examples * (trained[0].astype(np.float64) - reference[0])
        examples_total += examples
    assert total is not None and len(total) == layout.num_plaintexts
    plaintexts = [PRIVATE.raw_decrypt(c) for c in total]
    np.testing.assert_array_equal(layout.unpack_sum(plaintexts).astype(np.int64), plain)  # exactly
    weights, summed = decode_sum(spec, plaintexts, nodes, reference)
    assert summed.num_examples == examples_total
    bound = spec.error_bound(nodes, examples_total)
    np.testing.assert_allclose(weights[0], reference[0] + weighted / examples_total, atol=bound + 1e-6, rtol=0)


def test_a_spec_whose_packing_does_not_fit_the_round_is_refused() -> None:
    spec = spec_for(3, 10, max_examples=50)
    assert spec.paillier is not None
    wire = spec.to_wire()
    assert SecureRoundSpec.from_wire(wire) == spec
    wire["paillier"]["packing"]["num_nodes"] = 2  # fewer nodes: less headroom than the sum of three needs
    with pytest.raises(ProtocolError, match="does not fit the round"):
        SecureRoundSpec.from_wire(wire)
    del wire["paillier"]
    with pytest.raises(ProtocolError, match="go with protocol paillier"):
        SecureRoundSpec.from_wire(wire)
