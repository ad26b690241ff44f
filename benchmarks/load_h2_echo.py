"""Load generator: ``Core/echo`` over one JMAP WebSocket on TLS, via HTTP/1.1 or HTTP/2.

``--proto h1``: the RFC 6455 handshake (``GET`` + ``Upgrade``) on a TLS connection
(ALPN http/1.1); ``--proto h2``: an RFC 8441 extended CONNECT (``:protocol
websocket``) on a TLS connection (ALPN h2), the WebSocket frames as DATA on that
stream. Both send the same masked client frames (``load_clients.ws_frame``) and
parse the server's frames the same way, so the client differs only by the HTTP/2
framing around them. The ``h2`` library opens the connection and the stream; from
then on DATA frames are made and read by hand (:class:`DataFramer`, with both flow
control windows kept), as the HTTP/1.1 client makes its requests by hand, so the
client's own cost does not hide the daemon's (``--h2-library`` keeps the library for
every frame, as runs before 2026-12-02 13:00 did). One untimed request first; then
``--inflight`` requests outstanding (1: sequential) for ``--seconds``. Prints one
JSON line: requests, errors, seconds, rate, p50/p99, and this process's CPU time
per request (what the client itself cost).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import h2.connection
import h2.events
import h2.settings

from benchmarks.load_clients import ws_frame, ws_frames
from benchmarks.load_echo import summary, ws_message
from benchmarks.load_h2_tls import client_context, h2_client, send_all, tls_connect

_clock = time.perf_counter_ns


class DataFramer:
    """Steady-state HTTP/2 for one stream by hand: DATA out within the send windows,
    DATA in acknowledged (WINDOW_UPDATE for stream and connection once half a window is
    read, as ``h2`` does), WINDOW_UPDATE, PING and SETTINGS answered; anything that ends
    the stream or connection (RST_STREAM, GOAWAY, END_STREAM) ends it."""

    def __init__(self, sock: Any, conn: h2.connection.H2Connection, sid: int) -> None:
        self.sock = sock
        self.sid = sid
        self.sid_bytes = sid.to_bytes(4, "big")
        self.send_conn = conn.outbound_flow_control_window
        self.send_stream = conn.streams[sid].outbound_flow_control_window
        self.max_frame = conn.max_outbound_frame_size
        self.recv_window = conn.local_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE]
        self.unacked_conn = self.unacked_stream = 0
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.pending = b""  # the stream's DATA read while waiting for a window

    def send(self, data: bytes) -> None:
        while min(self.send_conn, self.send_stream) < len(data):
            self.pending += self.receive(self.sock.recv(262144))
        self.send_conn -= len(data)
        self.send_stream -= len(data)
        send_all(self.sock, len(data).to_bytes(3, "big") + b"\x00\x00" + self.sid_bytes
                 + data)

    def receive(self, raw: bytes) -> bytes:
        """The stream's DATA in ``raw`` (and what was buffered), answering what needs it."""
        if not raw:
            raise ConnectionError("the server closed the connection")
        buf = self.buf
        buf += raw
        out = b""
        pos = 0
        while len(buf) - pos >= 9:
            n = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + n:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFF_FFFF
            body = bytes(buf[pos + 9:pos + 9 + n])
            pos += 9 + n
            if kind == 0:  # DATA
                if flags & 0x8:
                    body = body[1:len(body) - body[0]]
                self.unacked_conn += n
                if sid == self.sid:
                    self.unacked_stream += n
                    out += body
                if flags & 0x1 and sid == self.sid:
                    raise ConnectionError("the server ended the stream")
            elif kind == 8:  # WINDOW_UPDATE
                increment = int.from_bytes(body[:4], "big") & 0x7FFF_FFFF
                if sid == 0:
                    self.send_conn += increment
                elif sid == self.sid:
                    self.send_stream += increment
            elif kind == 6 and not flags & 0x1:  # PING: answer it
                self.out.append(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + body)
            elif kind == 4 and not flags & 0x1:  # SETTINGS: acknowledge (none change here)
                self.out.append(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            elif kind == 7 or (kind == 3 and sid == self.sid):  # GOAWAY, RST_STREAM
                raise ConnectionError("the server reset the stream or connection")
        del buf[:pos]
        self._acknowledge()
        if self.out:
            send_all(self.sock, b"".join(self.out))
            self.out.clear()
        return out

    def _acknowledge(self) -> None:
        half = self.recv_window // 2
        if self.unacked_stream >= half:
            self.out.append(b"\x00\x00\x04\x08\x00" + self.sid_bytes
                            + self.unacked_stream.to_bytes(4, "big"))
            self.unacked_stream = 0
        if self.unacked_conn >= half:
            self.out.append(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00"
                            + self.unacked_conn.to_bytes(4, "big"))
            self.unacked_conn = 0


class Socket:
    """One WebSocket: ``send(bytes)`` of client frames, ``recv()`` of server bytes."""

    def __init__(self, args: argparse.Namespace) -> None:
        alpn = "h2" if args.proto == "h2" else "http/1.1"
        self.sock = tls_connect(client_context(args.cafile, alpn), alpn, args.host,
                                args.port)
        self.h2: h2.connection.H2Connection | None = None
        self.framer: DataFramer | None = None
        self.sid = 0
        if args.proto == "h2":
            self._open_h2(args)
        else:
            self._open_h1(args)

    def _open_h1(self, args: argparse.Namespace) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        send_all(self.sock, (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n"
            f"Authorization: {args.auth}\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            buf += chunk
        if buf[9:12] != b"101":
            raise ConnectionError(f"handshake refused: {buf[:80]!r}")
        self.early = buf[buf.index(b"\r\n\r\n") + 4:]

    def _open_h2(self, args: argparse.Namespace) -> None:
        conn = self.h2 = h2_client()
        self.sid = conn.get_next_available_stream_id()
        conn.send_headers(self.sid, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":path", args.path.encode()), (b":authority", f"{args.host}:{args.port}".encode()),
            (b"sec-websocket-version", b"13"), (b"sec-websocket-protocol", b"jmap"),
            (b"authorization", args.auth.encode())])
        send_all(self.sock, conn.data_to_send())
        self.early = b""
        status = None
        while status is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the CONNECT's answer")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(b":status")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, self.sid)
                    self.early += event.data
            send_all(self.sock, conn.data_to_send())
        if status != b"200":
            raise ConnectionError(f"extended CONNECT refused: {status!r}")
        if not args.h2_library:
            self.framer = DataFramer(self.sock, conn, self.sid)

    def send(self, frame: bytes) -> None:
        if self.framer is not None:
            self.framer.send(frame)
        elif self.h2 is None:
            send_all(self.sock, frame)
        else:
            self.h2.send_data(self.sid, frame)
            send_all(self.sock, self.h2.data_to_send())

    def recv(self) -> bytes:
        """The next bytes of the WebSocket (blocking); b"" once the peer is gone."""
        if self.early:
            data, self.early = self.early, b""
            return data
        if self.framer is not None and self.framer.pending:
            data, self.framer.pending = self.framer.pending, b""
            return data
        while True:
            raw = self.sock.recv(262144)
            if self.framer is not None:
                try:
                    out = self.framer.receive(raw)
                except ConnectionError:
                    return b""
                if out:
                    return out
                continue
            if not raw or self.h2 is None:
                return raw
            out = b""
            for event in self.h2.receive_data(raw):
                if isinstance(event, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
                    if event.stream_id == self.sid:
                        out += event.data
                elif (isinstance(event, h2.events.StreamReset | h2.events.StreamEnded)
                      and event.stream_id == self.sid):
                    return b""
            pending = self.h2.data_to_send()
            if pending:
                send_all(self.sock, pending)
            if out:
                return out

    def close(self) -> None:
        self.sock.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    ws = Socket(args)
    buf = bytearray()

    def messages() -> list[bytes]:
        """Text payloads of the next complete frames (answering pings)."""
        while True:
            data = ws.recv()
            if not data:
                raise ConnectionError("the WebSocket ended")
            buf.extend(data)
            texts = []
            for opcode, payload in ws_frames(buf):
                if opcode == 9:
                    ws.send(ws_frame(10, payload))
                elif opcode == 1:
                    texts.append(payload)
            if texts:
                return texts

    ws.send(ws_message(-1))  # untimed: the session's first request
    messages()
    sent_at: dict[str, int] = {}
    latencies: list[int] = []
    errors = done = sent = 0
    cpu0 = time.process_time()
    start = _clock()
    deadline = start + int(args.seconds * 1e9)
    for _ in range(args.inflight):
        sent_at[str(sent)] = _clock()
        ws.send(ws_message(sent))
        sent += 1
    while sent_at:
        for payload in messages():
            message = json.loads(payload)
            if message.get("@type") != "Response":
                errors += 1
            t = _clock()
            latencies.append(t - sent_at.pop(str(message.get("requestId")), t))
            done += 1
            if t < deadline:
                sent_at[str(sent)] = _clock()
                ws.send(ws_message(sent))
                sent += 1
    elapsed = (_clock() - start) / 1e9
    cpu = time.process_time() - cpu0
    ws.close()
    return {**summary(done, errors, elapsed, latencies),
            "client_cpu_us_per_request": cpu / max(1, done) * 1e6}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--proto", choices=("h1", "h2"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--path", default="/jmap/ws")
    p.add_argument("--auth", required=True, help="the Authorization header value")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--h2-library", action="store_true",
                   help="frame every DATA frame with the h2 library (the older client)")
    args = p.parse_args(argv)
    result = run(args)
    sys.stdout.write(json.dumps({"type": "result", "proto": args.proto,
                                 "inflight": args.inflight, **result}) + "\n")


if __name__ == "__main__":
    main()
