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
import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509

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


class CertificateProblem(ValueError):
    """The server's certificate cannot be verified; the message says why and what to do."""


# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) we can explain.
_UNTRUSTED = {2, 18, 19, 20, 21}  # unable to get issuer / self-signed / self-signed in chain / local issuer / leaf
_EXPIRED, _NOT_YET_VALID = 10, 9
_WRONG_NAME = {62, 64}  # hostname mismatch, IP address mismatch


async def check_server_certificate(url: str, context: ssl.SSLContext | None, *, timeout_s: float = 10.0) -> None:
    """Connect to an https:// server once and raise ``CertificateProblem`` if its certificate does not verify.

    python-socketio only reports "Connection error"; this names the problem (a CA the client does not trust,
    a name the certificate is not for, an expired or not yet valid certificate) and the fix. An unreachable
    server is not a certificate problem: it returns, and the caller's connect loop retries."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        return
    context = context or ssl.create_default_context()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 443, ssl=context),
                                           timeout=timeout_s)
    except ssl.SSLCertVerificationError as exc:
        certificate = await _peer_certificate(parts.hostname, parts.port or 443, timeout_s)
        raise CertificateProblem(explain_verification_error(exc, url, certificate)) from None
    except (OSError, TimeoutError):
        return
    await _close(writer)


async def _peer_certificate(host: str, port: int, timeout_s: float) -> x509.Certificate | None:
    """The server's certificate, fetched without verifying it (only to describe it in an error message)."""
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=insecure), timeout=timeout_s)
    except (OSError, TimeoutError):
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None
    except ValueError:
        return None
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a probe connection and wait for it (the caller's event loop may end right after)."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout=5.0)
    except (OSError, TimeoutError):
        pass


def explain_verification_error(exc: ssl.SSLCertVerificationError, url: str,
                               certificate: x509.Certificate | None = None) -> str:
    """One message per cause: what is wrong with the server's certificate and what to do about it."""
    code = exc.verify_code
    host = urlsplit(url).hostname
    said = f"cannot verify the TLS certificate of {url}: "
    if code in _UNTRUSTED:
        return said + (f"it is not signed by a CA this node trusts ({exc.verify_message}); pass the CA that signed "
                       "it with --tls-ca")
    if code in _WRONG_NAME:
        names = _certificate_names(certificate)
        return said + (f"it is not for {host!r}" + (f" but for {', '.join(names)}" if names else "")
                       + "; connect with a name it is for, or reissue it with this name in its subjectAltName")
    if code == _EXPIRED and certificate is not None:
        return said + f"it expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the server needs a new one"
    if code == _NOT_YET_VALID and certificate is not None:
        return said + (f"it is valid only from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this "
                       "machine's clock and the server's")
    return said + f"{exc.verify_message or exc} (pass the CA that signed it with --tls-ca)"


def _certificate_names(certificate: x509.Certificate | None) -> list[str]:
    if certificate is None:
        return []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
