"""Wire protocol shared by server and nodes (see docs/protocol.md for the full story).

Two transports, two kinds of payload:

* Socket.IO carries small JSON control messages: the node's hello (connect auth),
  ``start_round``, the node's ``fl_update`` acknowledgement and ``end_session``.
* Kafka carries weights. One Kafka record is one *chunk* of one layer::

      key     = sender id (node id, or "server" for the global model), UTF-8
      headers = fl.kind, fl.session, fl.round (routing hints only; the value is authoritative)
      value   = UTF-8 JSON object:
        {"v": 1, "kind": "update" | "model", "session_id": str, "round": int,
         "node_id": str, "num_samples": int, "layer": int, "num_layers": int,
         "dtype": str, "shape": [int, ...], "chunk": int, "num_chunks": int,
         "data": base64 of this chunk's slice of the layer's raw little-endian bytes}

  A layer whose bytes exceed the chunk size is split into ``num_chunks`` records with
  the same key, so they land on one partition in order; the receiver joins the slices.

Decoding untrusted input returns a value or raises ``ProtocolError`` with a reason tag.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import PROTOCOL_VERSION, SESSION_PROTOCOL_VERSION
from common.validation import require_in_interval, require_non_negative_finite, require_positive_int
from common.wire.codec import ArraySpec, array_to_bytes, b64decode, b64encode, validate_spec
from common.wire.errors import ProtocolError
from common.wire.safe_json import loads_untrusted

KIND_UPDATE = "update"
KIND_MODEL = "model"
SERVER_SENDER_ID = "server"

DEFAULT_CHUNK_BYTES = 512 * 1024  # raw bytes; ~700 KB once base64'd: below Kafka's 1 MiB default
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_LAYERS = 10_000
MAX_CHUNKS = 1 << 20
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
INSTANCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


# --------------------------------------------------------------------- field checks


def _is_finite_number(value: object) -> bool:
    """An int or float that is a finite float; a huge int (``float()`` overflows) is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _require(obj: dict[str, Any], name: str, kind: type, *, where: str) -> Any:
    value = obj.get(name)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = _is_finite_number(value)
    if not ok:
        raise ProtocolError("bad_schema", f"{where}: field {name!r} must be {kind.__name__}, got {value!r:.80}")
    return value


def _int_in(obj: dict[str, Any], name: str, low: int, high: int, *, where: str) -> int:
    value: int = _require(obj, name, int, where=where)
    if not low <= value <= high:
        raise ProtocolError("bad_schema", f"{where}: {name}={value} outside [{low}, {high}]")
    return value


def check_node_id(value: object) -> str:
    if not isinstance(value, str) or not NODE_ID_PATTERN.fullmatch(value) or value == SERVER_SENDER_ID:
        raise ProtocolError("bad_node_id", f"node id {value!r:.80} must match {NODE_ID_PATTERN.pattern}")
    return value


def check_session_id(value: object) -> str:
    if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
        raise ProtocolError("bad_schema", f"session id {value!r:.80} must match {SESSION_ID_PATTERN.pattern}")
    return value


# --------------------------------------------------------------------- Kafka weight chunks


@dataclass(frozen=True)
class WeightChunk:
    """One Kafka record's worth of weights: a slice of one layer of one sender's weights."""

    kind: str
    session_id: str
    server_round: int
    node_id: str
    num_samples: int
    layer_index: int
    num_layers: int
    spec: ArraySpec
    chunk_index: int
    num_chunks: int
    data: bytes = field(repr=False)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("fl.kind", self.kind.encode()),
            ("fl.session", self.session_id.encode()),
            ("fl.round", str(self.server_round).encode()),
        ]


def encode_chunk(chunk: WeightChunk) -> bytes:
    """Serialise a chunk to the JSON value of a Kafka record."""
    return json.dumps(
        {
            "v": PROTOCOL_VERSION,
            "kind": chunk.kind,
            "session_id": chunk.session_id,
            "round": chunk.server_round,
            "node_id": chunk.node_id,
            "num_samples": chunk.num_samples,
            "layer": chunk.layer_index,
            "num_layers": chunk.num_layers,
            "dtype": chunk.spec.dtype,
            "shape": list(chunk.spec.shape),
            "chunk": chunk.chunk_index,
            "num_chunks": chunk.num_chunks,
            "data": b64encode(chunk.data),
        },
        separators=(",", ":"),
    ).encode("utf-8")


