"""The key and certificate files of an ``ssl:`` endpoint, checked with a precise reason.

Twisted reads these files while parsing the endpoint and reports a mismatch or a bad
file with OpenSSL's error list; the config check runs this first so that the daemon and
``jmappushctl check-config`` name the file and the problem instead.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from jmappushd.endpointargs import endpoint_arguments

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_SSL_POSITIONAL = ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
                   "extraCertChain", "dhParameters")


def check_ssl_endpoint(description: str) -> None:
    """Raise ValueError naming the file if the endpoint's key or certificate is unusable.

    The names and defaults are Twisted's: ``privateKey`` (default ``server.pem``),
    ``certKey`` (default: the key file, which then holds both), ``extraCertChain``.
    """
    args, kwargs = endpoint_arguments(description)
    named = dict(zip(_SSL_POSITIONAL, args[1:], strict=False)) | kwargs
    key_path = named.get("privateKey", "server.pem")
    cert_path = named.get("certKey", key_path)
    check_key_and_certificate(key_path, cert_path)
    chain = named.get("extraCertChain")
    if chain is not None and not _blocks(_read(chain), b"CERTIFICATE"):
        raise ValueError(f"{chain}: no PEM certificate (extraCertChain)")


def check_key_and_certificate(key_path: str, cert_path: str) -> None:
    """Both files readable, PEM, the key unencrypted, and the key the certificate's."""
    certificates = _blocks(_read(cert_path), b"CERTIFICATE")
    if not certificates:
        raise ValueError(f"{cert_path}: no PEM certificate (certKey)")
    try:
        certificate = x509.load_pem_x509_certificate(certificates[0])
    except ValueError as e:
        raise ValueError(f"{cert_path}: the certificate does not parse: {e}") from None
    keys = [b for b in _PEM.finditer(_read(key_path)) if b.group(1).endswith(b"PRIVATE KEY")]
    if not keys:
        raise ValueError(f"{key_path}: no PEM private key (privateKey)")
    try:
        key = load_pem_private_key(keys[0].group(0), password=None)
    except TypeError:  # cryptography's answer to an encrypted key without a password
        raise ValueError(f"{key_path}: the private key is encrypted; ssl: endpoints need it "
                         "unencrypted (readable by the daemon's user only)") from None
    except ValueError as e:
        raise ValueError(f"{key_path}: the private key does not parse: {e}") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ValueError(f"the private key in {key_path} does not match the certificate in "
                         f"{cert_path}")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None


def _blocks(data: bytes, label: bytes) -> list[bytes]:
    return [m.group(0) for m in _PEM.finditer(data) if m.group(1) == label]
