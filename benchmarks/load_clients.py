"""Load generator: hold many EventSource or WebSocket connections from one process.

Deliberately cheap (raw non-blocking sockets on one epoll, no framework), so on
two cores the client side costs far less than the server it measures. Each
received ``state`` event is timestamped with the system-wide monotonic clock and
filed under its mark, the first state string it carries (resumption tokens are
sealed per user, so the orchestrator cannot know them; each of its publishes
carries a distinct state), so the orchestrator can subtract its own publish time.
Commands arrive as JSON lines on stdin: ``report`` (send receipt times and
counters), ``stop``. The process also stops by itself after ``--max-seconds`` or
when stdin closes.

    python -m benchmarks.load_clients --kind es --port 8080 --count 1000 \\
        --auth-file tokens.txt --src 127.0.0.2
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import re
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)
# The first state of a StateChange's ``changed`` (compact JSON on both servers).
_MARK = re.compile(rb'"changed":\{"[^"]*":\{"[^"]*":"([^"]*)"')
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_MONO = time.CLOCK_MONOTONIC
_clock = time.clock_gettime_ns
PUSH_ENABLE = b'{"@type":"WebSocketPushEnable","dataTypes":null}'
FINAL = b'"final'


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def ws_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete server frame (unmasked) off ``buf``."""
    out: list[tuple[int, bytes]] = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if size - pos < 4:
                break
            length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
        elif length == 127:
            if size - pos < 10:
                break
            length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
        if size < start + length:
            break
        out.append((opcode, bytes(buf[start : start + length])))
        pos = start + length
    if pos:
        del buf[:pos]
    return out