def decode_chunk(value: bytes | None, *, max_record_bytes: int = MAX_RECORD_BYTES) -> WeightChunk:
    """Parse and validate an untrusted Kafka record value; raise ``ProtocolError``."""
    if value is None:
        raise ProtocolError("not_json", "empty record")
    obj = loads_untrusted(value, max_bytes=max_record_bytes, what="record")
    if not isinstance(obj, dict):
        raise ProtocolError("bad_schema", "record must be a JSON object")
    where = "weight chunk"
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {obj.get('v')!r:.20} is not {PROTOCOL_VERSION}")
    kind = obj.get("kind")
    if kind not in (KIND_UPDATE, KIND_MODEL):
        raise ProtocolError("bad_schema", f"unknown kind {kind!r:.40}")
    if kind == KIND_UPDATE:
        node_id = check_node_id(obj.get("node_id"))
    elif obj.get("node_id") == SERVER_SENDER_ID:
        node_id = SERVER_SENDER_ID
    else:
        raise ProtocolError("bad_schema", "model chunks must come from the server")
    num_layers = _int_in(obj, "num_layers", 1, MAX_LAYERS, where=where)
    num_chunks = _int_in(obj, "num_chunks", 1, MAX_CHUNKS, where=where)
    spec = validate_spec(obj.get("dtype"), obj.get("shape"))
    data = b64decode(obj.get("data"))
    if len(data) > spec.num_bytes:
        raise ProtocolError("bad_length", f"chunk of {len(data)} bytes is larger than its layer ({spec.num_bytes})")
    return WeightChunk(
        kind=kind,
        session_id=check_session_id(obj.get("session_id")),
        server_round=_int_in(obj, "round", 0, 1_000_000, where=where),
        node_id=node_id,
        num_samples=_int_in(obj, "num_samples", 0 if kind == KIND_MODEL else 1, 1 << 40, where=where),
        layer_index=_int_in(obj, "layer", 0, num_layers - 1, where=where),
        num_layers=num_layers,
        spec=spec,
        chunk_index=_int_in(obj, "chunk", 0, num_chunks - 1, where=where),
        num_chunks=num_chunks,
        data=data,
    )


