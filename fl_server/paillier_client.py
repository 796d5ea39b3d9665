"""The server's HTTP call to the decryptor (``POST <url>/decrypt``; see ``common.paillier.messages``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from common.paillier.messages import DecryptedSum
from common.wire.errors import ProtocolError
from common.wire.safe_json import loads_untrusted
from fl_server.paillier_round import PaillierFailure

logger = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 64 * 1024 * 1024
DecryptFn = Callable[[str, dict[str, Any], float], Awaitable[DecryptedSum]]


async def post_decrypt(url: str, payload: dict[str, Any], timeout_s: float) -> DecryptedSum:
    """The decryptor's signed sum (not yet verified), or ``PaillierFailure`` with its refusal or the error."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session, \
                session.post(url.rstrip("/") + "/decrypt", json=payload) as response:
            body = await response.content.read(MAX_ANSWER_BYTES + 1)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PaillierFailure("decryptor_unreachable", f"{url}: {exc or type(exc).__name__}") from None
    if len(body) > MAX_ANSWER_BYTES:
        raise PaillierFailure("bad_answer", "the decryptor's answer is too large")
    try:
        document = loads_untrusted(body, max_bytes=MAX_ANSWER_BYTES, what="decryptor answer")
    except ProtocolError:
        raise PaillierFailure("bad_answer", f"the decryptor answered HTTP {status} with no JSON") from None
    if status != 200:
        reason = document.get("reason") if isinstance(document, dict) else None
        detail = document.get("detail") if isinstance(document, dict) else None
        raise PaillierFailure(f"decryptor_refused_{reason if isinstance(reason, str) else status}"[:80],
                              str(detail)[:500])
    try:
        return DecryptedSum.from_wire(document)
    except ProtocolError as exc:
        raise PaillierFailure("bad_answer", f"the decryptor's answer is malformed: {exc}") from None
