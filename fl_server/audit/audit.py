"""``audit_session``: a session's history checked round by round against the records Kafka kept.

It needs only read access to the two topics, through a ``RecordSource`` (Kafka in ``fl_server.audit.source``,
a dict of records in the tests). Per round it checks, and names what fails:

1. the hash chain and the server's signature of the round record (``fl_server.chain``);
2. that the update offsets the round read start where the previous round stopped (nothing skipped, nothing
   read twice), and that a checkpoint resumes where its round stopped;
3. that the start model in Kafka is signed by the server, is the one the history names, and is the previous
   round's model;
4. that the server's collector, run again over exactly the records the round read, accepts and rejects what
   the history says it did (node signatures included, with ``--node-keys``), with the same update digests;
5. that no accepted update (no record, no identical update) was counted twice;
6. that the recorded strategy, re-run over the accepted updates in the server's fold order, gives the
   model the history and Kafka hold (bit for bit; ``tolerance`` allows a difference for strategies of your own);
7. and, over the session's span of the models topic, that no record claiming the session is forged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.wire.codec import weights_digest
from common.wire.integrity import KeyRegistry
from common.wire.protocol import ModelRef, ProtocolError, RawRecord, decode_chunk
from common.wire.server_key import ServerPublicKey
from fl_server.audit.replay import (
    CollectionReplay,
    ModelRead,
    assemble_model,
    build_strategy,
    collection_problems,
    expected_weight,
    offset_problems,
    paillier_round_mean,
    reaggregate,
    replay_collection,
    secure_vector_spec,
    session_config,
    unmask_round,
    weights_difference,
)
from fl_server.chain import canonical_json, chain_problems
from fl_server.collector import CompletedUpdate
from fl_server.config import ServerConfig
from fl_server.secure_stages import SECURE_SUM_ID
from fl_server.strategies import AggregationError, Strategy

logger = logging.getLogger(__name__)

OK = "ok"
MISMATCH = "MISMATCH"


class MissingRecords(RuntimeError):
    """Records the audit needs are no longer in Kafka (retention deleted them)."""


class RecordSource(Protocol):
    def records(self, topic: str, partition: int, start: int, end: int) -> Iterator[RawRecord]:
        """The records at offsets ``start <= offset < end``, in order; ``MissingRecords`` if some are gone."""
        ...

    def end_offset(self, topic: str, partition: int) -> int: ...


@dataclass
class RoundVerdict:
    server_round: int
    status: str
    accepted: list[str]
    model_sha256: str
    problems: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.problems:
            return MISMATCH
        return f"not_checked: {'; '.join(self.not_checked)}" if self.not_checked else OK


@dataclass
class AuditReport:
    session_id: str
    rounds: list[RoundVerdict]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not r.problems for r in self.rounds)


def audit_session(document: dict[str, Any], source: RecordSource, *, keys: KeyRegistry | None,
                  server_key: ServerPublicKey | None, tolerance: float = 0.0,
                  checkpoint: dict[str, Any] | None = None) -> AuditReport:
    """Audit a history document (``fl-history/1``, already structurally checked) against ``source``."""
    return _Auditor(document, source, keys=keys, server_key=server_key, tolerance=tolerance).run(checkpoint)


class _Auditor:
    def __init__(self, document: dict[str, Any], source: RecordSource, *, keys: KeyRegistry | None,
                 server_key: ServerPublicKey | None, tolerance: float) -> None:
        self.document = document
        self.source = source
        self.keys = keys
        self.server_key = server_key
        self.tolerance = tolerance
        self.session_id = str(document.get("session_id", ""))
        self.recorded_config: dict[str, Any] = document.get("config") or {}
        self.rounds: list[dict[str, Any]] = document["rounds"]
        self.notes: list[str] = []
        self._models: dict[tuple[str, int, int, int, int], ModelRead] = {}
        self._seen: dict[bytes, int] = {}
        self._positions_used: dict[tuple[int, int], int] = {}
        self._digests_used: dict[str, int] = {}
        self._state_known = True  # a stateful strategy's state is in step with the server's

    # ------------------------------------------------------------ the whole session

    def run(self, checkpoint: dict[str, Any] | None) -> AuditReport:
        verdicts = [RoundVerdict(int(r.get("round", i + 1)), str(r.get("status", "")), list(r.get("accepted", [])),
                                 str(r.get("model_sha256", ""))) for i, r in enumerate(self.rounds)]
        by_round = {v.server_round: v for v in verdicts}
        self._check_chain(by_round)
        config, strategy = self._session_strategy()
        self._check_strategy_params(strategy, verdicts)
        resumed_after = {m.get("after_round") for m in self.document.get("resumes") or [] if isinstance(m, dict)}
        previous: dict[str, Any] | None = None
        for index, (record, verdict) in enumerate(zip(self.rounds, verdicts, strict=True)):
            if verdict.server_round - 1 in resumed_after:
                self._seen = {}  # a resumed server process starts with no memory of the records taken before
            try:
                self._audit_round(index, record, previous, verdict, config, strategy)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a hostile history
                verdict.problems.append(f"unreadable round record ({exc!r:.200})")
                self._state_known = False
            previous = record
        if checkpoint is not None:
            self._check_checkpoint(checkpoint, by_round)
        self._scan_models_topic(by_round)
        return AuditReport(self.session_id, verdicts, self.notes)

    def _check_chain(self, by_round: dict[int, RoundVerdict]) -> None:
        key = self.server_key
        if key is None:
            self.notes.append("no server key: round signatures and model signatures are not checked")
        for problem in chain_problems(self.rounds, session_id=self.session_id, config=self.recorded_config, key=key):
            verdict = by_round.get(problem.server_round)
            if verdict is not None:
                verdict.problems.append(f"chain ({problem.kind}): {problem.detail}")

    def _check_strategy_params(self, strategy: Strategy | None, verdicts: list[RoundVerdict]) -> None:
        """Each round names the strategy the session's settings build (a strategy edited in one round is named)."""
        if strategy is None:
            return
        want = canonical_json({"name": self.recorded_config.get("strategy"), "params": strategy.params()})
        for record, verdict in zip(self.rounds, verdicts, strict=True):
            said = record.get("strategy")
            if said and canonical_json(said) != want:
                verdict.problems.append(f"strategy: the round names {said!r:.200}, the session's settings build "
                                        f"{want.decode()[:200]}")

    def _session_strategy(self) -> tuple[ServerConfig | None, Strategy | None]:
        try:
            config = session_config(self.recorded_config)
            return config, build_strategy(config)
        except (ValueError, TypeError, ImportError) as exc:
            self.notes.append(f"cannot rebuild the session's strategy ({exc}); aggregation not checked")
            return None, None

    # ------------------------------------------------------------ one round

    def _audit_round(self, index: int, record: dict[str, Any], previous: dict[str, Any] | None,
                     verdict: RoundVerdict, config: ServerConfig | None, strategy: Strategy | None) -> None:
        offsets, ref = record.get("update_offsets") or {}, record.get("start_model_ref") or {}
        if not offsets or not ref:
            verdict.not_checked.append("the history does not record this round's offsets (written before fl-audit)")
            self._state_known = False
            return
        prev_offsets = (previous or {}).get("update_offsets") or {}
        for problem in offset_problems(prev_offsets.get("to") if previous else None, offsets.get("from", {}),
                                       what=f"round {verdict.server_round - 1}"):
            verdict.problems.append(f"offsets: {problem}")
        start = self._start_model(record, previous, verdict)
        if start is None:
            self._state_known = False
            return
        if config is not None and config.personal_layers:  # updates carry only the shared layers
            verdict.not_checked.append("updates and aggregation (--personal-layers: not replayed)")
            self._state_known = False
            return
        try:
            replay = self._replay(record, start, config, verdict)
        except MissingRecords as exc:
            verdict.problems.append(f"updates: {exc}")
            self._state_known = False
            return
        self._check_double_counting(record, verdict)
        if config is None or strategy is None:
            verdict.not_checked.append("aggregation (the strategy could not be rebuilt)")
        elif config.dp == "central":
            verdict.not_checked.append("aggregation (central differential privacy: the noise cannot be re-drawn)")
        elif not self._state_known and strategy.state():
            verdict.not_checked.append("aggregation (the strategy's state is unknown after an unchecked round)")
        elif record.get("secure_aggregation"):
            self._check_secure_aggregate(index, record, start, replay, strategy, verdict)
        else:
            self._check_aggregate(index, record, start, replay, config, strategy, verdict)

    def _start_model(self, record: dict[str, Any], previous: dict[str, Any] | None,
                     verdict: RoundVerdict) -> list[np.ndarray] | None:
        read = self._model(record["start_model_ref"], verdict.server_round)
        if read.problem:
            verdict.problems.append(f"start model: {read.problem}")
        if read.weights is None:
            return None
        digest = weights_digest(read.weights)
        if digest != record.get("start_model_sha256"):
            verdict.problems.append(f"start model: Kafka holds {digest[:12]}, the history says "
                                    f"{str(record.get('start_model_sha256'))[:12]}")
        if previous is not None and record.get("start_model_sha256") != previous.get("model_sha256"):
            verdict.problems.append(f"start model: not the model round {verdict.server_round - 1} ended with")
        return read.weights

    def _replay(self, record: dict[str, Any], start: list[np.ndarray], config: ServerConfig | None,
                verdict: RoundVerdict) -> CollectionReplay:
        server_round = verdict.server_round
        self._seen = {d: r for d, r in self._seen.items() if r >= server_round - 1}
        offsets = record["update_offsets"]
        restricted = self.keys is None and bool(self.recorded_config.get("authenticated"))
        records = self._round_records(offsets, record if restricted else None)
        secure = record.get("secure_aggregation")
        replay = replay_collection(records, record, session_id=self.session_id, start_weights=start, keys=self.keys,
                                   seen=self._seen,
                                   max_update_norm=config.max_update_norm if config else None,
                                   max_record_bytes=config.max_record_bytes if config else 4 * 1024 * 1024,
                                   expected_specs=[secure_vector_spec(secure)] if isinstance(secure, dict) else None)
        if restricted:  # without the node keys, only the accepted updates can be re-read (not the rejections)
            verdict.not_checked.append("node signatures and rejections (give --node-keys)")
            replay.rejected = {k: v for k, v in (record.get("rejected_updates_by_reason") or {}).items() if v}
        for problem in collection_problems(replay, record):
            verdict.problems.append(f"updates: {problem}")
        return replay

    def _round_records(self, offsets: dict[str, dict[str, int]], only_accepted: dict[str, Any] | None) -> list[
            RawRecord]:
        topic = str(self.recorded_config.get("updates_topic") or "fl.updates")
        start, stop = offsets.get("from", {}), offsets.get("to", {})
        wanted = None
        if only_accepted is not None:
            wanted = {(int(p), int(o)) for u in only_accepted.get("accepted_updates", []) for p, o in u["records"]}
        out: list[RawRecord] = []
        for partition, end in sorted(stop.items(), key=lambda item: int(item[0])):
            first = start.get(partition)
            if first is None:
                raise MissingRecords(f"no start offset recorded for partition {partition}")
            for raw in self.source.records(topic, int(partition), int(first), int(end)):
                if wanted is None or (raw.partition, raw.offset) in wanted:
                    out.append(raw)
        return out

    def _check_double_counting(self, record: dict[str, Any], verdict: RoundVerdict) -> None:
        server_round = verdict.server_round
        nodes = [u.get("node") for u in record.get("accepted_updates", [])]
        for node in sorted({n for n in nodes if nodes.count(n) > 1}, key=str):
            verdict.problems.append(f"double counting: the update of {node} is counted more than once")
        for update in record.get("accepted_updates", []):
            for partition, offset in update.get("records", []):
                earlier = self._positions_used.setdefault((int(partition), int(offset)), server_round)
                if earlier != server_round:
                    verdict.problems.append(f"double counting: record {partition}/{offset} of {update.get('node')} "
                                            f"was counted in round {earlier} already")
            earlier = self._digests_used.setdefault(str(update.get("sha256")), server_round)
            if earlier != server_round:
                verdict.problems.append(f"double counting: the update of {update.get('node')} is the one counted in "
                                        f"round {earlier}")

    def _check_aggregate(self, index: int, record: dict[str, Any], start: list[np.ndarray], replay: CollectionReplay,
                         config: ServerConfig, strategy: Strategy, verdict: RoundVerdict) -> None:
        ordered = []
        for entry in record.get("accepted_updates", []):
            update = replay.updates.get(entry.get("node"))
            if update is None:
                continue
            weight = expected_weight(update.num_samples, record, config.max_node_weight)
            if entry.get("weight") != weight:
                verdict.problems.append(f"weight of {update.node_id}: {entry.get('weight')} in the history, the "
                                        f"round loop gives {weight}")
            ordered.append((update, weight))
        asked = len(replay.updates) >= int(record.get("required_updates") or 1)
        try:
            result = reaggregate(strategy, verdict.server_round, start, ordered, aggregate=asked)
            error = ""
        except AggregationError as exc:
            result, error = None, str(exc)
        if record.get("status") != "completed":
            if record.get("model_sha256") != record.get("start_model_sha256"):
                verdict.problems.append("model: a failed round changed the global model")
            if result is not None:
                verdict.problems.append("model: the round is recorded as failed, but its updates aggregate")
            return
        if result is None:
            verdict.problems.append(f"model: the strategy does not aggregate these updates ({error or 'none'})")
            return
        self._compare_model(index, record, result, verdict)

    def _compare_model(self, index: int, record: dict[str, Any], result: list[np.ndarray],
                       verdict: RoundVerdict) -> None:
        digest = weights_digest(result)
        if digest == record.get("model_sha256"):
            return
        published = self._published_after(index)
        gap = weights_difference(result, published.weights) if published.weights is not None else float("inf")
        if gap <= self.tolerance and published.weights is not None \
                and weights_digest(published.weights) == record.get("model_sha256"):
            verdict.notes.append(f"model within tolerance {self.tolerance:g} (largest difference {gap:.3g})")
            return
        verdict.problems.append(f"model: the re-computed aggregate {digest[:12]} is not the published model "
                                f"{str(record.get('model_sha256'))[:12]} (largest difference {gap:.3g})")

    def _check_secure_aggregate(self, index: int, record: dict[str, Any], start: list[np.ndarray],
                                replay: CollectionReplay, strategy: Strategy, verdict: RoundVerdict) -> None:
        """Secure aggregation: redo the unmasking from the recorded transcript and the masked records, then the
        strategy over the survivors' mean, as the round loop did."""
        secure = record["secure_aggregation"]
        if record.get("status") != "completed":
            if record.get("model_sha256") != record.get("start_model_sha256"):
                verdict.problems.append("model: a failed round changed the global model")
            return
        masked = {node: update.weights[0] for node, update in replay.updates.items()}
        try:
            if secure.get("protocol") == "paillier":
                mean, total_weight = paillier_round_mean(secure, start, list(masked), session_id=self.session_id,
                                                         server_round=verdict.server_round)
                verdict.notes.append("paillier: the sum is the decryptor's, signed with the key the history names")
            else:
                mean, total_weight = unmask_round(secure, start, masked, keys=self.keys)
        except ValueError as exc:
            verdict.problems.append(f"secure aggregation: {exc}")
            return
        if secure.get("num_samples_total") != total_weight:
            verdict.problems.append(f"secure aggregation: {secure.get('num_samples_total')} samples in the history, "
                                    f"the unmasked sum holds {total_weight}")
        if self.keys is None and secure.get("protocol") != "paillier":
            verdict.not_checked.append("the adverts' signatures (give --node-keys)")
        sum_update = CompletedUpdate(SECURE_SUM_ID, total_weight, mean)
        try:
            result = reaggregate(strategy, verdict.server_round, start, [(sum_update, total_weight)], aggregate=True)
        except AggregationError as exc:
            verdict.problems.append(f"model: the strategy does not aggregate the unmasked mean ({exc})")
            return
        assert result is not None
        self._compare_model(index, record, result, verdict)

    def _published_after(self, index: int) -> ModelRead:
        """The model published after round ``index`` (the next round's start model, or the final one)."""
        if index + 1 < len(self.rounds):
            following = self.rounds[index + 1]
            return self._model(following.get("start_model_ref") or {}, int(following.get("round", index + 2)))
        return self._final_model()

    def _final_model(self) -> ModelRead:
        ref = self.document.get("final_model_ref")
        if not ref:
            return ModelRead(None, "no final model recorded")
        return self._model(ref, int(self.recorded_config.get("rounds") or len(self.rounds)) + 1)

    # ------------------------------------------------------------ models, checkpoint, foreign records

    def _model(self, ref_wire: dict[str, Any], server_round: int) -> ModelRead:
        try:
            ref = ModelRef.from_wire(ref_wire)
        except ProtocolError as exc:
            return ModelRead(None, f"unreadable model reference ({exc})")
        key = (ref.topic, ref.partition, ref.start_offset, ref.end_offset, server_round)
        if key not in self._models:
            try:
                records = self.source.records(ref.topic, ref.partition, ref.start_offset, ref.end_offset + 1)
                self._models[key] = assemble_model(records, ref, session_id=self.session_id,
                                                   server_round=server_round, server_key=self.server_key)
            except MissingRecords as exc:
                self._models[key] = ModelRead(None, str(exc))
        return self._models[key]

    def _check_checkpoint(self, checkpoint: dict[str, Any], by_round: dict[int, RoundVerdict]) -> None:
        completed = checkpoint.get("completed_round")
        verdict = by_round.get(completed) if isinstance(completed, int) else None
        if verdict is None or not isinstance(completed, int):
            self.notes.append(f"the checkpoint is of round {completed!r}, which the history does not have")
            return
        record = self.rounds[completed - 1]
        stopped = (record.get("update_offsets") or {}).get("to")
        resumes = {str(p): int(o) for p, o in (checkpoint.get("offsets") or {}).items()}
        for problem in offset_problems(stopped, resumes, what=f"round {completed}"):
            verdict.problems.append(f"checkpoint: a resume would start at the wrong offsets: {problem}")
        if checkpoint.get("weights_sha256") not in (None, record.get("model_sha256")):
            verdict.problems.append("checkpoint: its weights are not the round's model")

    def _scan_models_topic(self, by_round: dict[int, RoundVerdict]) -> None:
        refs = [r.get("start_model_ref") for r in self.rounds] + [self.document.get("final_model_ref")]
        parsed = []
        for ref in refs:
            try:
                parsed.append(ModelRef.from_wire(ref))
            except ProtocolError:
                continue
        if not parsed:
            return
        topic, partition = parsed[0].topic, parsed[0].partition
        listed = {d for ref in parsed for d in ref.record_digests}
        first, last_round = min(ref.start_offset for ref in parsed), max(by_round, default=0)
        try:
            for raw in self.source.records(topic, partition, first, self.source.end_offset(topic, partition)):
                claimed = self._claimed_round(raw)
                if claimed is None:
                    continue
                problem = self._foreign(raw, listed)
                if problem:
                    verdict = by_round.get(min(max(claimed, 1), last_round))
                    if verdict is not None:
                        verdict.problems.append(f"models topic: forged model record at {topic}[{partition}] offset "
                                                f"{raw.offset} claims round {claimed} ({problem})")
        except MissingRecords as exc:
            self.notes.append(f"models topic not scanned for forged records: {exc}")

    def _claimed_round(self, raw: RawRecord) -> int | None:
        """The round a model record claims, if it claims this session (header first; the value if no header)."""
        headers = raw.header_map()
        session, claimed = headers.get("fl.session"), headers.get("fl.round")
        if session is not None and claimed is not None:
            if session != self.session_id.encode():
                return None
            try:
                return int(claimed)
            except ValueError:
                return 0
        try:
            chunk = decode_chunk(raw.value)
        except ProtocolError:
            return None
        return chunk.server_round if chunk.session_id == self.session_id else None

    def _foreign(self, raw: RawRecord, listed: set[str]) -> str:
        value = raw.value or b""
        if self.server_key is not None:
            try:
                self.server_key.verify_model_record(raw.key, raw.header_map(), value)
            except ProtocolError as exc:
                return exc.reason
            return ""
        return "" if hashlib.sha256(value).hexdigest() in listed else "not a record the server listed"
