"""The aggregation plane's messages and their signatures (pure: JSON and HMAC, no I/O but the key file).

With ``fl-server --aggregators K`` the coordinator no longer reads node updates; K ``fl-aggregator`` workers
do, in a Kafka consumer group over the updates topic. Two small topics connect them:

* ``<updates>.aggregation-control`` (coordinator -> workers): ``open`` (a round's participants, their declared
  samples, the update layout, the sample cap) and ``close`` (stop folding round r; the accepted set the
  coordinator knows, for the workers' logs).
* ``<updates>.aggregation-results`` (workers -> coordinator): ``assign`` (which partitions a worker owns now),
  ``verdict`` (one per update judged: node, round, digest, samples, accepted or the reason), ``partial`` (one
  per partition per round: the nodes folded, total weight, offsets covered, rejection counts, the sum's
  digest) and ``sum`` records (the partial's float64 sum arrays, chunked with the update codec).

Every record carries ``fl.agg`` (its type) and ``fl.agg_mac``: HMAC-SHA256 with the aggregation key (a
32-byte secret shared by the coordinator and its workers; ``--aggregator-key``) over ``"fl-aggregation/1"``,
the type, the Kafka key and the exact value bytes, length-prefixed. A record without a valid MAC is refused
with ``ProtocolError`` (``unsigned``, ``bad_signature``); values are parsed with the guarded JSON reader.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.wire.codec import ArraySpec, validate_spec
from common.wire.errors import ProtocolError
from common.wire.integrity import encode_fields
from common.wire.protocol import check_node_id, check_session_id
from common.wire.safe_json import loads_untrusted

TYPE_HEADER = "fl.agg"
MAC_HEADER = "fl.agg_mac"
_CONTEXT = b"fl-aggregation/1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # an open message lists every participant: 10,000 nodes fit easily
MIN_KEY_BYTES = 16
CONTROL_SUFFIX = ".aggregation-control"
RESULTS_SUFFIX = ".aggregation-results"
VERSION = 1
SHA256_HEX_CHARS = 64


def control_topic(updates_topic: str) -> str:
    return updates_topic + CONTROL_SUFFIX


def results_topic(updates_topic: str) -> str:
    return updates_topic + RESULTS_SUFFIX


class AggregationKey:
    """The secret the coordinator and its aggregators share: signs and checks every aggregation-plane record."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the aggregation key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def load(cls, path: Path) -> AggregationKey:
        """A file holding the key as hex (``openssl rand -hex 32 > aggregation.key``)."""
        try:
            text = Path(path).read_text(encoding="ascii")[:4096].strip()
            return cls(bytes.fromhex(text))
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the aggregation key ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: the aggregation key must be hex, at least {MIN_KEY_BYTES} bytes ({exc})") \
                from None

    def _mac(self, kind: str, record_key: bytes, value: bytes) -> bytes:
        return hmac.new(self._key, encode_fields(_CONTEXT, kind.encode(), record_key, value), hashlib.sha256).digest()

    def headers(self, kind: str, record_key: bytes, value: bytes) -> list[tuple[str, bytes]]:
        return [(TYPE_HEADER, kind.encode()), (MAC_HEADER, self._mac(kind, record_key, value).hex().encode())]

    def verify(self, record_key: bytes | None, headers: Mapping[str, bytes], value: bytes | None) -> str:
        """The record's type if its MAC verifies; ``ProtocolError`` otherwise."""
        kind_raw, mac_raw = headers.get(TYPE_HEADER), headers.get(MAC_HEADER)
        if kind_raw is None or mac_raw is None:
            raise ProtocolError("unsigned", "aggregation record without fl.agg/fl.agg_mac headers")
        try:
            kind, mac = kind_raw.decode("ascii"), bytes.fromhex(mac_raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("bad_signature", "aggregation record headers are not ASCII/hex") from None
        if not hmac.compare_digest(mac, self._mac(kind, record_key or b"", value or b"")):
            raise ProtocolError("bad_signature", f"aggregation {kind[:20]!r} record MAC does not verify")
        return kind


# ------------------------------------------------------------------ field checks


def _get(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError("bad_schema", f"{what}: field {name!r} is missing or has the wrong type")
    return value


def _count(obj: dict[str, Any], name: str, what: str, low: int = 0) -> int:
    value = _get(obj, name, int, what)
    if not low <= value <= 1 << 62:
        raise ProtocolError("bad_schema", f"{what}: {name} {value} out of range")
    return int(value)


def _sha(value: object, what: str) -> str:
    if not (isinstance(value, str) and len(value) == SHA256_HEX_CHARS
            and all(c in "0123456789abcdef" for c in value)):
        raise ProtocolError("bad_schema", f"{what}: not a SHA-256 hex digest")
    return value


def _header(obj: object, kind: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("v") != VERSION or obj.get("type") != kind:
        raise ProtocolError("bad_schema", f"not a version {VERSION} aggregation {kind!r} message")
    return obj


def _counts(obj: object, what: str) -> dict[str, int]:
    if not isinstance(obj, dict) or len(obj) > 256:
        raise ProtocolError("bad_schema", f"{what}: counts must be an object of at most 256 reasons")
    out: dict[str, int] = {}
    for reason, count in obj.items():
        if not (isinstance(reason, str) and len(reason) <= 64 and isinstance(count, int)
                and not isinstance(count, bool) and count >= 0):
            raise ProtocolError("bad_schema", f"{what}: bad count {reason!r:.40}")
        out[reason] = count
    return out


def decode(value: bytes | None, kind: str) -> dict[str, Any]:
    if value is None:
        raise ProtocolError("not_json", "empty aggregation record")
    return _header(loads_untrusted(value, max_bytes=MAX_MESSAGE_BYTES, what=f"aggregation {kind}"), kind)


def encode(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, **body}, separators=(",", ":"), sort_keys=True).encode()


# ------------------------------------------------------------------ messages


@dataclass(frozen=True)
class RoundOpen:
    """Coordinator -> workers: judge round ``server_round``'s updates against this."""

    session_id: str
    server_round: int
    declared_samples: dict[str, int]  # participant -> samples declared at connect
    specs: tuple[ArraySpec, ...]
    num_partitions: int
    sample_cap: int | None = None  # --max-node-weight, in samples
    max_record_bytes: int = 4 * 1024 * 1024

    kind = "open"

    def to_value(self) -> bytes:
        return encode(self.kind, {
            "session_id": self.session_id, "round": self.server_round, "participants": self.declared_samples,
            "specs": [[s.dtype, list(s.shape)] for s in self.specs], "partitions": self.num_partitions,
            "sample_cap": self.sample_cap, "max_record_bytes": self.max_record_bytes})

    @classmethod
    def from_value(cls, value: bytes | None) -> RoundOpen:
        obj = decode(value, cls.kind)
        what = "open"
        participants = _get(obj, "participants", dict, what)
        declared = {check_node_id(n): int(s) for n, s in participants.items()
                    if isinstance(s, int) and not isinstance(s, bool) and s >= 0}
        if len(declared) != len(participants):
            raise ProtocolError("bad_schema", "open: participants must map node ids to sample counts")
        specs = []
        for entry in _get(obj, "specs", list, what):
            if not isinstance(entry, list) or len(entry) != 2:
                raise ProtocolError("bad_schema", "open: a spec is [dtype, shape]")
            specs.append(validate_spec(entry[0], entry[1]))
        cap = obj.get("sample_cap")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise ProtocolError("bad_schema", "open: sample_cap must be a positive int or null")
        return cls(check_session_id(obj.get("session_id")), _count(obj, "round", what, 1), declared, tuple(specs),
                   _count(obj, "partitions", what, 1), cap, _count(obj, "max_record_bytes", what, 1))


@dataclass(frozen=True)
class RoundClose:
    """Coordinator -> workers: round ``server_round`` takes no more updates; publish your partials."""

    session_id: str
    server_round: int
    accepted: dict[str, str]  # node -> sha256 of the updates the coordinator has verdicts for

    kind = "close"

    def to_value(self) -> bytes:
        return encode(self.kind, {"session_id": self.session_id, "round": self.server_round,
                                  "accepted": self.accepted})

    @classmethod
    def from_value(cls, value: bytes | None) -> RoundClose:
        obj = decode(value, cls.kind)
        accepted = {check_node_id(n): _sha(d, "close") for n, d in _get(obj, "accepted", dict, "close").items()}
        return cls(check_session_id(obj.get("session_id")), _count(obj, "round", "close", 1), accepted)


@dataclass(frozen=True)
class Assignment:
    """Worker -> coordinator: the partitions ``aggregator`` owns since its ``seq``-th (re)assignment."""

    aggregator: str
    seq: int
    partitions: tuple[int, ...]

    kind = "assign"

    def to_value(self) -> bytes:
        return encode(self.kind, {"aggregator": self.aggregator, "seq": self.seq, "partitions": list(self.partitions)})

    @classmethod
    def from_value(cls, value: bytes | None) -> Assignment:
        obj = decode(value, cls.kind)
        partitions = _get(obj, "partitions", list, "assign")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 1 << 20 for p in partitions):
            raise ProtocolError("bad_schema", "assign: partitions must be non-negative ints")
        return cls(check_node_id(obj.get("aggregator")), _count(obj, "seq", "assign"), tuple(sorted(set(partitions))))


@dataclass(frozen=True)
class Verdict:
    """Worker -> coordinator: what became of one node's update (small: no weights)."""

    session_id: str
    server_round: int
    aggregator: str
    partition: int
    node_id: str
    num_samples: int
    weight: int  # num_samples after --max-node-weight's cap: what the partial sum weighs it by
    sha256: str  # weights_digest of the update ("" when it was refused before it could be assembled)
    accepted: bool
    reason: str = ""
    records: tuple[tuple[int, int], ...] = ()  # (partition, offset) of its chunks

    kind = "verdict"

    def to_value(self) -> bytes:
        return encode(self.kind, {
            "session_id": self.session_id, "round": self.server_round, "aggregator": self.aggregator,
            "partition": self.partition, "node": self.node_id, "num_samples": self.num_samples,
            "weight": self.weight, "sha256": self.sha256, "accepted": self.accepted, "reason": self.reason,
            "records": [list(r) for r in self.records]})

    @classmethod
    def from_value(cls, value: bytes | None) -> Verdict:
        obj = decode(value, cls.kind)
        what = "verdict"
        accepted = _get(obj, "accepted", bool, what)
        reason = _get(obj, "reason", str, what)[:64]
        records = []
        for entry in _get(obj, "records", list, what):
            if not (isinstance(entry, list) and len(entry) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in entry)):
                raise ProtocolError("bad_schema", "verdict: records are [partition, offset] pairs")
            records.append((int(entry[0]), int(entry[1])))
        sha = obj.get("sha256")
        return cls(check_session_id(obj.get("session_id")), _count(obj, "round", what, 1),
                   check_node_id(obj.get("aggregator")), _count(obj, "partition", what),
                   check_node_id(obj.get("node")), _count(obj, "num_samples", what),
                   _count(obj, "weight", what), _sha(sha, what) if accepted or sha else "", accepted,
                   "" if accepted else (reason or "rejected"), tuple(records))


