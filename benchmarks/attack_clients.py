"""Small blocking clients for ``benchmarks.attacks``: HTTP from a chosen source address, a
minimal RFC 6455 client that counts what it receives, and an EventSource line reader.

Each attacker needs to say where it comes from (``127.0.0.x`` on loopback, so a daemon's
per-address rules see distinct clients) and to measure a reply it may not want to hold in
memory (a response of hundreds of megabytes), which the usual client libraries do not
offer together. Nothing here runs a reactor.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

CORE = "urn:ietf:params:jmap:core"
KEEP = 1 << 20
"""Bytes of a reply kept for inspection; the rest is only counted."""


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Reply:
    """One HTTP answer: status, the first bytes of the body, its full size, its time."""

    status: int
    head: bytes
    size: int
    seconds: float
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.head) if self.size <= KEEP else None


def request(port: int, method: str, path: str, *, body: bytes = b"", source: str = "127.0.0.1",
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """One request on a fresh connection from ``source``; the body is counted, not kept."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        kept, size = bytearray(), 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if len(kept) < KEEP:
                kept += chunk[:KEEP - len(kept)]
        return Reply(response.status, bytes(kept), size, time.monotonic() - start,
                     {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def api(port: int, body: Any, authorization: str, source: str = "127.0.0.1",
        timeout: float = 60.0) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, "POST", "/jmap/api/", body=data, source=source, timeout=timeout,
                   headers={"Content-Type": "application/json", "Authorization": authorization})


def echo_request(calls: list[list[Any]]) -> dict[str, Any]:
    return {"using": [CORE], "methodCalls": calls}


def publish(admin_port: int, admin_token: str, changed: dict[str, dict[str, str]]) -> None:
    """``POST /publish`` on the admin listener, as the mail store does (202 expected)."""
    body = json.dumps({"@type": "StateChange", "changed": changed}).encode()
    reply = request(admin_port, "POST", "/publish", body=body,
                    headers={"Authorization": f"Bearer {admin_token}",
                             "Content-Type": "application/json"})
    if reply.status != 202:
        raise RuntimeError(f"publish answered {reply.status}: {reply.head[:200]!r}")


class WebSocket:
    """A JMAP WebSocket (RFC 8887) over a plain socket: text frames out, frames counted in."""

    def __init__(self, port: int, authorization: str, source: str = "127.0.0.1",
                 timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /jmap/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: jmap\r\nAuthorization: {authorization}\r\n\r\n".encode())
        self._buffer = b""
        head = self._until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"WebSocket handshake refused: {head[:200]!r}")

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed by the server")
        self._buffer += chunk

    def _exactly(self, n: int, keep: bool = True) -> bytes:
        kept = bytearray()
        while n:
            if not self._buffer:
                self._fill()
            take, self._buffer = self._buffer[:n], self._buffer[n:]
            n -= len(take)
            if keep and len(kept) < KEEP:
                kept += take[:KEEP - len(kept)]
        return bytes(kept)

    def send(self, message: Any) -> None:
        self.sock.sendall(self.frame(message))

    @staticmethod
    def frame(message: Any) -> bytes:
        """One masked text frame (RFC 6455 §5.2), to send alone or batched."""
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def receive(self) -> tuple[int, bytes, int]:
        """The next frame: ``(opcode, first bytes of its payload, payload size)``."""
        first, second = self._exactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        return first & 0x0F, self._exactly(n), n

    def receive_json(self) -> tuple[Any, int]:
        """The next text message decoded (None when too large to keep) and its size."""
        while True:
            opcode, payload, size = self.receive()
            if opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()}")
            if opcode == 0x1:
                return (json.loads(payload) if size <= KEEP else None), size

    def close(self) -> None:
        self.sock.close()


class EventStream:
    """``GET {eventSourceUrl}`` read event by event (the daemon's chunks are whole events)."""

    def __init__(self, port: int, authorization: str, query: str,
                 last_event_id: str | None = None, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Authorization": authorization, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", f"/jmap/eventsource/?{query}", headers=headers)
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"EventSource answered {self.response.status}")

    def next_event(self) -> dict[str, str]:
        """The next event's fields (``event``, ``id``, ``data``); comments are skipped."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise ConnectionError("stream ended")
            text = line.decode().rstrip("\r\n")
            if not text:
                if fields:
                    return fields
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    def close(self) -> None:
        self.conn.close()
