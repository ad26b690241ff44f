"""The key and certificate of ssl: endpoints are checked at config time, each problem as
one line naming the file (the daemon and ``jmappushctl check-config`` share the check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jmappushd.config import ConfigError, parse_config
from jmappushd.endpointargs import endpoint_arguments
from tests.tls_files import cert_pem, key_pem, new_key, write_pair


def listen(endpoint: str, tmp_path: Path) -> tuple[str, ...]:
    return parse_config(f"[server]\nlisten = {endpoint}\n", str(tmp_path / "x.ini"),
                        environ={}).server.listen


def refusal(endpoint: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        listen(endpoint, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'x.ini'}: [server] listen: {endpoint!r}: ")
    return message


def test_matching_pair_passes(tmp_path: Path) -> None:
    """A readable, unencrypted key with its own certificate is accepted, in two files or in
    one (certKey defaults to the privateKey file, as in Twisted)."""
    key, cert = write_pair(tmp_path)
    endpoint = f"ssl:0:privateKey={key}:certKey={cert}"
    assert listen(endpoint, tmp_path) == (endpoint,)
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert listen(f"ssl:0:privateKey={both}", tmp_path) == (f"ssl:0:privateKey={both}",)


def test_mismatched_key_names_both_files(tmp_path: Path) -> None:
    """A key that is not the certificate's is refused naming both files."""
    _key, cert = write_pair(tmp_path)
    other = tmp_path / "other.pem"
    other.write_bytes(key_pem(new_key()))
    message = refusal(f"ssl:0:privateKey={other}:certKey={cert}", tmp_path)
    assert message.endswith(f"the private key in {other} does not match the certificate in "
                            f"{cert}")


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    """A missing file, a file without a certificate and one without a key each say so."""
    key, cert = write_pair(tmp_path)
    missing = tmp_path / "missing.pem"
    assert refusal(f"ssl:0:privateKey={key}:certKey={missing}", tmp_path).endswith(
        f"cannot read {missing}: No such file or directory")
    assert refusal(f"ssl:0:privateKey={key}:certKey={key}", tmp_path).endswith(
        f"{key}: no PEM certificate (certKey)")
    assert refusal(f"ssl:0:privateKey={cert}:certKey={cert}", tmp_path).endswith(
        f"{cert}: no PEM private key (privateKey)")


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    """Twisted's ssl: endpoint cannot ask for a passphrase: an encrypted key is refused."""
    key = new_key()
    key_path, cert_path = tmp_path / "k.pem", tmp_path / "c.pem"
    key_path.write_bytes(key_pem(key, password=b"secret"))
    cert_path.write_bytes(cert_pem(key))
    message = refusal(f"ssl:0:privateKey={key_path}:certKey={cert_path}", tmp_path)
    assert f"{key_path}: the private key is encrypted" in message


def test_garbage_certificate(tmp_path: Path) -> None:
    """A CERTIFICATE block that does not decode is refused naming the file."""
    key, _cert = write_pair(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert f"{bad}: the certificate does not parse" in refusal(
        f"ssl:0:privateKey={key}:certKey={bad}", tmp_path)


def test_ssl_port_out_of_range(tmp_path: Path) -> None:
    """An ssl: endpoint with good files but port 70000 is refused for the port."""
    key, cert = write_pair(tmp_path)
    endpoint = f"ssl:70000:privateKey={key}:certKey={cert}"
    with pytest.raises(ConfigError, match="port 70000 out of range 0-65535"):
        listen(endpoint, tmp_path)


def test_endpoint_arguments_follow_twisted() -> None:
    """Colons separate, the first '=' makes a keyword, a backslash escapes."""
    assert endpoint_arguments("tcp6:8080:interface=\\:\\:1") == (
        ["tcp6", "8080"], {"interface": "::1"})
    assert endpoint_arguments("ssl:443:privateKey=a=b.pem:x") == (
        ["ssl", "443", "x"], {"privateKey": "a=b.pem"})
