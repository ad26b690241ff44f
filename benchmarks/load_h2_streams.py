"""Load generator: EventSource streams over TLS, as HTTP/2 streams or HTTP/1.1 connections.

``--proto h2``: ``--connections`` TLS connections (ALPN h2), each carrying
``--streams`` EventSource GETs (the daemon allows 100 streams per connection);
``--proto h1``: ``--connections`` TLS connections (ALPN http/1.1), one stream each.
All connections are opened and TLS-shaken first, one after the other, then the
streams are requested; the measured part is one epoll loop over non-blocking
sockets. Every ``state`` event is stamped with the system-wide monotonic clock when
its bytes are read from the socket (before HTTP/2 frame parsing, so the figure is
when the daemon's bytes arrived, not how fast this process parses them) and filed
under its mark, the first state it carries, as :mod:`benchmarks.load_clients` does;
the same JSON-lines protocol on stdin/stdout (``ready``, ``done`` with
``--announce``, ``report``, ``counters``, ``stop``). Bounded by ``--max-seconds``.

    python -m benchmarks.load_h2_streams --proto h2 --connections 1 --streams 100 \\
        --port 8443 --cafile cert.pem --auth "Bearer ..." --announce
"""

from __future__ import annotations

import argparse
import json
import select
import ssl
import time
from typing import Any

import h2.connection
import h2.events
import h2.exceptions

from benchmarks.load_clients import _MARK, StdinCommands, emit
from benchmarks.load_h2_tls import (
    client_context,
    h2_client,
    recv_all,
    send_all,
    tls_connect,
)

PENDING, OPEN, REFUSED = range(3)
_clock = time.clock_gettime_ns
_MONO = time.CLOCK_MONOTONIC


class Stream:
    """One EventSource response: HTTP/1.1 connection or HTTP/2 stream."""

    __slots__ = ("buf", "state")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = PENDING