def split_weights(
    weights: Sequence[np.ndarray],
    *,
    kind: str,
    session_id: str,
    server_round: int,
    node_id: str,
    num_samples: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[WeightChunk]:
    """Cut a list of layer arrays into chunks of at most ``chunk_bytes`` raw bytes each."""
    require_positive_int("chunk_bytes", chunk_bytes)
    for layer_index, array in enumerate(weights):
        spec, raw = array_to_bytes(array)
        num_chunks = max(1, math.ceil(len(raw) / chunk_bytes))
        for chunk_index in range(num_chunks):
            yield WeightChunk(
                kind=kind,
                session_id=session_id,
                server_round=server_round,
                node_id=node_id,
                num_samples=num_samples,
                layer_index=layer_index,
                num_layers=len(weights),
                spec=spec,
                chunk_index=chunk_index,
                num_chunks=num_chunks,
                data=raw[chunk_index * chunk_bytes : (chunk_index + 1) * chunk_bytes],
            )


# --------------------------------------------------------------------- Socket.IO control messages


@dataclass(frozen=True)
class RawRecord:
    """A Kafka record as the server's consumer hands it over. Key, headers and value are untrusted;
    partition and offset are the consumer's own bookkeeping (-1 when not from Kafka)."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int = -1
    offset: int = -1

    def header_map(self) -> dict[str, bytes]:
        return {name: value for name, value in self.headers if isinstance(value, bytes)}


@dataclass(frozen=True)
class Hello:
    """Sent by a node as Socket.IO connect ``auth``. ``proof`` (ts, nonce, mac) shows it holds its key."""

    node_id: str
    num_samples: int
    protocol: int = SESSION_PROTOCOL_VERSION
    proof: dict[str, Any] | None = None
    instance: str = ""  # random per node process: a reconnect of the same process may replace its old connection

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"node_id": self.node_id, "num_samples": self.num_samples, "protocol": self.protocol}
        if self.instance:
            wire["instance"] = self.instance
        return {**wire, **(self.proof or {})}

    @classmethod
    def from_wire(cls, obj: object) -> Hello:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_hello", "connect auth must be an object with node_id and num_samples")
        if obj.get("protocol") != SESSION_PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"protocol {obj.get('protocol')!r:.20} is not "
                                f"{SESSION_PROTOCOL_VERSION} (the node and the server are of different versions)")
        proof = {k: obj[k] for k in ("ts", "nonce", "mac", "challenge", "server_id") if k in obj}
        instance = obj.get("instance", "")
        if not (isinstance(instance, str) and len(instance) <= 64 and (not instance or INSTANCE_PATTERN.fullmatch(
                instance))):
            raise ProtocolError("bad_hello", "instance must be up to 64 letters, digits, '-' or '_'")
        return cls(
            node_id=check_node_id(obj.get("node_id")),
            num_samples=_int_in(obj, "num_samples", 1, 1 << 40, where="hello"),
            proof=proof or None,
            instance=instance,
        )


@dataclass(frozen=True)
class ModelRef:
    """Where the global model's weight chunks sit in Kafka (records in [start_offset, end_offset]).

    ``record_digests`` (SHA-256 of each record's value, hex) and ``model_sha256`` (``weights_digest``) let a
    node take exactly the server's records from a range anyone who can write the topic may have added to:
    they arrive over the Socket.IO channel, not through Kafka. Empty when a sender does not provide them."""

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    num_records: int
    record_digests: tuple[str, ...] = ()
    model_sha256: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "start_offset": self.start_offset,
            "end_offset": self.end_offset,
            "num_records": self.num_records,
        }
        if self.record_digests:
            wire["record_digests"] = list(self.record_digests)
        if self.model_sha256:
            wire["model_sha256"] = self.model_sha256
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> ModelRef:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "model reference must be an object")
        topic = _require(obj, "topic", str, where="model ref")
        start = _int_in(obj, "start_offset", 0, 1 << 62, where="model ref")
        num_records = _int_in(obj, "num_records", 1, MAX_CHUNKS, where="model ref")
        digests = obj.get("record_digests", [])
        if not (isinstance(digests, list) and (not digests or len(digests) == num_records)
                and all(_is_sha256_hex(d) for d in digests)):
            raise ProtocolError("bad_schema", "model ref: record_digests must list one SHA-256 (hex) per record")
        model_sha256 = obj.get("model_sha256", "")
        if model_sha256 and not _is_sha256_hex(model_sha256):
            raise ProtocolError("bad_schema", "model ref: model_sha256 must be a SHA-256 in hex")
        return cls(
            topic=topic,
            partition=_int_in(obj, "partition", 0, 1 << 20, where="model ref"),
            start_offset=start,
            end_offset=_int_in(obj, "end_offset", start, 1 << 62, where="model ref"),
            num_records=num_records,
            record_digests=tuple(digests),
            model_sha256=model_sha256,
        )


def _is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def model_spec_digest(architecture: str, compile_spec: dict[str, Any], data: dict[str, Any]) -> str:
    """SHA-256 (hex) of a model's architecture, compile settings and data spec, as canonical JSON: what a
    ``start_round`` names instead of carrying them every round."""
    canonical = json.dumps({"architecture": architecture, "compile": compile_spec, "data": data}, sort_keys=True,
                           separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """``fl_model_spec`` (server -> node, once per session; also the reply to a node's ``fl_model_spec`` call):
    the session's architecture, compile settings and data spec, which ``start_round`` names by digest."""

    architecture: str
    compile: dict[str, Any]
    data: dict[str, Any]

    @property
    def digest(self) -> str:
        return model_spec_digest(self.architecture, self.compile, self.data)

    def to_wire(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "compile": self.compile, "data": self.data,
                "spec_sha256": self.digest}

    @classmethod
    def from_wire(cls, obj: object) -> ModelSpec:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "model spec must be an object")
        compile_spec, data = obj.get("compile"), obj.get("data")
        if not isinstance(compile_spec, dict) or not isinstance(data, dict):
            raise ProtocolError("bad_schema", "model spec: compile and data must be objects")
        spec = cls(_require(obj, "architecture", str, where="model spec"), compile_spec, data)
        try:
            digest = spec.digest
        except (TypeError, ValueError) as exc:  # e.g. a number JSON cannot write back (NaN)
            raise ProtocolError("bad_schema", f"model spec cannot be hashed: {exc}") from None
        if obj.get("spec_sha256", digest) != digest:
            raise ProtocolError("bad_schema", "model spec: spec_sha256 does not match its contents")
        return spec


@dataclass(frozen=True)
class ModelMessage:
    """The global model as the server announces it: architecture, compile settings, weights reference,
    and the data spec (``common.data.dataspec``: tabular schema or image shape) every node encodes its data with.

    ``spec_sha256`` (``model_spec_digest``) names the architecture, compile settings and data spec. A *slim*
    message (``slim_wire``, what ``start_round`` carries) sends only the digest and the weights reference; the
    node takes the rest from the ``ModelSpec`` it was sent once per session (``with_spec``). A slim message
    parses with empty architecture, compile and data (``is_slim``)."""

    architecture: str
    compile: dict[str, Any]
    weights: ModelRef
    data: dict[str, Any]
    spec_sha256: str = ""

    @property
    def is_slim(self) -> bool:
        return not self.architecture

    def to_wire(self) -> dict[str, Any]:
        if self.is_slim:
            return self.slim_wire()
        wire = {"architecture": self.architecture, "compile": self.compile, "weights": self.weights.to_wire(),
                "data": self.data}
        if self.spec_sha256:
            wire["spec_sha256"] = self.spec_sha256
        return wire

    def slim_wire(self) -> dict[str, Any]:
        """The weights reference and the spec's digest only (the spec itself travels once per session)."""
        return {"weights": self.weights.to_wire(), "spec_sha256": self.spec_sha256 or model_spec_digest(
            self.architecture, self.compile, self.data)}

    def with_spec(self, spec: ModelSpec) -> ModelMessage:
        """The full message of a slim one, from the session's spec (which must be the one it names)."""
        if spec.digest != self.spec_sha256:
            raise ProtocolError("bad_schema", "model spec does not match the digest start_round names")
        return ModelMessage(spec.architecture, spec.compile, self.weights, spec.data, self.spec_sha256)

    @classmethod
    def from_wire(cls, obj: object) -> ModelMessage:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "model must be an object")
        spec_sha256 = obj.get("spec_sha256", "")
        if spec_sha256 and not _is_sha256_hex(spec_sha256):
            raise ProtocolError("bad_schema", "model.spec_sha256 must be a SHA-256 in hex")
        weights = ModelRef.from_wire(obj.get("weights"))
        if spec_sha256 and "architecture" not in obj:  # slim: the node completes it from the session's spec
            return cls("", {}, weights, {}, spec_sha256)
        compile_spec = obj.get("compile")
        if not isinstance(compile_spec, dict):
            raise ProtocolError("bad_schema", "model.compile must be an object")
        data = obj.get("data")
        if not isinstance(data, dict):
            raise ProtocolError("bad_schema", "model.data must be an object")
        return cls(
            architecture=_require(obj, "architecture", str, where="model"),
            compile=compile_spec,
            weights=weights,
            data=data,
            spec_sha256=spec_sha256,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings of one round. ``proximal_mu`` > 0 adds FedProx's ``mu/2 * ||w - w_global||^2``
    to the node's loss. ``dp_clip_norm`` > 0 asks for local differential privacy: the node clips its update's
    delta to that L2 norm and adds N(0, ``dp_noise_stddev``^2) per coordinate before publishing.
    ``dp_sgd_clip`` > 0 asks for record-level DP-SGD: the node clips each example's gradient to that L2 norm,
    adds N(0, (``dp_sgd_noise_multiplier`` * clip)^2) to their sum and reports its epsilon at ``dp_delta``
    (in [0, 1); 0 when not sent). The optional fields are absent on the wire when 0 (and read as 0 when
    absent). ``federated_eval`` (absent when false) asks the node to evaluate the global model it receives on
    its local test split before training, and to report that in its acknowledgement (``UpdateAck.evaluation``).
    ``personal_layers`` (absent when 0; FedPer) is how many of the model's last layers with weights stay on each
    node: the node trains its own copy, and publishes only the other layers' weights."""

    epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0
    dp_clip_norm: float = 0.0
    dp_noise_stddev: float = 0.0
    dp_sgd_clip: float = 0.0
    dp_sgd_noise_multiplier: float = 0.0
    dp_delta: float = 0.0
    federated_eval: bool = False
    personal_layers: int = 0

    def __post_init__(self) -> None:
        for name in OPTIONAL_TRAIN_FIELDS:
            require_non_negative_finite(name, getattr(self, name))
        require_in_interval("dp_delta", self.dp_delta, 0, 1, high_open=True)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size,
                                "learning_rate": self.learning_rate}
        wire.update({name: getattr(self, name) for name in OPTIONAL_TRAIN_FIELDS if getattr(self, name) > 0})
        if self.federated_eval:
            wire["federated_eval"] = True
        if self.personal_layers:
            wire["personal_layers"] = self.personal_layers
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> TrainConfig:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "config must be an object")
        rate = _require(obj, "learning_rate", float, where="config")
        optional = {}
        for name in OPTIONAL_TRAIN_FIELDS:
            value = float(_require(obj, name, float, where="config")) if name in obj else 0.0
            if value < 0:
                raise ProtocolError("bad_schema", f"config: {name}={value} must be >= 0")
            optional[name] = value
        if optional["dp_delta"] >= 1:
            raise ProtocolError("bad_schema", f"config: dp_delta={optional['dp_delta']} must be below 1")
        federated_eval = "federated_eval" in obj and bool(_require(obj, "federated_eval", bool, where="config"))
        return cls(
            epochs=_int_in(obj, "epochs", 1, 10_000, where="config"),
            batch_size=_int_in(obj, "batch_size", 1, 1 << 20, where="config"),
            learning_rate=float(rate),
            federated_eval=federated_eval,
            personal_layers=_int_in(obj, "personal_layers", 1, 1000, where="config") if "personal_layers" in obj else 0,
            **optional,
        )


