"""The secure-aggregation stages as two pure state machines (Bonawitz et al. 2017, SecAgg+ graph of Bell et al.).

One round, with U1 ⊇ U2 ⊇ U3 ⊇ U4 the nodes still present after each stage:

1. **Advertise keys**: each node makes two X25519 pairs, ``c`` (share encryption) and ``s`` (mask agreement), and
   sends both public keys signed (``KeyAdvert``). The server sends each node the adverts of its holders (U1).
2. **Share keys**: a node draws a self-mask seed ``b``, Shamir-shares ``b`` and its ``s`` private key (threshold
   t) among its holders, and encrypts each holder's pair of shares with AES-GCM under the ``c`` agreement. The
   server routes the ciphertexts (U2 = nodes that sent them).
3. **Masked input**: a node decrypts what it got (a tampered ciphertext aborts it), then sends
   ``y = x + PRG(b) + Σ_{v<>u} ±PRG(s_uv)`` mod 2^32 over the partners whose ciphertexts it got, ``+`` when
   its id sorts before the partner's (U3 = nodes that sent ``y``).
4. **Unmasking**: the server names survivors (U3) and dropped nodes (U2 \\ U3); each survivor returns its shares
   of the survivors' ``b`` and of the dropped nodes' ``s`` keys, never both for one node (U4). The server
   reconstructs, removes every self mask and the masks survivors shared with dropped nodes, and gets Σ x.

Fewer than t nodes at any stage, or fewer than t shares for a secret, fail the round (``SecAggFailure`` with a
reason). Untrusted messages that break the rules raise ``ProtocolError`` and change nothing.

Threat model (what this core does and does not give): against an honest-but-curious server and any minority of
colluding nodes below t, the server learns only the sum of the survivors' inputs. Against an active server it
relies on the advert signatures (with HMAC adverts the server can forge keys, see ``crypto``) and on each node
answering one unmask request per round; the paper's consistency-check round, which stops a server from telling
different nodes different survivor sets, is not implemented.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

import numpy as np

from common.secagg.crypto import (
    AdvertSigner,
    AdvertVerifier,
    KeyPair,
    advert_message,
    agree,
    decrypt_share,
    encrypt_share,
    mask_seed,
    prg_uint32,
    share_key,
)
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
from common.secagg.shamir import SECRET_BYTES, SHARE_BYTES, combine_shares, split_secret
from common.wire.errors import ProtocolError

logger = logging.getLogger(__name__)


class SecAggFailure(Exception):
    """The round cannot finish securely (too few nodes or shares); ``reason`` is a short tag for the history."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Stage(Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


def _check_round(config: SecAggConfig, session_id: str, server_round: int, what: str) -> None:
    if session_id != config.session_id:
        raise ProtocolError("wrong_session", f"{what} belongs to session {session_id!r:.80}")
    if server_round != config.server_round:
        raise ProtocolError("wrong_round", f"{what} is for round {server_round}, this is round {config.server_round}")


def _advert_signed_message(advert: KeyAdvert) -> bytes:
    return advert_message(session_id=advert.session_id, server_round=advert.server_round, node_id=advert.node_id,
                          encryption_public=advert.encryption_public, masking_public=advert.masking_public)


def pairwise_mask(private: KeyPair, peer_masking_public: bytes, config: SecAggConfig) -> np.ndarray:
    seed = mask_seed(agree(private.private, peer_masking_public), session_id=config.session_id,
                     server_round=config.server_round)
    return prg_uint32(seed, config.vector_length)


# --------------------------------------------------------------------- node side


@dataclass(frozen=True)
class _HeldShares:
    key_share: bytes  # of the owner's masking private key
    seed_share: bytes  # of the owner's self-mask seed