class StdinCommands:
    """The lines a parent writes to a load generator's stdin, read without blocking."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        os.set_blocking(self.fd, False)
        self._pending = b""

    def read(self) -> list[str] | None:
        """The whole lines that arrived; None once the parent closed stdin."""
        data = os.read(self.fd, 65536)
        if not data:
            return None
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        return [line.decode() for line in lines]

    def serve(self, command: Callable[[str], None]) -> bool:
        """Hand each line that arrived to ``command``; False once stdin is closed."""
        lines = self.read()
        for line in lines or ():
            command(line)
        return lines is not None

class Conn:
    __slots__ = ("buf", "final", "index", "sock", "state")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.state = CONNECTING
        self.buf = bytearray()
        self.final = False


class Load:
    """All connections of this process and the statistics the orchestrator asks for."""

    def __init__(self, args: argparse.Namespace, auths: list[str]) -> None:
        self.args = args
        self.kind = args.kind
        self.auths = auths
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.started = 0
        self.pending = 0
        self.opened = 0
        self.failed: dict[str, int] = {}
        self.closed_after_open = 0
        self.closed_why: dict[str, int] = {}
        self.tokens: dict[str, list[int]] = {}
        self.events = 0
        self.finals = 0
        self.pings = 0
        self.last_rx = 0
        self.ready_sent = False
        self.final_sent = False
        self.stop = False

    # -- connecting --

    def request(self, index: int) -> bytes:
        a = self.args
        auth = self.auths[index % len(self.auths)] if self.auths else ""
        lines = [f"GET {a.path} HTTP/1.1", f"Host: {a.host}:{a.port}"]
        if auth:
            lines.append(f"Authorization: {auth}")
        if self.kind == "es":
            lines.append("Accept: text/event-stream")
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                      "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: jmap"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def start_more(self) -> None:
        while self.pending < self.args.concurrency and self.started < self.args.count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            if self.args.src:
                sock.bind((self.args.src, 0))
            try:
                sock.connect((self.args.host, self.args.port))
            except BlockingIOError:
                pass
            except OSError as exc:
                self._fail(f"connect:{errno.errorcode.get(exc.errno or 0, exc.errno)}")
                sock.close()
                self.started += 1
                continue
            conn = Conn(sock, self.started)
            self.conns[sock.fileno()] = conn
            self.ep.register(sock.fileno(), _OUT)
            self.started += 1
            self.pending += 1

    def _fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def _close(self, fd: int, conn: Conn, reason: str) -> None:
        if conn.state in (CONNECTING, HANDSHAKE):
            self.pending -= 1
            self._fail(reason)
        elif conn.state == OPEN:
            self.closed_after_open += 1
            self.closed_why[reason] = self.closed_why.get(reason, 0) + 1
        conn.state = CLOSED
        with contextlib.suppress(OSError):
            self.ep.unregister(fd)
        conn.sock.close()
        del self.conns[fd]

    def writable(self, fd: int, conn: Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(fd, conn, f"connect:{errno.errorcode.get(err, err)}")
            return
        conn.sock.send(self.request(conn.index))
        conn.state = HANDSHAKE
        self.ep.modify(fd, _IN)

    def handshake(self, fd: int, conn: Conn, t: int) -> None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        status = bytes(conn.buf[9:12])
        want = b"200" if self.kind == "es" else b"101"
        if status != want:
            self._close(fd, conn, f"http:{status.decode(errors='replace')}")
            return
        del conn.buf[: end + 4]
        conn.state = OPEN
        self.pending -= 1
        self.opened += 1
        if self.kind == "ws" and self.args.push_enable:
            conn.sock.send(ws_frame(1, PUSH_ENABLE))
        if conn.buf:
            self.feed(fd, conn, t)

    # -- receiving --

    def readable(self, fd: int, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd, conn, "reset")
            return
        t = _clock(_MONO)
        if not data:
            self._close(fd, conn, "eof")
            return
        conn.buf += data
        if conn.state == HANDSHAKE:
            self.handshake(fd, conn, t)
        elif conn.state == OPEN:
            self.feed(fd, conn, t)

    def feed(self, fd: int, conn: Conn, t: int) -> None:
        if self.kind == "es":
            self.feed_es(conn, t)
        else:
            self.feed_ws(fd, conn, t)

    def feed_es(self, conn: Conn, t: int) -> None:
        buf = conn.buf
        end = buf.rfind(b"\n\n")
        if end < 0:
            return
        chunk = bytes(buf[: end + 2])
        del buf[: end + 2]
        for match in _MARK.finditer(chunk):
            self.got(match.group(1), t)
        if not conn.final and FINAL in chunk:
            self.got_final(conn)

    def feed_ws(self, fd: int, conn: Conn, t: int) -> None:
        for opcode, payload in ws_frames(conn.buf):
            if opcode == 1:
                match = _MARK.search(payload)
                if match is not None:
                    self.got(match.group(1), t)
                if not conn.final and FINAL in payload:
                    self.got_final(conn)
            elif opcode == 9:
                self.pings += 1
                conn.sock.send(ws_frame(10, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                self._close(fd, conn, f"ws-close:{code}")
                return

    def got(self, raw: bytes, t: int) -> None:
        self.events += 1
        self.last_rx = t
        token = raw.decode()
        times = self.tokens.get(token)
        if times is None:
            times = self.tokens[token] = []
        times.append(t)
        if self.args.announce and len(times) == self.opened:
            emit(type="done", token=token)

    def got_final(self, conn: Conn) -> None:
        conn.final = True
        self.finals += 1
        if self.finals == self.opened and not self.final_sent:
            self.final_sent = True
            emit(type="final", t=self.last_rx)

    # -- control --

    def command(self, line: str) -> None:
        if not line.strip():
            return
        cmd = json.loads(line).get("cmd")
        if cmd == "report":
            emit(type="report", **self.report(), tokens=self.tokens)
            self.tokens = {}
        elif cmd == "reset":
            self.tokens, self.finals, self.final_sent = {}, 0, False
            for conn in self.conns.values():
                conn.final = False
            emit(type="reset")
        elif cmd == "counters":
            emit(type="counters", **self.report())
        elif cmd == "stop":
            self.stop = True

    def report(self) -> dict[str, Any]:
        return {"opened": self.opened, "open": len(self.conns), "failed": self.failed,
                "closed_after_open": self.closed_after_open, "closed_why": self.closed_why,
                "events": self.events,
                "finals": self.finals, "pings": self.pings, "last_rx": self.last_rx}

    def run(self) -> None:
        stdin = StdinCommands()
        self.ep.register(stdin.fd, _IN)
        deadline = time.monotonic() + self.args.max_seconds
        self.start_more()
        while not self.stop and time.monotonic() < deadline:
            for fd, mask in self.ep.poll(1.0):
                if fd == stdin.fd:
                    if not stdin.serve(self.command):
                        self.stop = True
                        break
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if conn.state == CONNECTING:
                    self.writable(fd, conn)
                elif mask & (_IN | select.EPOLLHUP | select.EPOLLERR):
                    self.readable(fd, conn)
            if self.started < self.args.count:
                self.start_more()
            elif not self.ready_sent and self.pending == 0:
                self.ready_sent = True
                emit(type="ready", **self.report())
        for conn in list(self.conns.values()):
            conn.sock.close()


def emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", choices=("es", "ws"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--src", default="", help="source address, e.g. 127.0.0.2")
    p.add_argument("--auth-file", default="", help="one Authorization value per line")
    p.add_argument("--auth-offset", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--push-enable", action="store_true")
    p.add_argument("--announce", action="store_true",
                   help="print a 'done' line when every connection got a token")
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    if not args.path:
        args.path = ("/jmap/eventsource/?types=*&closeafter=no&ping=30" if args.kind == "es"
                     else "/jmap/ws")
    auths: list[str] = []
    if args.auth_file:
        with open(args.auth_file) as handle:
            every = [line.strip() for line in handle if line.strip()]
        auths = every[args.auth_offset : args.auth_offset + args.count] or every
    Load(args, auths).run()


if __name__ == "__main__":
    main()
