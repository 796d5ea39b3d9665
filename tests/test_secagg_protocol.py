"""Secure aggregation end to end in one process: every message goes through its JSON wire form, nodes drop out at
any stage, and the server's sum must equal the plain sum of the survivors' quantized inputs exactly (mod 2^32)."""

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from common.secagg.crypto import Ed25519AdvertSigner, Ed25519AdvertVerifier, HmacAdvertSigner, HmacAdvertVerifier
from common.secagg.messages import (
    AdvertBroadcast,
    KeyAdvert,
    MaskedInput,
    SecAggConfig,
    ShareDelivery,
    SharePackage,
    UnmaskRequest,
    UnmaskResponse,
)
from common.secagg.protocol import SecAggClient, SecAggFailure, SecAggResult, SecAggServer
from common.wire.errors import ProtocolError

LENGTH = 6


def wire(message: Any) -> Any:
    """A message as the other side gets it: JSON text, parsed and decoded strictly."""
    return type(message).from_wire(json.loads(json.dumps(message.to_wire())))


def node_keys(config: SecAggConfig) -> dict[str, bytes]:
    return {node: node.encode().ljust(32, b"k") for node in config.node_ids}


@dataclass
class Round:
    """One round's server and clients; ``drop_at[node]`` = the stage (1-4) before which it falls silent."""

    config: SecAggConfig
    drop_at: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = node_keys(self.config)
        self.server = SecAggServer(self.config, verifier=HmacAdvertVerifier(keys))
        self.clients = {node: SecAggClient(self.config, node, signer=HmacAdvertSigner(keys[node]))
                        for node in self.config.node_ids}
        rng = np.random.default_rng(len(self.config.node_ids))
        self.inputs = {node: rng.integers(0, 2**32, LENGTH, dtype=np.uint32) for node in self.config.node_ids}
        self.refused: dict[str, str] = {}  # node -> why it stopped (a sparse neighbourhood too small to go on)

    def _active(self, stage: int, nodes: Any) -> list[str]:
        return [node for node in sorted(nodes) if self.drop_at.get(node, 99) > stage and node not in self.refused]

    def _ask(self, node: str, call: Any, *args: Any) -> Any:
        """A node's answer, or None if it refuses to go on (as the wiring would drop it)."""
        try:
            return wire(call(*args))
        except ProtocolError as refusal:
            assert refusal.reason == "too_few_nodes", refusal
            self.refused[node] = refusal.reason
            return None

    def run(self) -> SecAggResult:
        for node in self._active(1, self.clients):
            self.server.receive_advert(wire(self.clients[node].advertise()))
        broadcasts = self.server.close_adverts()
        for node in self._active(2, broadcasts):
            if (package := self._ask(node, self.clients[node].share_keys, wire(broadcasts[node]))) is not None:
                self.server.receive_shares(package)
        deliveries = self.server.close_shares()
        for node in self._active(3, deliveries):
            masked = self._ask(node, self.clients[node].mask_input, wire(deliveries[node]), self.inputs[node])
            if masked is not None:
                self.server.receive_masked(masked)
        requests = self.server.close_masked()
        for node in self._active(4, requests):
            self.server.receive_unmask(wire(self.clients[node].unmask(wire(requests[node]))))
        return self.server.finish()

    def plain_sum(self, nodes: tuple[str, ...]) -> np.ndarray:
        total = np.zeros(LENGTH, dtype=np.uint32)
        for node in nodes:
            total = total + self.inputs[node]
        return total


