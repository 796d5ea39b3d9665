"""What fl-audit re-does, as pure functions over records and arrays (no Kafka, no files).

* ``build_strategy``: the session's strategy from its recorded settings, built by the server's own code.
* ``assemble_model``: a global model from the records of its ``ModelRef`` range, taking only the server's.
* ``replay_collection``: the server's ``RoundCollector`` run again over exactly the update records a round
  read, so that what it accepted and rejected is judged by the code that judged it the first time.
* ``reaggregate``: the strategy folded over the accepted updates in the order the server folded them.
* ``offset_problems``: consumed update-offset ranges that leave records unread or read them twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.secagg.crypto import HmacAdvertVerifier, advert_message
from common.secagg.messages import MAX_VECTOR_LENGTH
from common.secagg.protocol import UnmaskTranscript, unmask_sum
from common.secagg.round import SecureRoundSpec, decode_mean
from common.wire.assembly import WeightAssembler
from common.wire.codec import ArraySpec, weights_digest
from common.wire.integrity import KeyRegistry
from common.wire.protocol import (
    KIND_MODEL,
    MAX_RECORD_BYTES,
    ModelRef,
    NodeRefusal,
    ProtocolError,
    RawRecord,
    decode_chunk,
)
from common.wire.server_key import ServerPublicKey
from fl_server.collector import CompletedUpdate, RoundCollector, assemble_update, inspect_record
from fl_server.config import ServerConfig, resume_config
from fl_server.strategies import Strategy

Weights = list[np.ndarray]


def session_config(recorded: dict[str, Any]) -> ServerConfig:
    """The session's settings as the history recorded them (the server's own ``--resume`` reading)."""
    config, _ = resume_config(ServerConfig(), recorded)
    return config


def build_strategy(config: ServerConfig) -> Strategy:
    """The strategy the session ran, built as ``fl-server`` builds it (DP-FedAvg wrapper included)."""
    from fl_server.plan import privacy_plan  # the plan module pulls TLS and Kafka-security helpers: only here
    from fl_server.privacy.aggregation import DPAggregation
    from fl_server.privacy.validation import USER_LEVEL_MODES
    from fl_server.strategy_options import strategy_from_args

    strategy = strategy_from_args(config)  # type: ignore[arg-type]  # reads the same attribute names
    privacy = privacy_plan(config)
    if privacy is not None and privacy.settings.mode in USER_LEVEL_MODES:
        strategy = DPAggregation(strategy, mode=privacy.settings.mode, clip_norm=privacy.clip_norm,
                                 noise_multiplier=privacy.settings.noise_multiplier, adaptive=privacy.adaptive)
    return strategy


# --------------------------------------------------------------------- global models


@dataclass(frozen=True)
class ModelRead:
    weights: Weights | None
    problem: str = ""  # why there is no model, or why it is not the one expected
    refused: dict[str, int] = field(default_factory=dict)  # records skipped for their signature, by reason


def assemble_model(records: Iterable[RawRecord], ref: ModelRef, *, session_id: str, server_round: int,
                   server_key: ServerPublicKey | None) -> ModelRead:
    """The model ``ref`` names, from the records of its range: the listed digests, signed when ``server_key``."""
    listed = set(ref.record_digests)
    taken: set[str] = set()
    refused: Counter[str] = Counter()
    assembler = WeightAssembler()
    for record in records:
        if not ref.start_offset <= record.offset <= ref.end_offset:
            continue
        value = record.value or b""
        if server_key is not None:
            try:
                server_key.verify_model_record(record.key, record.header_map(), value)
            except ProtocolError as exc:
                refused[exc.reason] += 1
                continue
        digest = hashlib.sha256(value).hexdigest()
        if listed and (digest not in listed or digest in taken):
            continue  # not one the server listed (the scan of the models topic reports foreign records)
        taken.add(digest)
        try:
            chunk = decode_chunk(value)
            if chunk.kind == KIND_MODEL and chunk.session_id == session_id and chunk.server_round == server_round:
                assembler.add(chunk)
        except ProtocolError as exc:
            return ModelRead(None, f"model record at offset {record.offset}: {exc}", dict(refused))
    if not assembler.complete:
        why = f" ({', '.join(f'{n} {r}' for r, n in sorted(refused.items()))} refused)" if refused else ""
        return ModelRead(None, f"the model of round {server_round} is not complete in "
                               f"{ref.topic}[{ref.partition}] {ref.start_offset}..{ref.end_offset}{why}", dict(refused))
    weights = assembler.result()
    if ref.model_sha256 and weights_digest(weights) != ref.model_sha256:
        return ModelRead(weights, "the model in Kafka is not the one its reference names", dict(refused))
    return ModelRead(weights, "", dict(refused))


# --------------------------------------------------------------------- update collection


@dataclass
class CollectionReplay:
    """What the server's collector decides on a round's records, run again."""

    updates: dict[str, CompletedUpdate]  # node -> its update (weights included)
    positions: dict[str, list[list[int]]]  # node -> [partition, offset] of the chunks taken
    rejected: dict[str, int]
    duplicates: int


def replay_collection(records: Iterable[RawRecord], round_record: dict[str, Any], *, session_id: str,
                      start_weights: Sequence[np.ndarray], keys: KeyRegistry | None, seen: dict[bytes, int],
                      max_update_norm: float | None, max_record_bytes: int = MAX_RECORD_BYTES,
                      expected_specs: Sequence[ArraySpec] | None = None) -> CollectionReplay:
    """Run ``RoundCollector`` over ``records`` (the round's consumed range) as the round loop did.

    Refusals the history lists are offered first (a node that refused is not waited for). ``seen`` carries the
    digests of records taken in earlier rounds, for replay detection, as the server's does. ``expected_specs``:
    the layout updates must have when it is not the model's (a secure round's one masked vector)."""
    server_round = int(round_record["round"])
    collector = RoundCollector(
        session_id=session_id, server_round=server_round, participants=round_record.get("participants", []),
        expected_specs=expected_specs or [ArraySpec.of(w) for w in start_weights], keys=keys,
        reference=start_weights if max_update_norm is not None else None, max_update_norm=max_update_norm,
        max_record_bytes=max_record_bytes, seen=seen, declared_samples=round_record.get("declared_samples") or None)
    for node_id, why in (round_record.get("refused_nodes") or {}).items():
        reason, _, detail = str(why).partition(": ")
        collector.offer_refusal(NodeRefusal(session_id, server_round, node_id, reason, detail))
    updates: dict[str, CompletedUpdate] = {}
    for record in records:
        pending = collector.offer(inspect_record(record, keys=keys, max_record_bytes=max_record_bytes))
        if pending is None:
            continue
        outcome = assemble_update(pending, reference=collector.reference, max_update_norm=max_update_norm)
        update = collector.conclude(pending, outcome)
        if update is not None:
            updates[update.node_id] = update
    positions = {u.node_id: [list(p) for p in u.records] for u in collector.accepted_updates}
    return CollectionReplay(updates, positions, dict(collector.rejected), collector.duplicates)


def collection_problems(replay: CollectionReplay, round_record: dict[str, Any]) -> list[str]:
    """Where the history's account of a round's updates differs from the collector's, run again."""
    problems = []
    accepted = sorted(round_record.get("accepted", []))
    if sorted(replay.updates) != accepted:
        problems.append(f"accepted: the history says {accepted}, the records give {sorted(replay.updates)}")
    recorded_rejections = {k: v for k, v in (round_record.get("rejected_updates_by_reason") or {}).items() if v}
    if recorded_rejections != replay.rejected:
        problems.append(f"rejected: the history says {recorded_rejections}, the records give {replay.rejected}")
    for entry in round_record.get("accepted_updates", []):
        node = entry.get("node")
        update = replay.updates.get(node)
        if update is None:
            continue  # reported above
        if entry.get("sha256") != update.sha256:
            problems.append(f"update of {node}: the history's digest is not the digest of its records")
        if entry.get("records") != replay.positions.get(node):
            problems.append(f"update of {node}: the history names other records than the ones the round took")
        if entry.get("num_samples") != update.num_samples:
            problems.append(f"update of {node}: {entry.get('num_samples')} samples in the history, "
                            f"{update.num_samples} in its records")
    listed = [entry.get("node") for entry in round_record.get("accepted_updates", [])]
    if sorted(listed) != accepted:
        problems.append(f"accepted_updates lists {listed}, accepted is {accepted}")
    return problems