OPTIONAL_TRAIN_FIELDS = ("proximal_mu", "dp_clip_norm", "dp_noise_stddev", "dp_sgd_clip", "dp_sgd_noise_multiplier",
                         "dp_delta")


@dataclass(frozen=True)
class StartRound:
    """Server -> node: train on this model for this round.

    ``secure_aggregation`` (absent on the wire when None) is the round's secure-aggregation spec; it is only
    checked to be an object here and parsed by the node (``common.secagg.round.SecureRoundSpec``)."""

    session_id: str
    server_round: int
    config: TrainConfig
    model: ModelMessage
    secure_aggregation: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "session_id": self.session_id,
            "round": self.server_round,
            "config": self.config.to_wire(),
            "model": self.model.to_wire(),
        }
        if self.secure_aggregation is not None:
            wire["secure_aggregation"] = self.secure_aggregation
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> StartRound:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "start_round must be an object")
        return cls(
            session_id=check_session_id(obj.get("session_id")),
            server_round=_int_in(obj, "round", 1, 1_000_000, where="start_round"),
            config=TrainConfig.from_wire(obj.get("config")),
            model=ModelMessage.from_wire(obj.get("model")),
            secure_aggregation=_optional_object(obj, "secure_aggregation", where="start_round"),
        )


def _optional_object(obj: dict[str, Any], name: str, *, where: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, dict):
        raise ProtocolError("bad_schema", f"{where}: {name} must be an object")
    return value


