"""Session checkpoints: everything ``fl-server --resume`` needs, written atomically after every round.

After every round the server writes ``<history-dir>/checkpoints/<session>.json`` and, next to it,
``<session>.r<round>.npz`` (format ``fl-checkpoint/2``): the global weights and the strategy's arrays
as raw little-endian arrays in an uncompressed ``.npz`` (read back with ``allow_pickle=False``; only
the numeric dtypes of the wire codec are accepted), and in the JSON the round just completed,
the model's architecture, compile settings and data spec, the strategy's cross-round state, the
update-topic offsets the next round reads from, and the history's summary document (each round without
its per-node fields; the full records are in ``<session>.rounds.jsonl``, appended before the checkpoint
is written). The history JSON is written after the checkpoint, so a crash between the two leaves a
checkpoint that is at least as new as the history, and resuming rewrites the history from it (and drops
detail lines past the checkpoint's round). The arrays file is
written (and fsynced) before the JSON that names it, and older arrays files are removed after.

``fl-checkpoint/1`` (weights base64 inside the JSON, ``Checkpoint.to_wire``) is still read.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_binary_file
from common.wire.codec import ALLOWED_DTYPES, decode_array, encode_array, weights_digest
from common.wire.safe_json import MiB, read_json_file
from fl_server.history import MAX_HISTORY_BYTES, utc_now, write_json_atomic

CHECKPOINT_FORMAT = "fl-checkpoint/1"
CHECKPOINT_FORMAT_ARRAYS = "fl-checkpoint/2"
MAX_CHECKPOINT_BYTES = 2048 * MiB  # weights travel base64 in the JSON: a 1 GiB model fits


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says why."""


@dataclass
class Checkpoint:
    session_id: str
    completed_round: int
    weights: list[np.ndarray]
    model: dict[str, Any]  # {"architecture": str, "compile": {...}, "data": {...}}
    history: dict[str, Any]
    strategy_state: dict[str, list[np.ndarray]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # updates-topic partition -> next offset to read

    @property
    def weights_sha256(self) -> str:
        return weights_digest(self.weights)

    def to_wire(self, *, with_arrays: bool = True) -> dict[str, Any]:
        """The ``fl-checkpoint/1`` document; ``with_arrays=False`` leaves the (costly) array encoding out."""
        return {
            "format": CHECKPOINT_FORMAT,
            "session_id": self.session_id,
            "completed_round": self.completed_round,
            "saved_at": utc_now(),
            "weights_sha256": self.weights_sha256,
            "weights": [encode_array(w) for w in self.weights] if with_arrays else [],
            "model": self.model,
            "strategy_state": ({k: [encode_array(a) for a in v] for k, v in self.strategy_state.items()}
                               if with_arrays else {}),
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "history": self.history,
        }

    @classmethod
    def from_wire(cls, doc: Any) -> Checkpoint:
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a checkpoint (format must be {CHECKPOINT_FORMAT!r})")
        try:
            weights = [decode_array(w) for w in doc["weights"]]
            state = {str(k): [decode_array(a) for a in v] for k, v in doc["strategy_state"].items()}
            offsets = {int(p): int(o) for p, o in doc["offsets"].items()}
            checkpoint = cls(
                session_id=str(doc["session_id"]),
                completed_round=int(doc["completed_round"]),
                weights=weights,
                model=dict(doc["model"]),
                history=dict(doc["history"]),
                strategy_state=state,
                offsets=offsets,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # ProtocolError is a ValueError
            raise CheckpointError(f"damaged checkpoint ({exc!r:.200})") from exc
        if checkpoint.weights_sha256 != doc.get("weights_sha256"):
            raise CheckpointError("weights do not match the recorded weights_sha256")
        rounds = [r.get("round") for r in checkpoint.history.get("rounds", [])]
        if rounds != list(range(1, checkpoint.completed_round + 1)):
            raise CheckpointError(f"history rounds {rounds} do not run 1..{checkpoint.completed_round}")
        return checkpoint


def checkpoint_path(history_dir: Path, session_id: str) -> Path:
    return Path(history_dir) / "checkpoints" / f"{session_id}.json"


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write the arrays file, then the JSON that names it (atomically), then drop older arrays files."""
    path = Path(path)
    arrays_name = f"{path.stem}.r{checkpoint.completed_round}.npz"
    arrays: dict[str, np.ndarray] = {f"w{i}": _little_endian(w) for i, w in enumerate(checkpoint.weights)}
    state_keys: dict[str, list[str]] = {}
    for index, (name, values) in enumerate(sorted(checkpoint.strategy_state.items())):
        state_keys[name] = [f"s{index}_{j}" for j in range(len(values))]
        arrays.update({key: _little_endian(v) for key, v in zip(state_keys[name], values, strict=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_binary_file(path.parent / arrays_name) as handle:
        np.savez(handle, allow_pickle=False, **arrays)
    document = checkpoint.to_wire(with_arrays=False)
    document.update(format=CHECKPOINT_FORMAT_ARRAYS, weights={"file": arrays_name, "count": len(checkpoint.weights)},
                    strategy_state=state_keys)
    write_json_atomic(path, document)
    for old in path.parent.glob(f"{path.stem}.r*.npz"):
        if old.name != arrays_name:
            old.unlink(missing_ok=True)


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _read_arrays(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A ``fl-checkpoint/2`` document with its arrays read back in, in the ``fl-checkpoint/1`` shape."""
    try:
        name = str(document["weights"]["file"])
        count = int(document["weights"]["count"])
        state_keys = {str(k): [str(x) for x in v] for k, v in document["strategy_state"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"damaged checkpoint ({exc!r:.200})") from exc
    if Path(name).name != name:
        raise CheckpointError(f"arrays file {name!r} must sit next to the checkpoint")
    try:
        # The handle is ours, not numpy's: np.load leaves the file it opened unclosed when the zip is damaged.
        with open(folder / name, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:
            def read(key: str) -> dict[str, Any]:
                array = arrays[key]
                if array.dtype.name not in ALLOWED_DTYPES:
                    raise CheckpointError(f"array {key} has dtype {array.dtype}, not one of the codec's")
                return encode_array(array)

            weights = [read(f"w{i}") for i in range(count)]
            state = {k: [read(key) for key in keys] for k, keys in state_keys.items()}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read the arrays file {name} ({exc!r:.200})") from exc
    return {**document, "format": CHECKPOINT_FORMAT, "weights": weights, "strategy_state": state}


def load_checkpoint_for(history_file: Path) -> tuple[Checkpoint, Path]:
    """The checkpoint of the session whose history is ``history_file`` (``history/<session>.json``)."""
    history_file = Path(history_file)
    try:
        history = read_json_file(history_file, max_bytes=MAX_HISTORY_BYTES)
        session_id = str(history["session_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ProtocolError is a ValueError
        raise CheckpointError(f"{history_file}: not a readable session history ({exc})") from exc
    path = checkpoint_path(history_file.parent, session_id)
    try:
        document = read_json_file(path, max_bytes=MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint (the session completed no round, or was run elsewhere)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    if isinstance(document, dict) and document.get("format") == CHECKPOINT_FORMAT_ARRAYS:
        document = _read_arrays(document, path.parent)
    checkpoint = Checkpoint.from_wire(document)
    if checkpoint.session_id != session_id:
        raise CheckpointError(f"{path} belongs to session {checkpoint.session_id}, not {session_id}")
    if history.get("status") == "completed":
        raise CheckpointError(f"session {session_id} already completed; nothing to resume")
    return checkpoint, path