class SecAggClient:
    """One node's side of one round. Call ``advertise``, ``share_keys``, ``mask_input``, ``unmask`` in order.

    ``peer_verifier`` (Ed25519 public keys of the peers) makes the node check its neighbours' adverts itself;
    without it the node trusts the server's check (the only option with HMAC adverts)."""

    def __init__(self, config: SecAggConfig, node_id: str, *, signer: AdvertSigner,
                 peer_verifier: AdvertVerifier | None = None) -> None:
        if node_id not in config.graph:
            raise ValueError(f"node {node_id} is not in this round")
        self.config = config
        self.node_id = node_id
        self.stage = Stage.ADVERTISE
        self._signer = signer
        self._peer_verifier = peer_verifier
        self._encryption = KeyPair.generate()
        self._masking = KeyPair.generate()
        self._self_seed = secrets.token_bytes(SECRET_BYTES)
        self._peers: dict[str, KeyAdvert] = {}
        self._held: dict[str, _HeldShares] = {}

    def _enter(self, expected: Stage, following: Stage) -> None:
        if self.stage is not expected:
            raise ProtocolError("out_of_order", f"node {self.node_id} is at stage {self.stage.value}, "
                                                f"not {expected.value}")
        self.stage = following

    def advertise(self) -> KeyAdvert:
        self._enter(Stage.ADVERTISE, Stage.SHARE_KEYS)
        unsigned = KeyAdvert(self.config.session_id, self.config.server_round, self.node_id,
                             self._encryption.public, self._masking.public, b"")
        return KeyAdvert(unsigned.session_id, unsigned.server_round, unsigned.node_id, unsigned.encryption_public,
                         unsigned.masking_public, self._signer.sign(_advert_signed_message(unsigned)))

    def _check_adverts(self, broadcast: AdvertBroadcast) -> dict[str, KeyAdvert]:
        _check_round(self.config, broadcast.session_id, broadcast.server_round, "the advert broadcast")
        if broadcast.recipient != self.node_id:
            raise ProtocolError("wrong_recipient", f"adverts for {broadcast.recipient} reached {self.node_id}")
        holders = set(self.config.holders(self.node_id))
        adverts: dict[str, KeyAdvert] = {}
        for advert in broadcast.adverts:
            _check_round(self.config, advert.session_id, advert.server_round, f"the advert of {advert.node_id}")
            if advert.node_id not in holders or advert.node_id in adverts:
                raise ProtocolError("not_neighbour", f"advert of {advert.node_id} is not one node {self.node_id} "
                                                     "expects (not a neighbour, or twice)")
            if self._peer_verifier is not None and advert.node_id != self.node_id:
                self._peer_verifier.verify(advert.node_id, _advert_signed_message(advert), advert.signature)
            adverts[advert.node_id] = advert
        own = adverts.get(self.node_id)
        if own is None or (own.encryption_public, own.masking_public) != (self._encryption.public,
                                                                           self._masking.public):
            raise ProtocolError("bad_advert", f"the broadcast does not carry node {self.node_id}'s own keys")
        public_keys = [key for advert in adverts.values() for key in (advert.encryption_public, advert.masking_public)]
        if len(set(public_keys)) != len(public_keys):
            raise ProtocolError("duplicate_key", "two adverts share a public key")
        if len(adverts) < self.config.threshold:
            raise ProtocolError("too_few_nodes", f"{len(adverts)} holders advertised keys, threshold is "
                                                 f"{self.config.threshold}")
        return adverts

    def share_keys(self, broadcast: AdvertBroadcast) -> SharePackage:
        self._enter(Stage.SHARE_KEYS, Stage.MASKED_INPUT)
        adverts = self._check_adverts(broadcast)
        holders = self.config.holders(self.node_id)
        threshold = self.config.threshold
        key_shares = split_secret(self._masking.private_bytes(), threshold=threshold, num_shares=len(holders))
        seed_shares = split_secret(self._self_seed, threshold=threshold, num_shares=len(holders))
        ciphertexts: dict[str, bytes] = {}
        for index, holder in enumerate(holders, start=1):
            if holder == self.node_id:
                self._held[holder] = _HeldShares(key_shares[index], seed_shares[index])
            elif holder in adverts:
                key = share_key(agree(self._encryption.private, adverts[holder].encryption_public),
                                session_id=self.config.session_id, server_round=self.config.server_round)
                ciphertexts[holder] = encrypt_share(key, key_shares[index] + seed_shares[index],
                                                    session_id=self.config.session_id,
                                                    server_round=self.config.server_round, sender=self.node_id,
                                                    recipient=holder)
        self._peers = {node: advert for node, advert in adverts.items() if node != self.node_id}
        return SharePackage(self.config.session_id, self.config.server_round, self.node_id, ciphertexts)

    def mask_input(self, delivery: ShareDelivery, encoded: np.ndarray) -> MaskedInput:
        """Decrypt the shares addressed to this node, then mask ``encoded`` (uint32, ``vector_length`` long)."""
        if encoded.dtype != np.uint32 or encoded.shape != (self.config.vector_length,):
            raise ValueError(f"the input must be a uint32 vector of length {self.config.vector_length}")
        self._enter(Stage.MASKED_INPUT, Stage.UNMASK)
        _check_round(self.config, delivery.session_id, delivery.server_round, "the share delivery")
        if delivery.recipient != self.node_id:
            raise ProtocolError("wrong_recipient", f"shares for {delivery.recipient} reached {self.node_id}")
        unexpected = set(delivery.ciphertexts) - set(self._peers)
        if unexpected:
            raise ProtocolError("unexpected_sender", f"shares from nodes without an advert: {sorted(unexpected)}")
        if len(delivery.ciphertexts) + 1 < self.config.threshold:
            raise ProtocolError("too_few_nodes", f"shares from only {len(delivery.ciphertexts)} partners")
        for sender, ciphertext in sorted(delivery.ciphertexts.items()):
            key = share_key(agree(self._encryption.private, self._peers[sender].encryption_public),
                            session_id=self.config.session_id, server_round=self.config.server_round)
            plaintext = decrypt_share(key, ciphertext, session_id=self.config.session_id,
                                      server_round=self.config.server_round, sender=sender, recipient=self.node_id)
            self._held[sender] = _HeldShares(plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:])
        masked = encoded + prg_uint32(self._self_seed, self.config.vector_length)
        for partner in sorted(delivery.ciphertexts):
            mask = pairwise_mask(self._masking, self._peers[partner].masking_public, self.config)
            masked = masked + mask if self.node_id < partner else masked - mask
        return MaskedInput(self.config.session_id, self.config.server_round, self.node_id, masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal seed shares of survivors and key shares of dropped nodes; refuse a request naming a node as both.

        A node answers one request per round: a second could move a node from one list to the other."""
        self._enter(Stage.UNMASK, Stage.DONE)
        _check_round(self.config, request.session_id, request.server_round, "the unmask request")
        if request.recipient != self.node_id:
            raise ProtocolError("wrong_recipient", f"unmask request for {request.recipient} reached {self.node_id}")
        both = set(request.survivors) & set(request.dropped)
        if both:
            raise ProtocolError("both_share_kinds", f"nodes named both survivor and dropped: {sorted(both)}")
        if self.node_id not in request.survivors:
            raise ProtocolError("not_a_survivor", f"node {self.node_id} is not among the survivors")
        if len(request.survivors) < self.config.threshold:
            raise ProtocolError("too_few_nodes", f"{len(request.survivors)} survivors, threshold is "
                                                 f"{self.config.threshold}")
        return UnmaskResponse(
            self.config.session_id, self.config.server_round, self.node_id,
            seed_shares={node: self._held[node].seed_share for node in request.survivors if node in self._held},
            key_shares={node: self._held[node].key_share for node in request.dropped if node in self._held})


# --------------------------------------------------------------------- server side


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """The sum mod 2^32 of the survivors' inputs, and who survived (decode with ``len(survivors)`` nodes)."""

    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


class SecAggServer:
    """The server's side of one round: ``receive_*`` the stage's messages, then ``close_*`` it.

    ``receive_*`` raise ``ProtocolError`` for a message to refuse (the state is unchanged); ``close_*`` and
    ``finish`` raise ``SecAggFailure`` once the round cannot finish (and every later call raises it again)."""

    def __init__(self, config: SecAggConfig, *, verifier: AdvertVerifier) -> None:
        self.config = config
        self.stage = Stage.ADVERTISE
        self.failure: SecAggFailure | None = None
        self._verifier = verifier
        self._adverts: dict[str, KeyAdvert] = {}
        self._packages: dict[str, SharePackage] = {}
        self._partners: dict[str, frozenset[str]] = {}  # node -> whose ciphertexts (and masks) it got
        self._masked: dict[str, np.ndarray] = {}
        self._survivors: tuple[str, ...] = ()
        self._dropped: tuple[str, ...] = ()
        self._responses: dict[str, UnmaskResponse] = {}
        self.revealed: dict[str, set[str]] = {}  # owner -> kinds of its shares received ("seed", "key")

    def _fail(self, reason: str, message: str) -> NoReturn:
        self.failure = SecAggFailure(reason, message)
        self.stage = Stage.FAILED
        logger.warning("secure aggregation of round %s failed: %s", self.config.server_round, self.failure)
        raise self.failure

    def _require(self, stage: Stage) -> None:
        if self.failure is not None:
            raise self.failure
        if self.stage is not stage:
            raise ProtocolError("out_of_stage", f"the server is at stage {self.stage.value}, not {stage.value}")

    def _receive(self, stage: Stage, session_id: str, server_round: int, node_id: str, allowed: Mapping[str, object]
                 | frozenset[str] | set[str], seen: Mapping[str, object], what: str) -> None:
        self._require(stage)
        _check_round(self.config, session_id, server_round, f"{what} of {node_id}")
        if node_id not in allowed:
            raise ProtocolError("unexpected_sender", f"{what} from {node_id!r:.80}, not expected at this stage")
        if node_id in seen:
            raise ProtocolError("duplicate", f"a second {what} from {node_id}")

    def _enough(self, present: int, what: str) -> None:
        if present < self.config.threshold:
            self._fail("too_few_nodes", f"{present} nodes {what}, threshold is {self.config.threshold}")

    # ----- stage 1
    def receive_advert(self, advert: KeyAdvert) -> None:
        self._receive(Stage.ADVERTISE, advert.session_id, advert.server_round, advert.node_id, self.config.graph,
                      self._adverts, "key advert")
        self._verifier.verify(advert.node_id, _advert_signed_message(advert), advert.signature)
        self._adverts[advert.node_id] = advert

    def close_adverts(self) -> dict[str, AdvertBroadcast]:
        self._require(Stage.ADVERTISE)
        self._enough(len(self._adverts), "advertised keys")
        self.stage = Stage.SHARE_KEYS
        return {node: AdvertBroadcast(self.config.session_id, self.config.server_round, node,
                                      tuple(self._adverts[h] for h in self.config.holders(node) if h in self._adverts))
                for node in sorted(self._adverts)}

    # ----- stage 2
    def receive_shares(self, package: SharePackage) -> None:
        self._receive(Stage.SHARE_KEYS, package.session_id, package.server_round, package.sender, self._adverts,
                      self._packages, "share package")
        allowed = (set(self.config.holders(package.sender)) & set(self._adverts)) - {package.sender}
        if not set(package.ciphertexts) <= allowed:
            raise ProtocolError("bad_recipient", f"shares of {package.sender} for nodes that are not its advertised "
                                                 f"neighbours: {sorted(set(package.ciphertexts) - allowed)}")
        self._packages[package.sender] = package

    def close_shares(self) -> dict[str, ShareDelivery]:
        self._require(Stage.SHARE_KEYS)
        self._enough(len(self._packages), "sent shares")
        self.stage = Stage.MASKED_INPUT
        deliveries = {}
        for node in sorted(self._packages):
            incoming = {sender: package.ciphertexts[node] for sender, package in self._packages.items()
                        if node in package.ciphertexts}
            self._partners[node] = frozenset(incoming)
            deliveries[node] = ShareDelivery(self.config.session_id, self.config.server_round, node, incoming)
        return deliveries

    # ----- stage 3
    def receive_masked(self, masked: MaskedInput) -> None:
        self._receive(Stage.MASKED_INPUT, masked.session_id, masked.server_round, masked.node_id, self._packages,
                      self._masked, "masked input")
        if masked.vector.dtype != np.uint32 or masked.vector.shape != (self.config.vector_length,):
            raise ProtocolError("bad_length", f"masked input of {masked.node_id} is not {self.config.vector_length} "
                                              "uint32")
        self._masked[masked.node_id] = masked.vector

    def close_masked(self) -> dict[str, UnmaskRequest]:
        self._require(Stage.MASKED_INPUT)
        self._enough(len(self._masked), "sent masked inputs")
        self.stage = Stage.UNMASK
        self._survivors = tuple(sorted(self._masked))
        # Only dropped nodes that a survivor masked with need their key back; the others stay secret.
        self._dropped = tuple(sorted(node for node in set(self._packages) - set(self._masked)
                                     if any(node in self._partners[s] for s in self._survivors)))
        return {node: UnmaskRequest(self.config.session_id, self.config.server_round, node, self._survivors,
                                    self._dropped) for node in self._survivors}

    # ----- stage 4
    def receive_unmask(self, response: UnmaskResponse) -> None:
        self._receive(Stage.UNMASK, response.session_id, response.server_round, response.node_id, self._masked,
                      self._responses, "unmask response")
        sender = response.node_id
        both = set(response.seed_shares) & set(response.key_shares)
        if both:
            raise ProtocolError("both_share_kinds", f"{sender} sent both kinds of shares of {sorted(both)}")
        held = self._partners[sender] | {sender}
        for owners, allowed, kind in ((response.seed_shares, self._survivors, "seed"),
                                      (response.key_shares, self._dropped, "key")):
            wrong = set(owners) - (set(allowed) & held)
            if wrong:
                raise ProtocolError("unexpected_share", f"{sender} sent {kind} shares it was not asked for (or does "
                                                        f"not hold): {sorted(wrong)}")
        for owners, kind in ((response.seed_shares, "seed"), (response.key_shares, "key")):
            for owner in owners:
                self.revealed.setdefault(owner, set()).add(kind)
        self._responses[sender] = response

    def finish(self) -> SecAggResult:
        """Reconstruct the secrets, remove the masks and return the sum of the survivors' inputs."""
        self._require(Stage.UNMASK)
        self._enough(len(self._responses), "answered the unmask request")
        try:
            total = unmask_sum(self.transcript(), self._masked)
        except SecAggFailure as failure:
            self._fail(failure.reason, str(failure).partition(": ")[2])
        self.stage = Stage.DONE
        return SecAggResult(total, self._survivors, self._dropped)

    def transcript(self) -> UnmaskTranscript:
        """Everything the unmasking uses besides the masked vectors: an auditor with the masked vectors (from
        Kafka) and this can redo it, and learns no more than the server did (the sum)."""
        involved = set(self._survivors) | set(self._dropped)
        return UnmaskTranscript(self.config, {node: self._adverts[node] for node in sorted(involved)},
                                self._survivors, self._dropped,
                                {node: self._partners[node] for node in self._survivors},
                                dict(sorted(self._responses.items())))


@dataclass(frozen=True)
class UnmaskTranscript:
    """The public record of one round's unmasking: the config, the adverts of the nodes involved, survivors,
    dropped nodes, whose masks each survivor applied (``partners``) and the shares the survivors revealed."""

    config: SecAggConfig
    adverts: Mapping[str, KeyAdvert]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    partners: Mapping[str, frozenset[str]]
    responses: Mapping[str, UnmaskResponse]

    def to_wire(self) -> dict[str, Any]:
        return {"config": self.config.to_wire(), "adverts": [a.to_wire() for a in self.adverts.values()],
                "survivors": list(self.survivors), "dropped": list(self.dropped),
                "partners": {node: sorted(nodes) for node, nodes in self.partners.items()},
                "responses": [r.to_wire() for r in self.responses.values()]}

    @classmethod
    def from_wire(cls, document: object) -> UnmaskTranscript:
        """Strict reading of a transcript (an auditor's input: untrusted). ``ProtocolError`` if malformed."""
        if not isinstance(document, dict) or set(document) != {"config", "adverts", "survivors", "dropped",
                                                                 "partners", "responses"}:
            raise ProtocolError("bad_schema", "an unmask transcript has exactly config, adverts, survivors, dropped, "
                                              "partners and responses")
        config = SecAggConfig.from_wire(document["config"])
        for name in ("adverts", "survivors", "dropped", "responses"):
            if not isinstance(document[name], list) or len(document[name]) > len(config.node_ids):
                raise ProtocolError("bad_schema", f"transcript {name} must be a list of at most one per node")
        adverts = {a.node_id: a for a in map(KeyAdvert.from_wire, document["adverts"])}
        responses = {r.node_id: r for r in map(UnmaskResponse.from_wire, document["responses"])}
        partners = document["partners"]
        if not isinstance(partners, dict) or not all(isinstance(v, list) for v in partners.values()):
            raise ProtocolError("bad_schema", "transcript partners must map nodes to lists of nodes")
        members = set(config.node_ids)
        survivors = tuple(str(n) for n in document["survivors"])
        dropped = tuple(str(n) for n in document["dropped"])
        named = set(survivors) | set(dropped) | set(adverts) | set(responses) | set(partners)
        named |= {str(n) for nodes in partners.values() for n in nodes}
        if not named <= members:
            raise ProtocolError("bad_schema", f"the transcript names nodes outside the round: "
                                              f"{sorted(named - members)}")
        return cls(config, adverts, survivors, dropped,
                   {str(node): frozenset(map(str, nodes)) for node, nodes in partners.items()}, responses)


def _reconstruct(transcript: UnmaskTranscript, owner: str, kind: str) -> bytes:
    config = transcript.config
    shares = {}
    for holder, response in transcript.responses.items():
        revealed = response.seed_shares if kind == "seed" else response.key_shares
        if owner in revealed and holder in config.holders(owner):
            shares[config.share_index(owner, holder)] = revealed[owner]
    if len(shares) < config.threshold:
        raise SecAggFailure("too_few_shares", f"{len(shares)} shares of node {owner}'s secret, threshold is "
                                              f"{config.threshold}")
    try:
        return combine_shares(shares, threshold=config.threshold)
    except ValueError as exc:
        raise SecAggFailure("bad_reconstruction", f"the shares of node {owner}'s secret do not combine: "
                                                  f"{exc}") from None


def unmask_sum(transcript: UnmaskTranscript, masked: Mapping[str, np.ndarray]) -> np.ndarray:
    """Σ of the survivors' inputs mod 2^32: their masked vectors, minus the self masks rebuilt from the seed shares,
    and minus (or plus) the pairwise masks they applied with dropped nodes, rebuilt from those nodes' key shares.
    Raises ``SecAggFailure`` when a secret cannot be rebuilt or a rebuilt key is not the advertised one."""
    config = transcript.config
    missing = [node for node in transcript.survivors if node not in masked or node not in transcript.partners]
    if missing:
        raise SecAggFailure("missing_input", f"no masked vector or partners for survivors {missing}")
    total = np.zeros(config.vector_length, dtype=np.uint32)
    for node in transcript.survivors:
        if masked[node].dtype != np.uint32 or masked[node].shape != (config.vector_length,):
            raise SecAggFailure("bad_length", f"the masked vector of {node} is not {config.vector_length} uint32")
        total = total + masked[node]
    for node in transcript.survivors:
        total = total - prg_uint32(_reconstruct(transcript, node, "seed"), config.vector_length)
    for dropped in transcript.dropped:
        masking = KeyPair.from_private_bytes(_reconstruct(transcript, dropped, "key"))
        advert = transcript.adverts.get(dropped)
        if advert is None or masking.public != advert.masking_public:
            raise SecAggFailure("bad_reconstruction", f"the shares of node {dropped}'s key do not match its advert")
        for survivor in transcript.survivors:
            if dropped in transcript.partners[survivor]:
                mask = pairwise_mask(masking, transcript.adverts[survivor].masking_public, config)
                # The survivor added the mask if its id sorts first, else subtracted it: undo that.
                total = total - mask if survivor < dropped else total + mask
    return total
