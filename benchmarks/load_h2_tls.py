"""TLS and HTTP/2 pieces the HTTP/2 benchmark's load generators share.

The daemon under test listens on an ``ssl:`` endpoint with a certificate made at run
time (:func:`write_self_signed`, for 127.0.0.1); clients trust exactly that file and
offer ``h2`` or ``http/1.1`` through ALPN. Client sockets are opened and TLS-shaken
blocking (one after the other, before anything is timed), then switched to
non-blocking for the measured part; :func:`send_all` waits for room when TLS would
block, :func:`recv_all` drains every decrypted byte a readable socket holds.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.settings

CLIENT_WINDOW = 16 * 1024 * 1024
"""What the h2 clients grant the server per connection and per stream, as browsers do
(Chromium: 15 MiB), so the benchmark measures the server rather than WINDOW_UPDATEs."""


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 key and a one-day certificate for 127.0.0.1 (IP SAN): key path, cert path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jmappushd benchmark")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "bench-key.pem", directory / "bench-cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def client_context(cafile: str, alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols([alpn])
    return context


def tls_connect(context: ssl.SSLContext, alpn: str, host: str, port: int, src: str = "",
                timeout: float = 30.0) -> ssl.SSLSocket:
    """A blocking TLS connection (handshake done, ALPN ``alpn`` checked), TCP_NODELAY."""
    raw = socket.create_connection((host, port), timeout=timeout,
                                   source_address=(src, 0) if src else None)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw, server_hostname=host)
    if sock.selected_alpn_protocol() != alpn:
        chosen = sock.selected_alpn_protocol()
        sock.close()
        raise ConnectionError(f"ALPN chose {chosen!r}, not {alpn!r}")
    return sock


def h2_client() -> h2.connection.H2Connection:
    """A client-side h2 connection with large receive windows, preface queued."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_WINDOW,
        h2.settings.SettingCodes.ENABLE_PUSH: 0})
    conn.initiate_connection()
    conn.increment_flow_control_window(CLIENT_WINDOW - 65_535)
    return conn


def send_all(sock: ssl.SSLSocket, data: bytes) -> None:
    """Write ``data`` on a (possibly non-blocking) TLS socket, waiting for room."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantWriteError, BlockingIOError):
            select.select([], [sock], [], 5.0)
            continue
        except ssl.SSLWantReadError:
            select.select([sock], [], [], 5.0)
            continue
        view = view[sent:]


def recv_all(sock: ssl.SSLSocket) -> bytes | None:
    """Every byte a non-blocking TLS socket has now (b"" if none yet), None at EOF."""
    chunks: list[bytes] = []
    while True:
        try:
            data = sock.recv(262144)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            break
        except (ConnectionError, ssl.SSLError):
            return None if not chunks else b"".join(chunks)
        if not data:
            return None if not chunks else b"".join(chunks)
        chunks.append(data)
    return b"".join(chunks)