@dataclass(frozen=True)
class UpdateAck:
    """Node -> server (``fl_update``): I published my update for this round.

    ``evaluation`` (absent on the wire when None; only when the round asked for ``federated_eval`` and the node
    holds a local test split) is the node's evaluation of the round's global model, before training, on its own
    test rows: ``{"num_samples": n, "metrics": {...}}``."""

    session_id: str
    server_round: int
    node_id: str
    num_samples: int
    num_records: int
    metrics: dict[str, float | None]  # None: not finite at the node (a diverged loss), sent as null
    timings_s: dict[str, float | None]
    evaluation: LocalEvaluation | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "session_id": self.session_id,
            "round": self.server_round,
            "node_id": self.node_id,
            "num_samples": self.num_samples,
            "num_records": self.num_records,
            "metrics": self.metrics,
            "timings_s": self.timings_s,
        }
        if self.evaluation is not None:
            wire["evaluation"] = self.evaluation.to_wire()
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> UpdateAck:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "fl_update must be an object")
        return cls(
            session_id=check_session_id(obj.get("session_id")),
            server_round=_int_in(obj, "round", 1, 1_000_000, where="fl_update"),
            node_id=check_node_id(obj.get("node_id")),
            num_samples=_int_in(obj, "num_samples", 1, 1 << 40, where="fl_update"),
            num_records=_int_in(obj, "num_records", 1, MAX_CHUNKS, where="fl_update"),
            metrics=_float_map(obj.get("metrics"), "metrics"),
            timings_s=_float_map(obj.get("timings_s"), "timings_s"),
            evaluation=LocalEvaluation.from_wire(obj["evaluation"]) if obj.get("evaluation") is not None else None,
        )


