"""TLS for the agent: whom to trust, and plain words when trust fails.

By default the server's certificate is checked against the system's trust
store. A province running its own certificate authority gives its
certificate to ``sync-agent init --ca-file F`` (kept as ``ca.pem`` in the data
directory); the agent then trusts that authority *only*. Either way the
certificate must name the host in the server URL: hostname checking is never
turned off.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from .errors import SetupError

__all__ = ["client_ssl_context", "describe_tls_error", "is_tls_error", "read_ca_file"]

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)

# OpenSSL X509_V_ERR_* codes, grouped by what the officer should be told.
_UNTRUSTED = {2, 18, 19, 20, 21, 24, 27, 28}
_EXPIRED = 10
_NOT_YET_VALID = 9
_NAME_MISMATCH = {62, 64}  # hostname, IP address
_REVOKED = 23


def read_ca_file(ca_file: Path) -> str:
    """The certificates in ``ca_file`` (PEM or DER) as PEM text, checked usable.

    Only certificate blocks are kept: a private key that came along in the file
    is dropped. Raises :class:`SetupError` when the file cannot be read or holds
    no usable certificate.
    """
    ca_file = Path(ca_file)
    try:
        data = ca_file.read_bytes()
    except FileNotFoundError as exc:
        raise SetupError(f"the CA certificate file {ca_file} does not exist") from exc
    except IsADirectoryError as exc:
        raise SetupError(f"the CA certificate file {ca_file} is a directory, "
                         "not a file") from exc
    except OSError as exc:
        raise SetupError(f"the CA certificate file {ca_file} cannot be read: "
                         f"{exc.strerror or exc}") from exc
    if b"-----BEGIN" in data:
        blocks = _PEM_CERT.findall(data)
        if not blocks:
            raise SetupError(f"the CA certificate file {ca_file} holds no certificate "
                             "(expected a '-----BEGIN CERTIFICATE-----' block)")
        pem = "\n".join(block.decode("ascii", errors="ignore") for block in blocks) + "\n"
    elif data.strip():
        pem = ssl.DER_cert_to_PEM_cert(data)
    else:
        raise SetupError(f"the CA certificate file {ca_file} is empty")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise SetupError(f"the CA certificate file {ca_file} does not hold a valid "
                         "certificate (PEM or DER)") from exc
    if probe.cert_store_stats()["x509"] == 0:
        raise SetupError(f"the CA certificate file {ca_file} holds no certificate")
    return pem


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """An SSL context for talking to syncd (TLS 1.2 and later).

    ``ca_file`` None: verify against the system trust store. Otherwise verify
    against the certificates in ``ca_file`` only (a private CA, an intermediate,
    or the server's own self-signed certificate). Hostname checking stays on.
    Raises :class:`SetupError` on an unusable ``ca_file``.
    """
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cadata=read_ca_file(ca_file))
        # The operator named these certificates: let any of them anchor the chain.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (``__cause__``, ``__context__``, aiohttp's)."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is seen for seen in found):
            continue
        found.append(item)
        todo.extend([getattr(item, "certificate_error", None), getattr(item, "os_error", None),
                     item.__cause__, item.__context__])
    return found


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The most informative ``ssl`` error in the chain, if any.

    aiohttp's certificate and SSL errors subclass the ``ssl`` ones without their
    details (``verify_code``, ``reason``), so the wrapped originals come first.
    """
    errors = [item for item in _causes(exc) if isinstance(item, ssl.SSLError)]
    errors.sort(key=lambda err: (
        not isinstance(err, ssl.SSLCertVerificationError),
        getattr(err, "verify_code", None) is None and getattr(err, "reason", None) is None))
    return errors[0] if errors else None


def is_tls_error(exc: BaseException) -> bool:
    """Whether ``exc`` is (or wraps) a TLS failure, such as a refused certificate."""
    return _ssl_error(exc) is not None


def _host(exc: BaseException) -> str | None:
    for item in _causes(exc):
        host = getattr(item, "host", None)
        if isinstance(host, str) and host:
            return host
    return None


def _describe_verification(err: ssl.SSLCertVerificationError, host: str | None) -> str:
    code = getattr(err, "verify_code", None)
    message = str(getattr(err, "verify_message", None) or "").strip()
    if code in _NAME_MISMATCH or message.lower().startswith(("hostname mismatch",
                                                             "ip address mismatch")):
        named = f" '{host}'" if host else " in the server address"
        return (f"The server's certificate is not valid for the name{named}: check the "
                "server address (it must match a name in the certificate), or ask the "
                "server's administrator for a certificate that includes it.")
    if code == _EXPIRED:
        return ("The server's certificate (or the authority that signed it) has expired: "
                "check this computer's date and time, then ask the server's administrator "
                "to renew the certificate.")
    if code == _NOT_YET_VALID:
        return ("The server's certificate is not valid yet: this computer's date and time "
                "are probably wrong; correct them and try again.")
    if code == _REVOKED:
        return "The server's certificate has been revoked; ask the server's administrator."
    if code in _UNTRUSTED:
        return ("The server's certificate is not signed by an authority this computer "
                "trusts: if the province uses its own certificate authority, give its "
                "certificate with `sync-agent init --ca-file` (kept as ca.pem in the data "
                "directory); otherwise the connection may be intercepted.")
    detail = f" ({message})" if message else ""
    return f"The server's certificate could not be verified{detail}."


def describe_tls_error(exc: BaseException) -> str:
    """One plain English sentence saying why a secure connection failed.

    Understands ``ssl`` errors and the aiohttp (and TransportError) exceptions
    wrapping them: an unknown certificate authority, a certificate for another
    name, an expired or not-yet-valid certificate, a server that does not speak
    TLS. For an exception that wraps no TLS failure it returns a generic sentence.
    """
    err = _ssl_error(exc)
    if err is None:
        return f"The connection to the server failed: {str(exc).rstrip('.') or type(exc).__name__}."
    if isinstance(err, ssl.SSLCertVerificationError):
        return _describe_verification(err, _host(exc))
    reason = str(getattr(err, "reason", None) or "").upper()
    if reason in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
                  "RECORD_LAYER_FAILURE"}:
        return ("The server did not answer with TLS on this port: check whether the server "
                "address should start with http:// or https://.")
    if reason in {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"}:
        return ("The server offers only TLS versions older than 1.2, which this agent "
                "refuses; ask the server's administrator to enable TLS 1.2 or later.")
    if reason in {"SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE"}:
        return ("The server and this computer have no encryption method in common; ask the "
                "server's administrator to check its TLS settings.")
    detail = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)
    return f"The secure (TLS) connection to the server failed ({detail})."
