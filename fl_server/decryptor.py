"""What the decryptor decides before it decrypts anything (pure: the records are handed in).

The decryptor does not take the server's word for the sum. ``topic_sum`` runs the round's update records
(read from Kafka by the caller, within the offsets the server names) through the server's own collector
(``fl_server.collector``: node signature, session, round, layout, replay, de-duplication), and multiplies the
ciphertexts of exactly the nodes the server says it accepted. ``judge`` refuses, with a reason:

* ``wrong_key``       the request names another federation key;
* ``too_few_updates`` fewer than ``min_updates`` nodes (at least 2): one node's update would come out in clear;
* ``already_decrypted`` this session's round was decrypted before: two sums over different sets of nodes
  would reveal their difference, e.g. one node's update;
* ``missing_update``  a named node has no complete, correctly signed update among the round's records;
* ``sum_mismatch``    the server's ciphertexts are not the product of those updates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from phe import paillier

from common.paillier.messages import DecryptedSum, DecryptRequest
from common.paillier.packing import ciphertext_bytes
from common.paillier.round import add_encrypted
from common.wire.codec import ArraySpec
from common.wire.integrity import KeyRegistry
from common.wire.protocol import MAX_RECORD_BYTES, RawRecord
from fl_server.collector import RoundCollector, assemble_update, inspect_record

logger = logging.getLogger(__name__)
MIN_UPDATES = 2


class Refusal(Exception):
    """The decryptor will not decrypt this request; ``reason`` is short and stable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_request(request: DecryptRequest, *, key_id: str, min_updates: int,
                  decrypted: set[tuple[str, int]]) -> None:
    """The checks that need no records (``Refusal`` if one fails)."""
    if request.key_id != key_id:
        raise Refusal("wrong_key", f"the request is for key {request.key_id}, this decryptor holds {key_id}")
    if len(request.nodes) < max(min_updates, MIN_UPDATES):
        raise Refusal("too_few_updates", f"a sum of {len(request.nodes)} update(s) is not decrypted: at least "
                                         f"{max(min_updates, MIN_UPDATES)} are needed")
    if (request.session_id, request.server_round) in decrypted:
        raise Refusal("already_decrypted", f"round {request.server_round} of session {request.session_id} was "
                                           "decrypted already")


def topic_sum(request: DecryptRequest, records: Iterable[RawRecord], *, public_key: paillier.PaillierPublicKey,
              keys: KeyRegistry, max_records: int, max_record_bytes: int = MAX_RECORD_BYTES) -> list[int]:
    """The homomorphic sum of the named nodes' updates among ``records`` (``Refusal`` if one is missing)."""
    width = ciphertext_bytes(public_key.n.bit_length())
    collector = RoundCollector(session_id=request.session_id, server_round=request.server_round,
                               participants=request.nodes,
                               expected_specs=[ArraySpec(dtype="uint8", shape=(len(request.ciphertexts), width))],
                               keys=keys, max_record_bytes=max_record_bytes)
    total: list[int] | None = None
    summed: set[str] = set()
    for count, record in enumerate(records, 1):
        if count > max_records:
            raise Refusal("too_many_records", f"the round's offsets span more than {max_records} records")
        pending = collector.offer(inspect_record(record, keys=keys, max_record_bytes=max_record_bytes))
        if pending is None:
            continue
        outcome = assemble_update(pending)
        update = collector.conclude(pending, outcome)
        if update is None or outcome.update is None:
            continue
        layer = outcome.update.weights[0]
        try:
            total = add_encrypted(public_key, total, layer)
        except ValueError as exc:
            raise Refusal("bad_ciphertext", f"the update of {update.node_id}: {exc}") from None
        summed.add(update.node_id)
    missing = sorted(set(request.nodes) - summed)
    if missing or total is None:
        raise Refusal("missing_update", f"no complete signed update of {', '.join(missing)} in round "
                                        f"{request.server_round}'s records")
    return total


def judge_sum(request: DecryptRequest, total: list[int]) -> None:
    if list(request.ciphertexts) != total:
        raise Refusal("sum_mismatch", "the server's ciphertexts are not the sum of the named nodes' updates in "
                                      "the topic")


def decrypt(request: DecryptRequest, private_key: paillier.PaillierPrivateKey) -> DecryptedSum:
    """The plaintext sum (unsigned: the caller signs). Only after ``check_request`` and ``judge_sum``."""
    return DecryptedSum(request.session_id, request.server_round, request.key_id, request.nodes,
                        tuple(int(private_key.raw_decrypt(c)) for c in request.ciphertexts))
