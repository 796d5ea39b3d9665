"""How a node gets into a session over Socket.IO: the client's reconnection policy, the single-use challenge its
connect proof is made over, and what a refusal from the server means (retry, or stop with the reason)."""

from __future__ import annotations

import logging
import random
import ssl
from typing import Any

import aiohttp
import socketio

from common.wire.errors import ProtocolError
from common.wire.protocol import ModelMessage, ModelSpec
from common.wire.safe_json import SocketIOJson, loads_untrusted

logger = logging.getLogger(__name__)

# Refusals that retrying cannot heal: the node stops with the reason instead of reconnecting forever.
NON_HEALING_REFUSALS = frozenset({"unknown_node", "bad_signature", "unauthenticated", "bad_hello", "bad_version",
                                  "bad_node_id", "bad_schema", "bad_proof", "stale_proof"})


FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
MAX_RETRY_AFTER_S = 60.0  # a server's retry_after_s is untrusted: never wait longer than this on its word


class ServerRefused(RuntimeError):
    """The server refused this node's connection (unknown node, bad key, bad hello)."""


def new_client(**options: Any) -> socketio.AsyncClient:
    """Reconnects forever with jittered exponential backoff (0.5 s doubling to 5 s)."""
    return socketio.AsyncClient(reconnection=True, reconnection_attempts=0, reconnection_delay=0.5,
                                reconnection_delay_max=5, randomization_factor=0.5, handle_sigint=False,
                                json=SocketIOJson, **options)


def describe_refusal(data: Any, *, now: float) -> tuple[str, str] | None:
    """``(reason, description)`` of a ``connect_error`` in which the server answered and refused us; None when
    the server did not answer (not there yet). ``now`` (epoch seconds) measures our clock against the server's
    for a ``stale_proof``."""
    if not (isinstance(data, dict) and "message" in data):
        return None
    reason = str(data["message"])[:64]
    raw = data.get("data")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    description = reason + (f" ({str(details['detail'])[:200]})" if "detail" in details else "")
    server_time = details.get("server_time")
    if reason == "stale_proof" and isinstance(server_time, (int, float)) and not isinstance(server_time, bool):
        description += f"; this node's clock is {now - server_time:+.0f} s off the server's"
    return reason, description


def retry_after_of(data: Any) -> float | None:
    """The ``retry_after_s`` of a ``server_busy`` refusal (untrusted: a finite number, capped), else None."""
    if not (isinstance(data, dict) and isinstance(data.get("data"), dict)):
        return None
    value = data["data"].get("retry_after_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        return None
    return min(float(value), MAX_RETRY_AFTER_S)


def backoff_pause_s(delay_s: float, retry_after_s: float | None = None,
                    rng: random.Random | None = None) -> tuple[float, float]:
    """Jittered exponential backoff: ``(pause, next delay)``. The pause is ``delay_s`` times a uniform factor in
    [0.5, 1.5), and the delay doubles up to ``MAX_BACKOFF_S``. A server that said ``server_busy`` with a
    ``retry_after_s`` is waited for at least that long, spread over [1, 2) times it, so that a refused wave of
    nodes does not come back at the same instant."""
    uniform = rng.uniform if rng is not None else random.uniform
    if retry_after_s is not None:
        return retry_after_s * uniform(1.0, 2.0), delay_s
    return delay_s * uniform(0.5, 1.5), min(delay_s * 2, MAX_BACKOFF_S)


async def fetch_challenge(server_url: str, context: ssl.SSLContext | None,
                          timeout_s: float = 10.0) -> dict[str, str] | None:
    """``GET <server>/fl/challenge`` (the reply is untrusted: checked before use); None if it cannot be had."""
    url = server_url.rstrip("/") + "/fl/challenge"
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.get(url) as response:
                body = await response.content.read(4096)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        logger.debug("no challenge from %s: %r", url, exc)
        return None
    try:
        reply = loads_untrusted(body, max_bytes=4096, what="challenge")
    except ProtocolError:
        return None
    if not (isinstance(reply, dict) and isinstance(reply.get("challenge"), str) and len(reply["challenge"]) <= 64
            and isinstance(reply.get("server_id"), str) and len(reply["server_id"]) <= 64):
        return None
    return {"challenge": reply["challenge"], "server_id": reply["server_id"]}


MODEL_SPEC_EVENT = "fl_model_spec"
MAX_CACHED_SPECS = 4  # a node process serves one session at a time; a few resumes' worth is plenty


class ModelSpecCache:
    """The sessions' model specs this node was sent (``fl_model_spec``), by digest: ``start_round`` names its
    spec by digest, and a node that has not got it (it connected late, or reconnected) asks the server once."""

    def __init__(self) -> None:
        self._by_digest: dict[str, ModelSpec] = {}

    def remember(self, data: Any) -> ModelSpec | None:
        """Keep a spec the server pushed (None, logged, when it is malformed)."""
        try:
            spec = ModelSpec.from_wire(data)
        except ProtocolError as exc:
            logger.error("ignored malformed %s: %s", MODEL_SPEC_EVENT, exc)
            return None
        self._by_digest[spec.digest] = spec
        while len(self._by_digest) > MAX_CACHED_SPECS:
            self._by_digest.pop(next(iter(self._by_digest)))
        return spec

    async def complete(self, model: ModelMessage, sio: socketio.AsyncClient, timeout_s: float) -> ModelMessage:
        """The full model message of a slim one: from the cache, else asked from the server (``fl_model_spec``
        call). ``ProtocolError`` when the server has none or sends another spec than the one named."""
        if not model.is_slim:
            return model
        spec = self._by_digest.get(model.spec_sha256)
        if spec is None:
            try:
                reply = await sio.call(MODEL_SPEC_EVENT, {"spec_sha256": model.spec_sha256}, timeout=timeout_s)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
                raise ProtocolError("no_model_spec", f"the server did not send the model spec ({exc})") from None
            spec = self.remember(reply)
            if spec is None:
                raise ProtocolError("no_model_spec", "the server's model spec is malformed")
        return model.with_spec(spec)
