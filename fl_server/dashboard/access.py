"""Who may read the dashboard and ``/metrics`` (pure): the token rule.

- With a token (``--dashboard-token`` / ``FL_DASHBOARD_TOKEN``) every request must present it
  (``Authorization: Bearer <token>``, or ``?token=`` where a browser cannot set headers), compared in
  constant time.
- Without one, a server listening on loopback serves everyone who can reach it (only this machine); a server
  listening beyond loopback serves loopback peers only and refuses the rest (``token_required``).

The peer is the TCP peer address; ``X-Forwarded-For`` and similar headers are never trusted.
"""

from __future__ import annotations

import hmac
import ipaddress

TOKEN_REQUIRED, BAD_TOKEN = "token_required", "bad_token"
MAX_TOKEN_CHARS = 512


def is_loopback(host: str | None) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1, IPv4-mapped loopback) and ``localhost``."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def refusal(*, listen_host: str, peer: str | None, token: str | None, presented: str | None) -> str | None:
    """Why this request may not read the dashboard (``token_required``, ``bad_token``), or None if it may."""
    if token:
        if presented is None:
            return TOKEN_REQUIRED
        if len(presented) > MAX_TOKEN_CHARS or not hmac.compare_digest(presented.encode(), token.encode()):
            return BAD_TOKEN
        return None
    if is_loopback(listen_host) or is_loopback(peer):
        return None
    return TOKEN_REQUIRED


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request presents: ``Authorization: Bearer <token>`` first, else the ``token`` query value."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None