@dataclass(frozen=True)
class PartialHeader:
    """Worker -> coordinator: one partition's share of round ``server_round`` (its sum follows as ``sum`` records)."""

    session_id: str
    server_round: int
    aggregator: str
    partition: int
    from_offset: int  # the partition's records this partial covers: [from_offset, to_offset)
    to_offset: int
    nodes: dict[str, tuple[int, str]]  # node -> (weight, sha256) folded into the sum
    total_weight: int
    sum_sha256: str  # weights_digest of the float64 sum arrays ("" when no node was folded)
    num_chunks: int  # sum records that follow
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    ignored: int = 0

    kind = "partial"

    def to_value(self) -> bytes:
        return encode(self.kind, {
            "session_id": self.session_id, "round": self.server_round, "aggregator": self.aggregator,
            "partition": self.partition, "from_offset": self.from_offset, "to_offset": self.to_offset,
            "nodes": {n: [w, d] for n, (w, d) in self.nodes.items()}, "total_weight": self.total_weight,
            "sum_sha256": self.sum_sha256, "num_chunks": self.num_chunks, "rejected": self.rejected,
            "duplicates": self.duplicates, "ignored": self.ignored})

    @classmethod
    def from_value(cls, value: bytes | None) -> PartialHeader:
        obj = decode(value, cls.kind)
        what = "partial"
        nodes: dict[str, tuple[int, str]] = {}
        for node, entry in _get(obj, "nodes", dict, what).items():
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                    and not isinstance(entry[0], bool) and entry[0] >= 1):
                raise ProtocolError("bad_schema", "partial: nodes map to [weight, sha256]")
            nodes[check_node_id(node)] = (int(entry[0]), _sha(entry[1], what))
        total = _count(obj, "total_weight", what)
        sum_sha = obj.get("sum_sha256")
        return cls(check_session_id(obj.get("session_id")), _count(obj, "round", what, 1),
                   check_node_id(obj.get("aggregator")), _count(obj, "partition", what),
                   _count(obj, "from_offset", what), _count(obj, "to_offset", what), nodes, total,
                   _sha(sum_sha, what) if nodes else "", _count(obj, "num_chunks", what),
                   _counts(obj.get("rejected"), what), _count(obj, "duplicates", what), _count(obj, "ignored", what))
