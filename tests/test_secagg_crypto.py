"""Secure-aggregation primitives: Shamir over PyCryptodome, the ChaCha20 mask PRG, AES-GCM shares, advert
signatures and the SecAgg+ neighbour graph."""

import itertools
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from common.secagg.crypto import (
    Ed25519AdvertSigner,
    Ed25519AdvertVerifier,
    HmacAdvertSigner,
    HmacAdvertVerifier,
    KeyPair,
    agree,
    decrypt_share,
    encrypt_share,
    mask_seed,
    prg_uint32,
    share_key,
)
from common.secagg.graph import neighbour_graph
from common.secagg.shamir import combine_shares, split_secret
from common.wire.errors import ProtocolError

ROUTE = {"session_id": "s1", "server_round": 3, "sender": "a", "recipient": "b"}


@given(threshold=st.integers(2, 6), extra=st.integers(0, 4), seed=st.integers(0, 2**32))
def test_any_threshold_shares_reconstruct(threshold: int, extra: int, seed: int) -> None:
    secret = secrets.token_bytes(32)
    shares = split_secret(secret, threshold=threshold, num_shares=threshold + extra)
    assert sorted(shares) == list(range(1, threshold + extra + 1))
    subset = np.random.default_rng(seed).choice(sorted(shares), size=threshold, replace=False)
    assert combine_shares({int(i): shares[int(i)] for i in subset}, threshold=threshold) == secret


def test_every_subset_of_three_of_five_reconstructs_and_two_are_refused() -> None:
    secret = secrets.token_bytes(32)
    shares = split_secret(secret, threshold=3, num_shares=5)
    for subset in itertools.combinations(shares, 3):
        assert combine_shares({i: shares[i] for i in subset}, threshold=3) == secret
    with pytest.raises(ValueError, match="cannot reconstruct"):
        combine_shares({1: shares[1], 2: shares[2]}, threshold=3)
    # Two shares interpolated as if the threshold were 2 give some other value, not the secret.
    assert combine_shares({1: shares[1], 2: shares[2]}, threshold=2) != secret


@pytest.mark.parametrize(("threshold", "num_shares", "size"), [(1, 3, 32), (4, 3, 32), (2, 3, 16)])
def test_shamir_parameters_are_checked(threshold: int, num_shares: int, size: int) -> None:
    with pytest.raises(ValueError):
        split_secret(bytes(size), threshold=threshold, num_shares=num_shares)


def test_prg_is_the_chacha20_keystream() -> None:
    # RFC 8439 section 2.4.2's first keystream block for the zero key and nonce starts 76 b8 e0 ad a0 f1 3d 90.
    assert prg_uint32(bytes(32), 2).tolist() == [0xADE0B876, 0x903DF1A0]
    seed = secrets.token_bytes(32)
    np.testing.assert_array_equal(prg_uint32(seed, 1000), prg_uint32(seed, 1000))
    np.testing.assert_array_equal(prg_uint32(seed, 1000)[:10], prg_uint32(seed, 10))
    assert not np.array_equal(prg_uint32(seed, 64), prg_uint32(secrets.token_bytes(32), 64))


def test_both_ends_derive_the_same_seed_and_key_per_round() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    shared_ab, shared_ba = agree(a.private, b.public), agree(b.private, a.public)
    assert mask_seed(shared_ab, session_id="s", server_round=1) == mask_seed(shared_ba, session_id="s",
                                                                                server_round=1)
    assert mask_seed(shared_ab, session_id="s", server_round=1) != mask_seed(shared_ab, session_id="s",
                                                                                server_round=2)
    assert share_key(shared_ab, session_id="s", server_round=1) != mask_seed(shared_ab, session_id="s",
                                                                                server_round=1)
    assert KeyPair.from_private_bytes(a.private_bytes()).public == a.public


def test_low_order_public_key_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        agree(KeyPair.generate().private, bytes(32))
    assert caught.value.reason == "bad_public_key"


@pytest.mark.parametrize("change", ["flip", "sender", "recipient", "round"])
def test_changed_or_moved_share_ciphertext_is_rejected(change: str) -> None:
    key = secrets.token_bytes(32)
    ciphertext = encrypt_share(key, b"x" * 64, **ROUTE)  # type: ignore[arg-type]
    assert decrypt_share(key, ciphertext, **ROUTE) == b"x" * 64  # type: ignore[arg-type]
    route = dict(ROUTE)
    if change == "flip":
        ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    else:
        route[{"sender": "sender", "recipient": "recipient", "round": "server_round"}[change]] = (
            4 if change == "round" else "c")
    with pytest.raises(ProtocolError) as caught:
        decrypt_share(key, ciphertext, **route)  # type: ignore[arg-type]
    assert caught.value.reason == "bad_ciphertext"


def test_hmac_advert_from_another_node_key_is_refused() -> None:
    keys = {"a": b"A" * 32, "b": b"B" * 32}
    verifier = HmacAdvertVerifier(keys)
    verifier.verify("a", b"msg", HmacAdvertSigner(keys["a"]).sign(b"msg"))
    for node, tag in (("a", HmacAdvertSigner(keys["b"]).sign(b"msg")), ("c", b"0" * 32)):
        with pytest.raises(ProtocolError) as caught:
            verifier.verify(node, b"msg", tag)
        assert caught.value.reason in ("bad_signature", "unknown_node")


def test_ed25519_advert_verifies_only_for_its_owner() -> None:
    signing = {node: Ed25519PrivateKey.generate() for node in "ab"}
    verifier = Ed25519AdvertVerifier({node: key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                                      for node, key in signing.items()})
    verifier.verify("a", b"msg", Ed25519AdvertSigner(signing["a"]).sign(b"msg"))
    with pytest.raises(ProtocolError) as caught:
        verifier.verify("a", b"msg", Ed25519AdvertSigner(signing["b"]).sign(b"msg"))
    assert caught.value.reason == "bad_signature"


@given(count=st.integers(3, 30), half_degree=st.integers(1, 14), seed=st.binary(min_size=32, max_size=32))
def test_secagg_plus_graph_is_symmetric_regular_and_deterministic(count: int, half_degree: int, seed: bytes) -> None:
    nodes = [f"n{i}" for i in range(count)]
    graph = neighbour_graph(nodes, degree=2 * half_degree, seed=seed)
    degree = min(2 * half_degree, count - 1)
    assert all(len(neighbours) == degree and node not in neighbours for node, neighbours in graph.items())
    assert all(node in graph[other] for node, neighbours in graph.items() for other in neighbours)
    assert graph == neighbour_graph(list(reversed(nodes)), degree=2 * half_degree, seed=seed)


def test_graph_depends_on_the_seed_and_refuses_odd_degrees() -> None:
    nodes = [f"n{i}" for i in range(20)]
    assert neighbour_graph(nodes, degree=4, seed=bytes(32)) != neighbour_graph(nodes, degree=4, seed=b"\1" * 32)
    with pytest.raises(ValueError, match="even"):
        neighbour_graph(nodes, degree=3, seed=bytes(32))