def make_config(count: int, threshold: int, neighbours: int | None = None, server_round: int = 1) -> SecAggConfig:
    return SecAggConfig("sess", server_round, tuple(f"node-{i:02d}" for i in range(count)), threshold, LENGTH,
                        neighbours=neighbours, graph_seed=bytes(range(32)))


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggConfig, dict[str, int]]:
    count = draw(st.integers(3, 20))
    sparse = st.integers(1, max(1, (count - 2) // 2)).map(lambda half: 2 * half)
    neighbours = draw(st.none() if count < 4 else st.one_of(st.none(), sparse))
    config_holders = count if neighbours is None else neighbours + 1
    threshold = draw(st.integers(2, max(2, config_holders * 3 // 4)))
    config = make_config(count, threshold, neighbours)
    drops = draw(st.lists(st.sampled_from([99] * 10 + [1, 2, 3, 4]), min_size=count, max_size=count))
    return config, {node: stage for node, stage in zip(config.node_ids, drops, strict=True) if stage != 99}


@settings(max_examples=50)
@given(rounds())
@example((make_config(20, 14, None), {"node-00": 1, "node-05": 2, "node-10": 3, "node-15": 4}))  # a drop per stage
@example((make_config(20, 5, 6), {"node-01": 2, "node-02": 3, "node-03": 4, "node-04": 4}))
def test_sum_is_exact_or_fails_cleanly(case: tuple[SecAggConfig, dict[str, int]]) -> None:
    config, drop_at = case
    game = Round(config, drop_at)
    answering = [node for node in config.node_ids if node not in drop_at]
    try:
        result = game.run()
    except SecAggFailure as failure:
        event(f"failed: {failure.reason}")
        assert failure.reason in ("too_few_nodes", "too_few_shares")
        if config.neighbours is None:  # all pairs: every node holds a share of every secret
            assert len(answering) < config.threshold and not game.refused
        assert game.server.failure is failure
    else:
        assert result.survivors == tuple(node for node in config.node_ids
                                         if drop_at.get(node, 99) > 3 and node not in game.refused)
        np.testing.assert_array_equal(result.total, game.plain_sum(result.survivors))
        assert len(answering) >= config.threshold
        event(f"summed {len(result.survivors)} of {len(config.node_ids)}, k={config.neighbours}")
    assert all(len(kinds) == 1 for kinds in game.server.revealed.values()), game.server.revealed


@pytest.mark.parametrize("neighbours", [None, 4])
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_exactly_threshold_left_succeeds_and_one_fewer_fails(stage: int, neighbours: int | None) -> None:
    config = make_config(7, 5 if neighbours is None else 3, neighbours)
    two_drop = Round(config, {"node-01": stage, "node-04": stage})
    if neighbours is None:
        assert two_drop.run().total.tolist() == two_drop.plain_sum(two_drop.server._survivors).tolist()
        three_drop = Round(config, {"node-01": stage, "node-04": stage, "node-05": stage})
        with pytest.raises(SecAggFailure) as caught:
            three_drop.run()
        assert caught.value.reason == "too_few_nodes"
    else:
        result = two_drop.run()
        np.testing.assert_array_equal(result.total, two_drop.plain_sum(result.survivors))
        with pytest.raises(SecAggFailure) as caught:
            Round(config, dict.fromkeys(config.node_ids[2:], stage)).run()  # 2 left, threshold 3
        assert caught.value.reason == "too_few_nodes"


def test_masked_vectors_look_uniform() -> None:
    config = replace(make_config(3, 2), vector_length=4096)
    game = Round(config)
    game.inputs = {node: np.zeros(4096, dtype=np.uint32) for node in config.node_ids}  # all-zero updates
    for node in config.node_ids:
        game.server.receive_advert(game.clients[node].advertise())
    broadcasts = game.server.close_adverts()
    for node in config.node_ids:
        game.server.receive_shares(game.clients[node].share_keys(broadcasts[node]))
    deliveries = game.server.close_shares()
    for node in config.node_ids:
        masked = game.clients[node].mask_input(deliveries[node], game.inputs[node]).vector
        counts = np.bincount(np.frombuffer(masked.tobytes(), dtype=np.uint8), minlength=256)
        expected = masked.nbytes / 256
        # Chi-square with 255 degrees of freedom: mean 255, sd 22.6; 450 is 8.6 sd out (p < 1e-15).
        assert ((counts - expected) ** 2 / expected).sum() < 450
        top_bits = np.bincount(masked >> 28, minlength=16)
        assert ((top_bits - 256) ** 2 / 256).sum() < 80  # 15 degrees of freedom, p < 1e-10


def advance_to_unmask(config: SecAggConfig, drop_at: dict[str, int]) -> tuple[Round, dict[str, UnmaskRequest]]:
    game = Round(config, drop_at)
    for node in game._active(1, game.clients):
        game.server.receive_advert(game.clients[node].advertise())
    broadcasts = game.server.close_adverts()
    for node in game._active(2, broadcasts):
        game.server.receive_shares(game.clients[node].share_keys(broadcasts[node]))
    deliveries = game.server.close_shares()
    for node in game._active(3, deliveries):
        game.server.receive_masked(game.clients[node].mask_input(deliveries[node], game.inputs[node]))
    return game, game.server.close_masked()


def test_a_node_refuses_to_reveal_both_share_kinds_of_one_node() -> None:
    game, requests = advance_to_unmask(make_config(5, 3), {"node-04": 3})
    request = requests["node-00"]
    assert request.dropped == ("node-04",)
    greedy = replace(request, dropped=(*request.dropped, "node-01"))  # a survivor named dropped as well
    with pytest.raises(ProtocolError) as caught:
        game.clients["node-00"].unmask(greedy)
    assert caught.value.reason == "both_share_kinds"
    # Nor does a node answer twice (a second request could move a node from one list to the other).
    client = game.clients["node-02"]
    client.unmask(requests["node-02"])
    with pytest.raises(ProtocolError) as caught:
        client.unmask(replace(requests["node-02"], survivors=tuple(sorted(set(request.survivors) - {"node-01"})),
                              dropped=("node-01", "node-04")))
    assert caught.value.reason == "out_of_order"


def test_server_refuses_a_response_with_both_kinds_or_unasked_shares() -> None:
    game, requests = advance_to_unmask(make_config(5, 3), {"node-04": 3})
    honest = game.clients["node-00"].unmask(requests["node-00"])
    both = replace(honest, key_shares={**honest.key_shares, "node-01": honest.seed_shares["node-01"]})
    unasked = replace(honest, key_shares={**honest.key_shares, "node-02": honest.seed_shares["node-02"]},
                      seed_shares={k: v for k, v in honest.seed_shares.items() if k != "node-02"})
    for bad, reason in ((both, "both_share_kinds"), (unasked, "unexpected_share")):
        with pytest.raises(ProtocolError) as caught:
            game.server.receive_unmask(bad)
        assert caught.value.reason == reason
    game.server.receive_unmask(honest)
    assert game.server.revealed == {**{node: {"seed"} for node in requests["node-00"].survivors}, "node-04": {"key"}}


def test_tampered_share_ciphertext_is_rejected_by_the_recipient() -> None:
    config = make_config(4, 3)
    game = Round(config)
    for client in game.clients.values():
        game.server.receive_advert(client.advertise())
    broadcasts = game.server.close_adverts()
    for node, client in game.clients.items():
        game.server.receive_shares(client.share_keys(broadcasts[node]))
    delivery = game.server.close_shares()["node-00"]
    tampered = dict(delivery.ciphertexts)
    tampered["node-01"] = tampered["node-01"][:-1] + bytes([tampered["node-01"][-1] ^ 0x80])
    with pytest.raises(ProtocolError) as caught:
        game.clients["node-00"].mask_input(replace(delivery, ciphertexts=tampered), game.inputs["node-00"])
    assert caught.value.reason == "bad_ciphertext"
    # A ciphertext moved to another sender's slot fails too (the AAD binds sender and recipient).
    swapped = {**delivery.ciphertexts, "node-01": delivery.ciphertexts["node-02"]}
    with pytest.raises(ProtocolError) as caught:
        game.clients["node-00"].mask_input(replace(delivery, ciphertexts=swapped), game.inputs["node-00"])
    assert caught.value.reason in ("bad_ciphertext", "out_of_order")


def test_advert_macd_with_another_nodes_key_is_rejected() -> None:
    config = make_config(3, 2)
    keys = node_keys(config)
    server = SecAggServer(config, verifier=HmacAdvertVerifier(keys))
    forger = SecAggClient(config, "node-00", signer=HmacAdvertSigner(keys["node-01"]))  # node-01's key
    with pytest.raises(ProtocolError) as caught:
        server.receive_advert(forger.advertise())
    assert caught.value.reason == "bad_signature"
    honest = SecAggClient(config, "node-00", signer=HmacAdvertSigner(keys["node-00"])).advertise()
    with pytest.raises(ProtocolError) as caught:  # the signature covers the keys: swapping one breaks it
        server.receive_advert(replace(honest, masking_public=forger.advertise.__self__._masking.public))
    assert caught.value.reason == "bad_signature"
    server.receive_advert(honest)


def test_peers_verify_ed25519_adverts_so_the_server_cannot_swap_keys() -> None:
    config = make_config(3, 2)
    signing = {node: Ed25519PrivateKey.generate() for node in config.node_ids}
    verifier = Ed25519AdvertVerifier({node: key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                                      for node, key in signing.items()})
    server = SecAggServer(config, verifier=verifier)
    clients = {node: SecAggClient(config, node, signer=Ed25519AdvertSigner(signing[node]), peer_verifier=verifier)
               for node in config.node_ids}
    adverts = {node: client.advertise() for node, client in clients.items()}
    for advert in adverts.values():
        server.receive_advert(wire(advert))
    broadcast = server.close_adverts()["node-00"]
    swapped = tuple(replace(a, masking_public=adverts["node-02"].masking_public) if a.node_id == "node-01" else a
                    for a in broadcast.adverts)
    with pytest.raises(ProtocolError) as caught:
        clients["node-00"].share_keys(replace(broadcast, adverts=swapped))
    assert caught.value.reason == "bad_signature"


def test_replayed_or_repeated_masked_input_is_rejected() -> None:
    old_game, _ = advance_to_unmask(make_config(3, 2, server_round=1), {})
    old_vector = old_game.server._masked["node-00"]
    game = Round(make_config(3, 2, server_round=2))
    for client in game.clients.values():
        game.server.receive_advert(client.advertise())
    broadcasts = game.server.close_adverts()
    for node, client in game.clients.items():
        game.server.receive_shares(client.share_keys(broadcasts[node]))
    deliveries = game.server.close_shares()
    replayed = MaskedInput("sess", 1, "node-00", old_vector)
    fresh = game.clients["node-00"].mask_input(deliveries["node-00"], game.inputs["node-00"])
    cases = [(replayed, "wrong_round"), (replace(fresh, session_id="other"), "wrong_session"),
             (MaskedInput("sess", 2, "node-09", fresh.vector), "unexpected_sender"),
             (replace(fresh, vector=fresh.vector[:-1]), "bad_length")]
    for message, reason in cases:
        with pytest.raises(ProtocolError) as caught:
            game.server.receive_masked(message)
        assert caught.value.reason == reason
    game.server.receive_masked(fresh)
    with pytest.raises(ProtocolError) as caught:
        game.server.receive_masked(fresh)
    assert caught.value.reason == "duplicate"


@pytest.mark.parametrize("message_type", [KeyAdvert, AdvertBroadcast, SharePackage, ShareDelivery, MaskedInput,
                                          UnmaskRequest, UnmaskResponse, SecAggConfig])
def test_wire_decoding_is_strict(message_type: Any) -> None:
    document = {"type": "secagg/x", "session": "sess", "round": 1, "extra": 1}
    with pytest.raises(ProtocolError) as caught:
        message_type.from_wire(document)
    assert caught.value.reason == "bad_schema"


@pytest.mark.parametrize(("change", "reason"), [({"enc_pk": "AAAA"}, "bad_length"), ({"mask_pk": "!!"}, "bad_schema"),
                                                ({"round": -1}, "bad_schema"), ({"node": "../x"}, "bad_node_id")])
def test_malformed_advert_fields_are_refused(change: dict[str, Any], reason: str) -> None:
    config = make_config(3, 2)
    advert = SecAggClient(config, "node-00", signer=HmacAdvertSigner(b"k" * 32)).advertise().to_wire()
    with pytest.raises(ProtocolError) as caught:
        KeyAdvert.from_wire({**advert, **change})
    assert caught.value.reason == reason


def test_config_round_trips_and_checks_the_threshold() -> None:
    config = make_config(10, 3, neighbours=4)
    assert wire(config) == config
    with pytest.raises(ProtocolError) as caught:
        make_config(10, 6, neighbours=4)  # a node's secrets have only 5 holders
    assert caught.value.reason == "bad_config"
