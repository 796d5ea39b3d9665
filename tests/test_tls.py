import argparse
import asyncio
import datetime
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import socketio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.transport.tls import (
    CertificateProblem,
    add_tls_client_options,
    add_tls_server_options,
    async_client_options,
    check_server_certificate,
    client_ssl_context,
    server_ssl_context,
    tls_client_context_from_args,
    tls_server_context_from_args,
)

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, *, names: tuple[str, ...] = ("localhost", "127.0.0.1"),
             valid_days: tuple[float, float] = (-5 / 1440, 1)) -> Pki:
    """A throwaway CA and a server certificate it signed for ``names`` (default 127.0.0.1 and localhost), valid
    from ``valid_days[0]`` to ``valid_days[1]`` days from now."""
    now = datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
        .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
        .add_extension(x509.SubjectAlternativeName([_san(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    _write_cert(pki.ca, ca_cert)
    _write_cert(pki.cert, server_cert)
    _write_key(pki.key, server_key)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def tls_server(pki: Pki, app: web.Application | None = None) -> AsyncIterator[int]:
    """``app`` (default: an empty one, when only the handshake is tested) over TLS on a free port of 127.0.0.1,
    with ``pki``'s server certificate."""
    runner = web.AppRunner(app or web.Application(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(pki.cert, pki.key)).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def tls_port(pki: Pki) -> AsyncIterator[int]:
    """A Socket.IO server over TLS on a free port of 127.0.0.1, answering ``echo`` calls."""
    sio = socketio.AsyncServer(async_mode="aiohttp")

    @sio.event
    async def echo(sid: str, data: object) -> object:
        return {"echo": data}

    app = web.Application()
    sio.attach(app)
    try:
        async with tls_server(pki, app) as port:
            yield port
    finally:
        await sio.shutdown()


async def connect_and_echo(url: str, context: ssl.SSLContext | None) -> object:
    async with async_client_options(context) as options:
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False, **options)
        try:
            await asyncio.wait_for(client.connect(url, transports=["websocket"]), CONNECT_TIMEOUT_S)
            return await client.call("echo", {"round": 1}, timeout=CONNECT_TIMEOUT_S)
        finally:
            await client.disconnect()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_client_trusting_the_ca_round_trips_over_tls(pki, tls_port, host):
    reply = await connect_and_echo(f"https://{host}:{tls_port}", client_ssl_context(pki.ca, insecure=False))
    assert reply == {"echo": {"round": 1}}


async def test_default_trust_store_rejects_the_private_ca(tls_port):
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect_and_echo(f"https://127.0.0.1:{tls_port}", client_ssl_context(None, insecure=False))


async def test_library_default_client_rejects_the_private_ca(tls_port):
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect_and_echo(f"https://127.0.0.1:{tls_port}", None)


async def test_plain_http_to_the_tls_port_fails(tls_port):
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect_and_echo(f"http://127.0.0.1:{tls_port}", None)


async def test_insecure_client_connects_without_verification_and_warns(tls_port, caplog):
    with caplog.at_level(logging.WARNING, logger="common.transport.tls"):
        context = client_ssl_context(None, insecure=True)
    assert "verification is OFF" in caplog.text
    assert await connect_and_echo(f"https://127.0.0.1:{tls_port}", context) == {"echo": {"round": 1}}


async def test_async_client_options_closes_its_session(pki):
    async with async_client_options(client_ssl_context(pki.ca, insecure=False)) as options:
        session = options["http_session"]
        assert not session.closed
    assert session.closed
    async with async_client_options(None) as options:
        assert options == {}


def test_contexts_require_tls_1_2_and_verify_by_default(pki):
    server = server_ssl_context(pki.cert, pki.key)
    client = client_ssl_context(pki.ca, insecure=False)
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_server_context_errors_name_the_problem(pki, tmp_path):
    with pytest.raises(ValueError, match="--tls-cert: no such file"):
        server_ssl_context(tmp_path / "missing.pem", pki.key)
    with pytest.raises(ValueError, match="--tls-key: no such file"):
        server_ssl_context(pki.cert, tmp_path / "missing.key")
    other_key = tmp_path / "other.key"
    _write_key(other_key, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="cannot load TLS certificate"):
        server_ssl_context(pki.cert, other_key)  # key does not match the certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load TLS certificate"):
        server_ssl_context(garbage, pki.key)


def test_client_context_errors(pki, tmp_path):
    with pytest.raises(ValueError, match="--tls-ca: no such file"):
        client_ssl_context(tmp_path / "missing.pem", insecure=False)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="--tls-ca: cannot load CA bundle"):
        client_ssl_context(garbage, insecure=False)
    with pytest.raises(ValueError, match="contradict"):
        client_ssl_context(pki.ca, insecure=True)


def _server_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_server_options(parser)
    return parser.parse_args(argv)


def _client_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_client_options(parser)
    return parser.parse_args(argv)


def test_server_options(pki):
    assert tls_server_context_from_args(_server_args([])) is None
    context = tls_server_context_from_args(_server_args(["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]))
    assert isinstance(context, ssl.SSLContext)
    for argv in (["--tls-cert", str(pki.cert)], ["--tls-key", str(pki.key)]):
        with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
            tls_server_context_from_args(_server_args(argv))


def test_server_options_from_environment(monkeypatch, pki):
    monkeypatch.setenv("FL_TLS_CERT", str(pki.cert))
    monkeypatch.setenv("FL_TLS_KEY", str(pki.key))
    assert _server_args([]).tls_cert == pki.cert
    assert tls_server_context_from_args(_server_args([])) is not None


def test_client_options(monkeypatch, pki):
    assert tls_client_context_from_args(_client_args([])) is None
    context = tls_client_context_from_args(_client_args(["--tls-ca", str(pki.ca)]))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.setenv("FL_TLS_INSECURE", "1")
    context = tls_client_context_from_args(_client_args([]))
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname


@pytest.mark.parametrize(("case", "says"), [
    ("other_ca", "it is not signed by a CA this node trusts"),
    ("wrong_name", "it is not for '127.0.0.1' but for fl.example.org, 10.9.8.7; connect with a name it is for"),
    ("expired", "it expired on"),
    ("not_yet_valid", "it is valid only from"),
])
async def test_certificate_problems_are_told_apart(tmp_path, pki, case, says):
    """Each cause its own message and fix, instead of python-socketio's "Connection error"."""
    server_pki = {
        "other_ca": lambda: make_pki(tmp_path / "other"),
        "wrong_name": lambda: make_pki(tmp_path / "name", names=("fl.example.org", "10.9.8.7")),
        "expired": lambda: make_pki(tmp_path / "old", valid_days=(-10, -1)),
        "not_yet_valid": lambda: make_pki(tmp_path / "new", valid_days=(2, 10)),
    }[case]()
    trusted = pki.ca if case == "other_ca" else server_pki.ca
    async with tls_server(server_pki) as port:
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(CertificateProblem) as info:
            await check_server_certificate(url, client_ssl_context(trusted, insecure=False))
        await check_server_certificate(url, client_ssl_context(None, insecure=True))  # verification off: no problem
    assert str(info.value).startswith(f"cannot verify the TLS certificate of {url}: ") and says in str(info.value)


async def test_a_good_certificate_and_an_absent_server_are_not_certificate_problems(pki):
    async with tls_server(pki) as port:
        await check_server_certificate(f"https://127.0.0.1:{port}", client_ssl_context(pki.ca, insecure=False))
    await check_server_certificate(f"https://127.0.0.1:{port}", client_ssl_context(pki.ca, insecure=False))  # gone


async def test_fl_node_refuses_an_unverifiable_server_at_start_up_before_building_the_node(pki, tls_port, monkeypatch,
                                                                                           capsys):
    """The certificate is checked before TensorFlow loads: the node is never built (exit 2, one error line)."""
    import fl_node.cli as node_cli

    built: list[object] = []
    monkeypatch.setattr(node_cli, "load_local_data", lambda args: None)
    monkeypatch.setattr(node_cli, "build_node", built.append)
    argv = ["--node-id", "n1", "--server", f"https://127.0.0.1:{tls_port}", "--quiet"]  # no --tls-ca
    code = await asyncio.to_thread(node_cli.main, argv)  # main runs its own event loop
    assert code == 2 and built == []
    assert "cannot verify the TLS certificate" in capsys.readouterr().err
