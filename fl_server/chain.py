"""The history's hash chain: each round record names the digest of the one before, and the server signs it.

Pure (hashing and the ``cryptography`` signature only). ``docs/protocol.md`` ("The round chain") specifies it:

* ``canonical_json(value)``: the value as standard JSON (non-finite numbers as null, as the history file holds
  them), re-read and written with sorted keys, no whitespace, ASCII only, floats as Python's ``json`` writes
  them (the shortest text that reads back to the same float).
* ``round_digest(record)``: SHA-256 (hex) of the canonical JSON of a round record without its
  ``round_digest`` and ``server_signature`` fields.
* Round 1's ``prev_round_digest`` is ``genesis_digest``: the digest of the session id and the settings that
  define the session (``SESSION_SETTINGS`` and the resolved ``strategy_params``), so that editing the
  session's settings in the history breaks the chain too. Every later round's is the previous round's
  ``round_digest``.
* ``server_signature``: Ed25519 over ``"fl-round/1"`` and the digest (``common.wire.server_key``).

``chain_problems`` checks a list of round records and names every round whose link is broken.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.wire.safe_json import finite_or_null

if TYPE_CHECKING:  # fl-history reads histories without loading the cryptography package
    from common.wire.server_key import ServerPublicKey, ServerSigner

CHAIN_FORMAT = "fl-chain/1"
UNSIGNED_FIELDS = ("round_digest", "server_signature")  # what the digest cannot cover: itself and its signature


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value hashes as, however the file it came from was laid out."""
    clean, _ = finite_or_null(value)
    standard = json.loads(json.dumps(clean, allow_nan=False))  # tuples -> lists, non-text keys -> text
    return json.dumps(standard, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis_digest(session_id: str, config: dict[str, Any]) -> str:
    """The ``prev_round_digest`` of a session's first round."""
    from fl_server.config import SESSION_SETTINGS  # the settings pull in the privacy planner: not for fl-history

    # The settings the history recorded: a setting added in a later version (absent from an older history)
    # is not part of that history's chain; removing a recorded one changes the digest.
    settings = {name: config.get(name) for name in (*SESSION_SETTINGS, "strategy_params") if name in config}
    return sha256_hex(canonical_json({"format": CHAIN_FORMAT, "session_id": session_id, "settings": settings}))


def round_digest(record: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in record.items() if k not in UNSIGNED_FIELDS}))


def link_round(record: dict[str, Any], prev_digest: str, signer: ServerSigner | None) -> dict[str, Any]:
    """``record`` (a round's wire dict) chained to ``prev_digest``, with its digest and, with a key, signature."""
    linked = {**record, "prev_round_digest": prev_digest}
    digest = round_digest(linked)
    return {**linked, "round_digest": digest, "server_signature": signer.sign_round(digest) if signer else ""}


@dataclass(frozen=True)
class ChainProblem:
    server_round: int
    kind: str  # edited | broken_link | unsigned | bad_signature | not_in_order
    detail: str


def chain_problems(rounds: Sequence[dict[str, Any]], *, session_id: str, config: dict[str, Any],
                   key: ServerPublicKey | None) -> list[ChainProblem]:
    """Every round whose digest, link or signature does not hold (``key`` None: signatures are not checked)."""
    problems: list[ChainProblem] = []
    expected_prev = genesis_digest(session_id, config)
    for index, record in enumerate(rounds):
        server_round = record.get("round")
        number = server_round if isinstance(server_round, int) and not isinstance(server_round, bool) else index + 1
        if server_round != index + 1:
            problems.append(ChainProblem(number, "not_in_order", f"record {index} is round {server_round!r}, "
                                                                 f"expected {index + 1}"))
        recorded = record.get("round_digest")
        digest = round_digest(record)
        if recorded != digest:
            problems.append(ChainProblem(number, "edited", "the record does not match its round_digest: it was "
                                                           "changed after the server wrote it"))
        prev = record.get("prev_round_digest")
        if prev != expected_prev:
            what = "the session's settings" if index == 0 else f"round {number - 1}"
            problems.append(ChainProblem(number, "broken_link", f"prev_round_digest does not match {what} (a round "
                                                                "was removed, reordered or edited)"))
        if key is not None:
            signature = record.get("server_signature")
            if not signature:
                problems.append(ChainProblem(number, "unsigned", "the round record carries no server signature"))
            elif not (isinstance(signature, str) and isinstance(recorded, str)
                      and key.verify_round(recorded, signature)):
                problems.append(ChainProblem(number, "bad_signature", f"the server signature does not verify with "
                                                                      f"key {key.key_id}"))
        expected_prev = recorded if isinstance(recorded, str) else digest
    return problems