@dataclass(frozen=True)
class LocalEvaluation:
    """A node's evaluation of a global model on its own local test rows (federated evaluation).

    ``personalized`` (FedPer sessions; absent when empty) is the same evaluation with the node's own personal
    layers in place of the global model's."""

    num_samples: int
    metrics: dict[str, float | None]
    personalized: dict[str, float | None] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"num_samples": self.num_samples, "metrics": dict(self.metrics)}
        if self.personalized:
            wire["personalized"] = dict(self.personalized)
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> LocalEvaluation:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "fl_update: evaluation must be an object")
        return cls(
            num_samples=_int_in(obj, "num_samples", 1, 1 << 40, where="evaluation"),
            metrics=_float_map(obj.get("metrics"), "evaluation.metrics"),
            personalized=_float_map(obj.get("personalized", {}), "evaluation.personalized"),
        )


@dataclass(frozen=True)
class EndSession:
    """Server -> node: the session is over; here is the final model."""

    session_id: str
    rounds_completed: int
    model: ModelMessage

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "rounds": self.rounds_completed, "model": self.model.to_wire()}

    @classmethod
    def from_wire(cls, obj: object) -> EndSession:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "end_session must be an object")
        return cls(
            session_id=check_session_id(obj.get("session_id")),
            rounds_completed=_int_in(obj, "rounds", 0, 1_000_000, where="end_session"),
            model=ModelMessage.from_wire(obj.get("model")),
        )


def _float_map(obj: object, where: str, max_items: int = 64) -> dict[str, float | None]:
    """Metric name -> finite number, or null for a value that was not finite where it was measured (a NaN loss)."""
    if not isinstance(obj, dict) or len(obj) > max_items:
        raise ProtocolError("bad_schema", f"{where} must be an object of at most {max_items} numbers")
    out: dict[str, float | None] = {}
    for key in obj:
        if not isinstance(key, str) or len(key) > 64:
            raise ProtocolError("bad_schema", f"{where} keys must be short strings")
        out[key] = None if obj[key] is None else float(_require(obj, key, float, where=where))
    return out


@dataclass(frozen=True)
class NodeRefusal:
    """Node -> server (``fl_refuse``): my data cannot take part (e.g. a column the schema needs is missing)."""

    session_id: str
    server_round: int
    node_id: str
    reason: str
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "round": self.server_round, "node_id": self.node_id,
                "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_wire(cls, obj: object) -> NodeRefusal:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_schema", "fl_refuse must be an object")
        reason = _require(obj, "reason", str, where="fl_refuse")
        detail = _require(obj, "detail", str, where="fl_refuse")
        return cls(
            session_id=check_session_id(obj.get("session_id")),
            server_round=_int_in(obj, "round", 0, 1_000_000, where="fl_refuse"),
            node_id=check_node_id(obj.get("node_id")),
            reason=reason[:64],
            detail=detail[:500],
        )