def expected_weight(num_samples: int, round_record: dict[str, Any], max_node_weight: float | None) -> int:
    """The weight the round loop gives an update: its samples, capped by ``--max-node-weight`` of the declared."""
    if max_node_weight is None:
        return num_samples
    declared = round_record.get("declared_samples") or {}
    cap = max(1, int(max_node_weight * sum(int(declared.get(n, 0)) for n in round_record.get("participants", []))))
    return min(num_samples, cap)


# --------------------------------------------------------------------- aggregation


def reaggregate(strategy: Strategy, server_round: int, start_weights: Sequence[np.ndarray],
                ordered: Sequence[tuple[CompletedUpdate, int]], *, aggregate: bool) -> Weights | None:
    """The strategy over ``ordered`` (update, weight) in the server's fold order; None if it aggregated nothing.

    ``aggregate`` False: the round loop never asked for an aggregate (too few updates); only ``begin_round``
    and the folds happen, as they did on the server. Raises ``AggregationError`` as the strategy does."""
    strategy.begin_round(server_round, start_weights)
    for update, weight in ordered:
        strategy.accumulate(update.node_id, update.weights, weight)
    return strategy.aggregate() if aggregate else None


def weights_difference(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """Largest absolute difference between two models of the same layout (inf when the layouts differ)."""
    if [ArraySpec.of(w) for w in got] != [ArraySpec.of(w) for w in want]:
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
                for a, b in zip(got, want, strict=True)), default=0.0)


# --------------------------------------------------------------------- offsets


