"""TLS between sync-agent and syncd, in process over real loopback sockets.

A throwaway certificate authority and short-lived certificates are made with
``cryptography`` in a temporary directory; syncd's real application (on a real
SQLite store) is served with :func:`syncd.tls.server_ssl_context`, and the
agent's real transport connects with :func:`client.tls.client_ssl_context`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client.errors import SetupError as AgentSetupError
from client.errors import TransportError
from client.tls import client_ssl_context, describe_tls_error, is_tls_error, read_ca_file
from client.transport import HttpTransport
from protocol import MEDIA_TYPE
from syncd.app import make_app
from syncd.config import ServerConfig
from syncd.errors import SetupError as ServerSetupError
from syncd.keys import ServerKeys
from syncd.store import SqliteStore
from syncd.tls import server_ssl_context

# --- a throwaway PKI -------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: tuple[Path, Path]  # for 127.0.0.1 and localhost, signed by ca
    wrong_name: tuple[Path, Path]  # for syncd.example only, signed by ca
    expired: tuple[Path, Path]  # for 127.0.0.1 and localhost, expired yesterday
    future: tuple[Path, Path]  # for 127.0.0.1 and localhost, valid from tomorrow


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "commune-sync tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_key(path: Path, pem: bytes) -> Path:
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def make_ca(directory: Path, common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=10))
        .not_valid_after(_now() + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = directory / f"{common_name.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, pem)


def issue(ca: Authority, directory: Path, stem: str, dns: list[str], ips: list[str], *,
          not_before: dt.datetime | None = None,
          not_after: dt.datetime | None = None) -> tuple[Path, Path]:
    """A server certificate signed by ``ca``; returns (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns[0] if dns else ips[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - dt.timedelta(minutes=10))
        .not_valid_after(not_after or _now() + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file = directory / f"{stem}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, _write_key(directory / f"{stem}.key", _key_pem(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "Test Province CA")
    loopback = (["localhost"], ["127.0.0.1"])
    return Pki(
        ca=ca,
        other_ca=make_ca(directory, "Some Other CA"),
        server=issue(ca, directory, "server", *loopback),
        wrong_name=issue(ca, directory, "wrong-name", ["syncd.example"], []),
        expired=issue(ca, directory, "expired", *loopback,
                      not_before=_now() - dt.timedelta(days=3),
                      not_after=_now() - dt.timedelta(days=1)),
        future=issue(ca, directory, "future", *loopback,
                     not_before=_now() + dt.timedelta(days=1),
                     not_after=_now() + dt.timedelta(days=2)),
    )


# --- serving syncd ---------------------------------------------------------------------------


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[web.Application]:
    keys = ServerKeys.create(tmp_path)
    store = await SqliteStore.open(tmp_path / "syncd.db")
    try:
        yield make_app(ServerConfig(), store, keys)
    finally:
        await store.close()


@asynccontextmanager
async def serving(app: web.Application, ssl_context: ssl.SSLContext | None,
                  ) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 (a free port, yielded) until the block ends."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def transport(url: str, context: ssl.SSLContext) -> AsyncIterator[HttpTransport]:
    client = HttpTransport(url, timeout_s=10.0, ssl_context=context)
    try:
        yield client
    finally:
        await client.close()


async def probe(url: str, context: ssl.SSLContext) -> bool:
    async with transport(url, context) as client:
        return await client.probe(timeout_s=10.0)


async def post_failure(url: str, context: ssl.SSLContext) -> TransportError:
    """The TransportError a POST raises (the way the sync engine sees a TLS failure)."""
    async with transport(url, context) as client:
        with pytest.raises(TransportError) as caught:
            await client.post("/v1/enroll", b"\x80", timeout_s=10.0)
    return caught.value


# --- the connection works with the right CA ---------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_probe_and_post_succeed_with_private_ca(app: web.Application, pki: Pki,
                                                      host: str) -> None:
    async with serving(app, server_ssl_context(*pki.server)) as port:
        url = f"https://{host}:{port}"
        context = client_ssl_context(pki.ca.pem)
        assert await probe(url, context) is True
        async with transport(url, context) as client:
            reply = await client.post("/v1/enroll", b"\x80 not a message")
        # The body crossed TLS and syncd answered with a protocol error, not a crash.
        assert 400 <= reply.status < 500
        assert reply.content_type == MEDIA_TYPE


async def test_ca_file_may_be_der(app: web.Application, pki: Pki, tmp_path: Path) -> None:
    der = tmp_path / "ca.der"
    der.write_bytes(pki.ca.cert.public_bytes(serialization.Encoding.DER))
    async with serving(app, server_ssl_context(*pki.server)) as port:
        assert await probe(f"https://127.0.0.1:{port}", client_ssl_context(der)) is True


async def test_ca_file_may_be_the_server_certificate_itself(app: web.Application,
                                                            pki: Pki) -> None:
    cert_file, _ = pki.server
    async with serving(app, server_ssl_context(*pki.server)) as port:
        assert await probe(f"https://127.0.0.1:{port}", client_ssl_context(cert_file)) is True


# --- and fails, in plain words, otherwise -----------------------------------------------------


async def test_system_store_does_not_trust_private_ca(app: web.Application, pki: Pki) -> None:
    async with serving(app, server_ssl_context(*pki.server)) as port:
        url = f"https://127.0.0.1:{port}"
        assert await probe(url, client_ssl_context(None)) is False
        failure = await post_failure(url, client_ssl_context(None))
    assert is_tls_error(failure)
    assert "not signed by an authority this computer trusts" in describe_tls_error(failure)


async def test_other_ca_is_refused(app: web.Application, pki: Pki) -> None:
    async with serving(app, server_ssl_context(*pki.server)) as port:
        url = f"https://127.0.0.1:{port}"
        assert await probe(url, client_ssl_context(pki.other_ca.pem)) is False
        failure = await post_failure(url, client_ssl_context(pki.other_ca.pem))
    assert "not signed by an authority this computer trusts" in describe_tls_error(failure)
    assert "--ca-file" in describe_tls_error(failure)


async def test_certificate_for_another_name_is_refused(app: web.Application, pki: Pki) -> None:
    async with serving(app, server_ssl_context(*pki.wrong_name)) as port:
        url = f"https://127.0.0.1:{port}"
        assert await probe(url, client_ssl_context(pki.ca.pem)) is False
        failure = await post_failure(url, client_ssl_context(pki.ca.pem))
    message = describe_tls_error(failure)
    assert "not valid for the name '127.0.0.1'" in message


async def test_expired_certificate_is_refused(app: web.Application, pki: Pki,
                                              caplog: pytest.LogCaptureFixture) -> None:
    server_context = server_ssl_context(*pki.expired)  # starts, but says so in the log
    assert "expired" in caplog.text
    async with serving(app, server_context) as port:
        url = f"https://localhost:{port}"
        assert await probe(url, client_ssl_context(pki.ca.pem)) is False
        failure = await post_failure(url, client_ssl_context(pki.ca.pem))
    assert "has expired" in describe_tls_error(failure)


async def test_not_yet_valid_certificate_points_at_the_clock(app: web.Application,
                                                             pki: Pki) -> None:
    async with serving(app, server_ssl_context(*pki.future)) as port:
        failure = await post_failure(f"https://127.0.0.1:{port}", client_ssl_context(pki.ca.pem))
    message = describe_tls_error(failure)
    assert "not valid yet" in message
    assert "date and time" in message


async def test_plain_http_server_behind_https_url(app: web.Application, pki: Pki) -> None:
    async with serving(app, None) as port:
        failure = await post_failure(f"https://127.0.0.1:{port}", client_ssl_context(pki.ca.pem))
    assert "did not answer with TLS" in describe_tls_error(failure)


def test_non_tls_failure_gets_a_generic_sentence() -> None:
    failure = ConnectionRefusedError(111, "Connection refused")
    assert not is_tls_error(failure)
    assert describe_tls_error(failure).startswith("The connection to the server failed")


# --- the contexts themselves ------------------------------------------------------------------


def test_contexts_require_tls_12_and_keep_hostname_checks(pki: Pki) -> None:
    server = server_ssl_context(*pki.server)
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    for ca_file in (None, pki.ca.pem):
        client = client_ssl_context(ca_file)
        assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert client.check_hostname is True
        assert client.verify_mode == ssl.CERT_REQUIRED
    # With a CA file, that CA alone is trusted (not the system store as well).
    assert client_ssl_context(pki.ca.pem).cert_store_stats()["x509"] == 1


def test_ca_file_keeps_certificates_only(pki: Pki, tmp_path: Path) -> None:
    cert_file, key_file = pki.server
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(key_file.read_bytes() + cert_file.read_bytes()
                       + pki.ca.pem.read_bytes())
    pem = read_ca_file(bundle)
    assert pem.count("-----BEGIN CERTIFICATE-----") == 2
    assert "PRIVATE KEY" not in pem


# --- setup errors -----------------------------------------------------------------------------


def _server_files(pki: Pki, tmp_path: Path, case: str) -> tuple[Path, Path]:
    cert_file, key_file = pki.server
    if case == "missing key":
        return cert_file, tmp_path / "nope.key"
    if case == "missing cert":
        return tmp_path / "nope.pem", key_file
    if case == "mismatched key":
        return cert_file, pki.wrong_name[1]
    if case == "garbage cert":
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("this is not a certificate\n")
        return garbage, key_file
    if case == "garbage key":
        garbage = tmp_path / "garbage.key"
        garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        return cert_file, garbage
    if case == "empty key":
        empty = tmp_path / "empty.key"
        empty.write_bytes(b"")
        return cert_file, empty
    if case == "key is a directory":
        return cert_file, tmp_path
    assert case == "encrypted key"
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return cert_file, encrypted


@pytest.mark.parametrize(("case", "words"), [
    ("missing key", "does not exist"),
    ("missing cert", "does not exist"),
    ("mismatched key", "does not belong to the certificate"),
    ("garbage cert", "does not hold a PEM certificate"),
    ("garbage key", "does not hold a PEM private key"),
    ("empty key", "is empty"),
    ("key is a directory", "is a directory"),
    ("encrypted key", "protected by a passphrase"),
])
def test_server_setup_errors(pki: Pki, tmp_path: Path, case: str, words: str) -> None:
    cert_file, key_file = _server_files(pki, tmp_path, case)
    with pytest.raises(ServerSetupError, match=words) as caught:
        server_ssl_context(cert_file, key_file)
    message = str(caught.value)
    assert str(key_file) in message or str(cert_file) in message


@pytest.mark.parametrize(("content", "words"), [
    (b"garbage, not a certificate\n", "does not hold a valid certificate"),
    (b"", "is empty"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "holds no certificate"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
     "does not hold a valid certificate"),
    (None, "does not exist"),
])
def test_client_setup_errors(tmp_path: Path, content: bytes | None, words: str) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with pytest.raises(AgentSetupError, match=words):
        client_ssl_context(ca_file)
