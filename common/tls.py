"""TLS for the Socket.IO control plane: options, ``ssl.SSLContext`` builders and the AsyncClient wiring.

Server: ``web.TCPSite(runner, host, port, ssl_context=tls_server_context_from_args(args))``.
Client: python-socketio/engine.io send every request (polling and WebSocket) through the aiohttp
``ClientSession`` given as ``AsyncClient(http_session=...)``; a session whose ``TCPConnector`` carries our
context makes both transports verify the server with it. ``async_client_options(ctx)`` builds and closes
that session::

    async with async_client_options(tls_client_context_from_args(args)) as options:
        sio = socketio.AsyncClient(**options)
        await sio.connect("https://server:8443")
        ...
        await sio.disconnect()
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from common.config import add_flag, add_option

logger = logging.getLogger(__name__)

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def add_tls_server_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert`` / ``--tls-key``: serve HTTPS/WSS instead of plain HTTP when both are given."""
    add_option(parser, "--tls-cert", type=Path,
               help="PEM certificate chain to serve the control plane over TLS (needs --tls-key)")
    add_option(parser, "--tls-key", type=Path, help="PEM private key of --tls-cert")


def add_tls_client_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca`` / ``--tls-insecure``: how an https:// server is verified."""
    add_option(parser, "--tls-ca", type=Path,
               help="PEM CA bundle to verify the server's certificate (default: the system trust store)")
    add_flag(parser, "--tls-insecure",
             help="do NOT verify the server's certificate (development only: anyone can impersonate the server)")


def _require_file(flag: str, path: Path) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{flag}: no such file: {path}")


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) presenting ``cert`` with ``key``; ValueError if they do not load."""
    _require_file("--tls-cert", cert)
    _require_file("--tls-key", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_TLS_VERSION
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from exc
    return context


def client_ssl_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    """A TLS client context (TLS 1.2 or newer) that verifies the server against ``ca_file`` (None: system store).

    ``insecure`` turns verification off entirely and logs a warning; it cannot be combined with ``ca_file``.
    """
    if insecure and ca_file is not None:
        raise ValueError("--tls-insecure and --tls-ca contradict each other: give one of them")
    if ca_file is not None:
        _require_file("--tls-ca", ca_file)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=None if ca_file is None else str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--tls-ca: cannot load CA bundle {ca_file}: {exc}") from exc
    context.minimum_version = MINIMUM_TLS_VERSION
    if insecure:
        logger.warning("TLS certificate verification is OFF (--tls-insecure): the connection is encrypted but "
                       "anyone on the network path can impersonate the server. Use only for development.")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_server_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context from ``--tls-cert``/``--tls-key``, or None (plain HTTP) when neither is given."""
    cert, key = args.tls_cert, args.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    return server_ssl_context(cert, key)


def tls_client_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client context from ``--tls-ca``/``--tls-insecure``, or None (library defaults) when neither is given."""
    if args.tls_ca is None and not args.tls_insecure:
        return None
    return client_ssl_context(args.tls_ca, args.tls_insecure)


def client_http_session(context: ssl.SSLContext) -> aiohttp.ClientSession:
    """An aiohttp session whose HTTPS/WSS connections use ``context``. Create it inside the event loop; close it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@contextlib.asynccontextmanager
async def async_client_options(context: ssl.SSLContext | None) -> AsyncIterator[dict[str, Any]]:
    """Keyword arguments for ``socketio.AsyncClient`` that make it use ``context``; ``{}`` when None.

    The session is passed as ``http_session``, which engine.io treats as the caller's: it reuses it across
    reconnects and never closes it, so it is closed here on exit (disconnect the client before leaving).
    """
    if context is None:
        yield {}
        return
    session = client_http_session(context)
    try:
        yield {"http_session": session}
    finally:
        await session.close()