def offset_problems(previous_to: dict[str, int] | None, current_from: dict[str, int], *,
                    what: str = "the previous round") -> list[str]:
    """Partitions where a round did not start reading where ``what`` stopped: records skipped or read twice."""
    if previous_to is None:
        return []
    problems = []
    for partition in sorted(set(previous_to) | set(current_from), key=int):
        stopped, started = previous_to.get(partition), current_from.get(partition)
        if stopped is None or started is None or stopped == started:
            continue
        if started > stopped:
            problems.append(f"partition {partition}: offsets {stopped}..{started - 1} were never read "
                            f"({started - stopped} record(s) skipped after {what})")
        else:
            problems.append(f"partition {partition}: offsets {started}..{stopped - 1} were read again after {what}")
    return problems


# --------------------------------------------------------------------- secure aggregation


def secure_vector_spec(secure: dict[str, Any]) -> ArraySpec:
    """The one layer a secure round's masked (or, with Paillier, encrypted) update records carry."""
    if secure.get("protocol") == "paillier":
        count, total = secure.get("ciphertexts_per_update"), secure.get("ciphertext_bytes")
        if not (isinstance(count, int) and isinstance(total, int) and 0 < count <= total <= MAX_VECTOR_LENGTH
                and total % count == 0):
            raise ValueError("secure_aggregation.ciphertexts_per_update and ciphertext_bytes are not a layout")
        return ArraySpec(dtype="uint8", shape=(count, total // count))
    length = secure.get("vector_length")
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_VECTOR_LENGTH:
        raise ValueError(f"secure_aggregation.vector_length {length!r:.40} is not a vector length")
    return ArraySpec(dtype="uint32", shape=(length,))


def paillier_round_mean(secure: dict[str, Any], start_weights: Sequence[np.ndarray], accepted: Sequence[str], *,
                        session_id: str, server_round: int) -> tuple[Weights, int]:
    """A Paillier round's FedAvg from the decryptor's signed sum in the history: the signature (with the decryptor
    key the record names), that it is this round's sum over exactly the accepted updates, then the decoding.
    Raises ``ValueError`` with what does not add up."""
    from common.paillier.messages import DecryptedSum
    from common.paillier.round import decode_sum

    try:
        answer = DecryptedSum.from_wire(secure.get("decryption"))
        key = ServerPublicKey.from_pem(str(secure.get("decryptor_public_key", "")).encode("ascii", "replace"),
                                       where="the round's decryptor key")
        spec = SecureRoundSpec.from_wire(secure.get("spec"))
    except ProtocolError as exc:
        raise ValueError(f"the recorded decryption is not one: {exc}") from None
    if not answer.verify(key):
        raise ValueError("the decrypted sum's signature does not verify with the decryptor key")
    if (answer.session_id, answer.server_round) != (session_id, server_round) or sorted(answer.nodes) != sorted(
            accepted):
        raise ValueError(f"the decrypted sum covers {list(answer.nodes)} of round {answer.server_round}, the round "
                         f"accepted {sorted(accepted)}")
    if spec.paillier is None or spec.paillier.key_id != answer.key_id:
        raise ValueError("the recorded spec is not the decrypted sum's Paillier key")
    weights, weighted = decode_sum(spec, answer.plaintexts, len(answer.nodes), start_weights)
    return weights, weighted.num_examples


def unmask_round(secure: dict[str, Any], start_weights: Sequence[np.ndarray], masked: dict[str, np.ndarray], *,
                 keys: KeyRegistry | None) -> tuple[Weights, int]:
    """Redo a secure round's unmasking from its recorded transcript and the masked vectors read back from Kafka:
    the survivors' FedAvg (in the start model's layout) and their total weight.

    With ``keys`` every advert's signature is checked (the mask keys are the nodes' own). Raises ``ValueError``
    (``ProtocolError`` and ``SecAggFailure`` included) with what does not add up."""
    transcript = UnmaskTranscript.from_wire(secure.get("transcript"))
    if keys is not None:
        verifier = HmacAdvertVerifier({n: k for n in keys.node_ids() if (k := keys.key_of(n)) is not None})
        for node, advert in transcript.adverts.items():
            verifier.verify(node, advert_message(session_id=advert.session_id, server_round=advert.server_round,
                                                 node_id=node, encryption_public=advert.encryption_public,
                                                 masking_public=advert.masking_public), advert.signature)
    if sorted(masked) != sorted(transcript.survivors):
        raise ValueError(f"the transcript's survivors {list(transcript.survivors)} are not the nodes whose masked "
                         f"records the round took {sorted(masked)}")
    try:
        spec = SecureRoundSpec(protocol=str(secure.get("protocol")), config=transcript.config,
                               clip=float(secure["clip"]), bits=int(secure["bits"]),
                               max_examples=int(secure["max_examples"]),
                               weighting=str(secure.get("weighting", "samples")))
    except (KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"the recorded encoding is not one: {exc!r}") from None
    total = unmask_sum(transcript, masked)
    weights, weighted = decode_mean(spec, total, len(transcript.survivors), start_weights)
    return weights, weighted.num_examples
