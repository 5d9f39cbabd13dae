"""TLS for ``syncd serve --tls-cert F --tls-key F``: the server's SSL context.

Only TLS 1.2 and later is offered. The certificate file may hold the whole
chain (leaf first, then intermediates, as certbot's ``fullchain.pem``); the
key must be unencrypted, since a server started by systemd has nobody to type
a passphrase. Every problem with the two files becomes a :class:`SetupError`
whose message names the file and says what is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import SetupError

__all__ = ["server_ssl_context"]

log = logging.getLogger("syncd.tls")


class _EncryptedKey(Exception):
    """Raised by the password callback: OpenSSL asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal (or hang a service).
    raise _EncryptedKey


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SetupError(f"the TLS {what} file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise SetupError(f"the TLS {what} file {path} is a directory, not a file") from exc
    except PermissionError as exc:
        raise SetupError(f"the TLS {what} file {path} cannot be read: permission denied "
                         "(it must be readable by the user running syncd)") from exc
    except OSError as exc:
        raise SetupError(f"the TLS {what} file {path} cannot be read: "
                         f"{exc.strerror or exc}") from exc
    if not data.strip():
        raise SetupError(f"the TLS {what} file {path} is empty")
    return data


def _diagnose(cert_file: Path, cert_pem: bytes, key_file: Path, key_pem: bytes,
              exc: ssl.SSLError) -> str:
    """A plain sentence for an SSLError raised by ``load_cert_chain``."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return (f"the TLS key {key_file} does not belong to the certificate {cert_file} "
                "(they must be generated together)")
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return (f"the TLS certificate file {cert_file} does not hold a PEM certificate "
                "(it should contain '-----BEGIN CERTIFICATE-----')")
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return (f"the TLS key {key_file} is protected by a passphrase; "
                "syncd needs an unencrypted key (keep it readable by its owner only)")
    except ValueError:
        return (f"the TLS key file {key_file} does not hold a PEM private key "
                "(it should contain '-----BEGIN ... PRIVATE KEY-----')")
    except Exception:  # e.g. UnsupportedAlgorithm: only a better message is at stake
        log.debug("could not parse %s for diagnosis", key_file, exc_info=True)
    return (f"the TLS certificate {cert_file} and key {key_file} cannot be used together: "
            f"{exc.reason or exc}")


def _warn_if_not_current(cert_file: Path, cert_pem: bytes) -> None:
    """Log (do not refuse) a leaf certificate outside its validity period."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        return
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        log.warning("the TLS certificate %s expired on %s; agents will refuse to connect "
                    "until it is renewed", cert_file, leaf.not_valid_after_utc.date())
    elif leaf.not_valid_before_utc > now:
        log.warning("the TLS certificate %s is not valid before %s; agents will refuse to "
                    "connect until then (check this server's clock)", cert_file,
                    leaf.not_valid_before_utc.isoformat(timespec="minutes"))


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """An SSL context serving ``cert_file`` (PEM, chain allowed) with ``key_file`` (PEM).

    Offers TLS 1.2 and later only. Raises :class:`SetupError` with a plain
    message when a file is missing, unreadable, not PEM, passphrase-protected,
    or when the key does not match the certificate.
    """
    cert_file, key_file = Path(cert_file), Path(key_file)
    cert_pem = _read(cert_file, "certificate")
    key_pem = _read(key_file, "key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _EncryptedKey as exc:
        raise SetupError(f"the TLS key {key_file} is protected by a passphrase; syncd needs "
                         "an unencrypted key (keep it readable by its owner only)") from exc
    except ssl.SSLError as exc:
        raise SetupError(_diagnose(cert_file, cert_pem, key_file, key_pem, exc)) from exc
    except OSError as exc:  # the files changed between the read above and now
        raise SetupError(f"cannot load the TLS certificate {cert_file} and key {key_file}: "
                         f"{exc.strerror or exc}") from exc
    _warn_if_not_current(cert_file, cert_pem)
    return context
