"""Session checkpoints: everything ``fl-server --resume`` needs, in one JSON file written atomically.

After every round the server writes ``<history-dir>/checkpoints/<session>.json``: the global
weights (the same dtype/shape/base64 codec as the wire, never pickle), the round just completed,
the model's architecture, compile settings and data spec, the strategy's cross-round state, the
update-topic offsets the next round reads from, and the history document itself. The history
JSON is written after the checkpoint, so a crash between the two leaves a checkpoint that is
at least as new as the history, and resuming rewrites the history from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.codec import CodecError, decode_array, encode_array, weights_digest
from common.safe_json import MiB, read_json_file
from fl_server.history import MAX_HISTORY_BYTES, utc_now, write_json_atomic

CHECKPOINT_FORMAT = "fl-checkpoint/1"
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "session_id": self.session_id,
            "completed_round": self.completed_round,
            "saved_at": utc_now(),
            "weights_sha256": self.weights_sha256,
            "weights": [encode_array(w) for w in self.weights],
            "model": self.model,
            "strategy_state": {k: [encode_array(a) for a in v] for k, v in self.strategy_state.items()},
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
        except (KeyError, TypeError, ValueError, AttributeError, CodecError) as exc:
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
    write_json_atomic(path, checkpoint.to_wire())


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
    checkpoint = Checkpoint.from_wire(document)
    if checkpoint.session_id != session_id:
        raise CheckpointError(f"{path} belongs to session {checkpoint.session_id}, not {session_id}")
    if history.get("status") == "completed":
        raise CheckpointError(f"session {session_id} already completed; nothing to resume")
    return checkpoint, path
