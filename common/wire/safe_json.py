"""The one path by which untrusted JSON becomes Python values (pure: no I/O).

Every JSON text a peer can write goes through ``loads_untrusted``: Kafka record values, Socket.IO
payloads (``SOCKETIO_JSON`` is handed to python-socketio), node statistics, and the key registry,
checkpoint and history files read back. The standard library alone lets hostile text escape as
exceptions nobody expects from a parser:

* an integer of more than 4,300 digits raises ``ValueError`` (CPython's int/str limit);
* nesting a few thousand levels deep raises ``RecursionError``;
* a literal like ``1e999`` parses to ``inf``, and a huge integer later makes ``float()`` or
  ``math.isfinite`` raise ``OverflowError``.

Here all of these become one ``ProtocolError`` with a reason tag, checked in this order: size
(``oversize``), text and syntax (``not_json``), numbers (``bad_number``: integers of more than
``MAX_INT_DIGITS`` digits, float literals that overflow), and depth (``too_deep``).
``NaN``/``Infinity`` constants are still read (Python's own ``json.dumps`` writes them); the
field checks of each message refuse non-finite values where a number must be finite.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from common.wire.errors import ProtocolError

MAX_INT_DIGITS = 64  # protocol integers are < 2**63 (19 digits); statistics counts are far smaller
MAX_DEPTH = 32  # our deepest message (a statistics reply) nests 5 levels
MiB = 1024 * 1024
SOCKETIO_MAX_BYTES = 1_000_000  # python-engineio's default max_http_buffer_size
MALFORMED_EVENT = "fl_malformed"

logger = logging.getLogger(__name__)


class _BadNumber(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:  # +1 for a sign
        raise _BadNumber(f"an integer of {len(text)} characters (at most {MAX_INT_DIGITS} digits)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]!r} does not fit a float")
    return value


def loads_untrusted(data: bytes | bytearray | str, *, max_bytes: int, what: str = "message",
                    max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON text or UTF-8 bytes; raise ``ProtocolError`` (never anything else) if it is unfit."""
    if len(data) > max_bytes:
        raise ProtocolError("oversize", f"{what} of {len(data)} bytes exceeds {max_bytes}")
    try:
        value = json.loads(data, parse_int=_parse_int, parse_float=_parse_float)
    except _BadNumber as exc:
        raise ProtocolError("bad_number", f"{what}: {exc}") from None
    except RecursionError:
        raise ProtocolError("too_deep", f"{what} nests deeper than the parser allows") from None
    except (ValueError, UnicodeDecodeError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError("not_json", f"{what} is not UTF-8 JSON ({str(exc)[:120]})") from None
    if _depth_exceeds(value, max_depth):
        raise ProtocolError("too_deep", f"{what} nests deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """True if containers nest deeper than ``max_depth`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def read_json_file(path: Path, *, max_bytes: int) -> Any:
    """A JSON file read back (history, checkpoint, key registry, schema): size checked before reading, then
    the same guard. Raises ``OSError`` if it cannot be read and ``ProtocolError`` if it is unfit."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ProtocolError("oversize", f"{path} is {size} bytes, more than the {max_bytes} allowed")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    return loads_untrusted(data, max_bytes=max_bytes, what=str(path))


def finite_or_null(value: Any, path: str = "$") -> tuple[Any, list[str]]:
    """A copy of ``value`` with every NaN and infinity replaced by None, and the paths it replaced.

    NaN and Infinity are not JSON: other tools (browsers, jq, other languages) refuse files holding them.
    Everything we write (history, checkpoints, Socket.IO messages) goes through this first."""
    if isinstance(value, float):
        return (value, []) if math.isfinite(value) else (None, [path])
    if isinstance(value, dict):
        out, replaced = {}, []
        for key, item in value.items():
            out[key], found = finite_or_null(item, f"{path}.{key}")
            replaced += found
        return out, replaced
    if isinstance(value, (list, tuple)):
        items, replaced = [], []
        for index, item in enumerate(value):
            clean, found = finite_or_null(item, f"{path}[{index}]")
            items.append(clean)
            replaced += found
        return items, replaced
    return value, []


def dumps_standard(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes standard JSON: non-finite numbers as null."""
    clean, _ = finite_or_null(value)
    return json.dumps(clean, allow_nan=False, **kwargs)


class SocketIOJson:
    """The ``json`` module python-socketio decodes every packet with (``AsyncServer(json=SocketIOJson)``).

    A packet whose JSON is unfit does not raise inside the library (which would log a traceback per
    packet); it decodes to ``[MALFORMED_EVENT, reason]``: as an event, the frontend's catch-all handler
    counts it; as connect auth or a call's reply, the message checks refuse it like any other bad value."""

    max_bytes = SOCKETIO_MAX_BYTES

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return dumps_standard(obj, **kwargs)

    @classmethod
    def loads(cls, text: str | bytes, **_kwargs: Any) -> Any:
        try:
            return loads_untrusted(text, max_bytes=cls.max_bytes, what="Socket.IO packet")
        except ProtocolError as exc:
            logger.debug("malformed Socket.IO packet: %s", exc)
            return [MALFORMED_EVENT, exc.reason]