class Conn:
    __slots__ = ("h2", "sock", "streams")

    def __init__(self, sock: ssl.SSLSocket, conn: h2.connection.H2Connection | None) -> None:
        self.sock = sock
        self.h2 = conn
        self.streams: dict[int, Stream] = {}


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.opened = 0
        self.failed: dict[str, int] = {}
        self.closed_after_open = 0
        self.tokens: dict[str, list[int]] = {}
        self.events = 0
        self.bytes_in = 0
        self.stop = False
        self.ready_sent = False

    # -- opening --

    def open_all(self) -> None:
        a = self.args
        context = client_context(a.cafile, "h2" if a.proto == "h2" else "http/1.1")
        for _ in range(a.connections):
            try:
                sock = tls_connect(context, "h2" if a.proto == "h2" else "http/1.1",
                                   a.host, a.port, a.src)
            except (OSError, ConnectionError) as exc:
                self._fail(f"connect:{type(exc).__name__}")
                continue
            conn = Conn(sock, h2_client() if a.proto == "h2" else None)
            if conn.h2 is not None:
                for _ in range(a.streams):
                    sid = conn.h2.get_next_available_stream_id()
                    conn.h2.send_headers(sid, [
                        (b":method", b"GET"), (b":scheme", b"https"),
                        (b":path", a.path.encode()),
                        (b":authority", f"{a.host}:{a.port}".encode()),
                        (b"authorization", a.auth.encode()),
                        (b"accept", b"text/event-stream")], end_stream=True)
                    conn.streams[sid] = Stream()
                send_all(sock, conn.h2.data_to_send())
            else:
                conn.streams[0] = Stream()
                send_all(sock, (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
                                f"Authorization: {a.auth}\r\n"
                                "Accept: text/event-stream\r\n\r\n").encode())
            sock.setblocking(False)
            self.conns[sock.fileno()] = conn
            self.ep.register(sock.fileno(), select.EPOLLIN)

    def expected(self) -> int:
        a = self.args
        return int(a.connections * (a.streams if a.proto == "h2" else 1))

    def _fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    # -- receiving --

    def readable(self, fd: int, conn: Conn) -> None:
        data = recv_all(conn.sock)
        t = _clock(_MONO)
        if data is None:
            self._lost(fd, conn, "eof")
            return
        if not data:
            return
        self.bytes_in += len(data)
        if conn.h2 is None:
            self.feed(conn.streams[0], bytes(data), t, h1=True)
            return
        try:
            events = conn.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._lost(fd, conn, "h2-error")
            return
        for event in events:
            sid = getattr(event, "stream_id", 0)
            stream = conn.streams.get(sid)
            if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                status = dict(event.headers).get(b":status", b"")
                if status == b"200":
                    stream.state = OPEN
                    self.opened += 1
                else:
                    self._fail(f"http:{status.decode(errors='replace')}")
                    del conn.streams[sid]
            elif isinstance(event, h2.events.DataReceived):
                conn.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                if stream is not None and stream.state == OPEN:
                    self.feed(stream, event.data, t, h1=False)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                if stream is not None:
                    del conn.streams[sid]
                    if stream.state == OPEN:
                        self.closed_after_open += 1
                    else:
                        self._fail("reset")
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._lost(fd, conn, "goaway")
                return
        pending = conn.h2.data_to_send()
        if pending:
            send_all(conn.sock, pending)

    def feed(self, stream: Stream, data: bytes, t: int, h1: bool) -> None:
        buf = stream.buf
        buf += data
        if h1 and stream.state == PENDING:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if bytes(buf[9:12]) != b"200":
                self._fail(f"http:{bytes(buf[9:12]).decode(errors='replace')}")
                stream.state = REFUSED
            else:
                stream.state = OPEN
                self.opened += 1
            del buf[: end + 4]
        if stream.state != OPEN:
            buf.clear()
            return
        end = buf.rfind(b"\n\n")
        if end < 0:
            return
        chunk = bytes(buf[: end + 2])
        del buf[: end + 2]
        for match in _MARK.finditer(chunk):
            self.got(match.group(1).decode(), t)

    def got(self, token: str, t: int) -> None:
        self.events += 1
        times = self.tokens.get(token)
        if times is None:
            times = self.tokens[token] = []
        times.append(t)
        if self.args.announce and len(times) == self.opened:
            emit(type="done", token=token)

    def _lost(self, fd: int, conn: Conn, reason: str) -> None:
        with_streams = sum(1 for s in conn.streams.values() if s.state == OPEN)
        self.closed_after_open += with_streams
        if not with_streams:
            self._fail(reason)
        self.ep.unregister(fd)
        conn.sock.close()
        del self.conns[fd]

    # -- control --

    def report(self) -> dict[str, Any]:
        return {"opened": self.opened, "open": sum(
            1 for c in self.conns.values() for s in c.streams.values() if s.state == OPEN),
            "connections": len(self.conns), "failed": self.failed,
            "closed_after_open": self.closed_after_open, "events": self.events,
            "bytes_in": self.bytes_in, "cpu_s": time.process_time()}

    def command(self, line: str) -> None:
        if not line.strip():
            return
        cmd = json.loads(line).get("cmd")
        if cmd == "report":
            emit(type="report", **self.report(), tokens=self.tokens)
            self.tokens = {}
        elif cmd == "counters":
            emit(type="counters", **self.report())
        elif cmd == "stop":
            self.stop = True

    def run(self) -> None:
        deadline = time.monotonic() + self.args.max_seconds
        self.open_all()
        stdin = StdinCommands()
        self.ep.register(stdin.fd, select.EPOLLIN)
        while not self.stop and time.monotonic() < deadline:
            for fd, _mask in self.ep.poll(1.0):
                if fd == stdin.fd:
                    if not stdin.serve(self.command):
                        self.stop = True
                        break
                    continue
                conn = self.conns.get(fd)
                if conn is not None:
                    self.readable(fd, conn)
            failed = sum(self.failed.values())
            if not self.ready_sent and self.opened + failed >= self.expected():
                self.ready_sent = True
                emit(type="ready", **self.report())
        for conn in self.conns.values():
            conn.sock.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proto", choices=("h1", "h2"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--path", default="/jmap/eventsource/?types=*&closeafter=no&ping=30")
    p.add_argument("--auth", required=True, help="the Authorization value of every stream")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--streams", type=int, default=1, help="per connection (h2 only)")
    p.add_argument("--src", default="", help="source address, e.g. 127.0.0.2")
    p.add_argument("--announce", action="store_true",
                   help="print a 'done' line when every stream got a mark")
    p.add_argument("--max-seconds", type=float, default=600.0)
    Load(p.parse_args(argv)).run()


if __name__ == "__main__":
    main()
