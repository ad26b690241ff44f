"""Load generator: ``Core/echo`` round trips over HTTP (keep-alive, Basic) or one WebSocket.

Four modes, each bounded by ``--seconds`` and ``--max-requests``:
``http-seq`` one keep-alive connection, one request at a time; ``ws-seq`` one
WebSocket, one request at a time; ``http-par`` ``--inflight`` keep-alive
connections each with one request outstanding (HTTP/1.1 has no multiplexing);
``ws-par`` one WebSocket with ``--inflight`` requests outstanding. Prints one
JSON line: requests, errors, seconds, rate and latency percentiles. ``--request``
replaces the echo with another JMAP request (a file holding ``using`` and
``methodCalls``) and ``--expect`` counts an answer without that text as an error
(the gateway benchmark sends ``Mailbox/get``, where a 200 may carry a method error);
``--warm`` makes one untimed request per connection before the clock starts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import socket
import sys
import time

from benchmarks.load_clients import ws_frame, ws_frames

ECHO = {"using": ["urn:ietf:params:jmap:core"],
        "methodCalls": [["Core/echo", {"hello": "world", "n": 1}, "c1"]]}
_clock = time.perf_counter_ns


def http_request(host: str, port: int, auth: str, path: str,
                 request: dict[str, object] = ECHO) -> bytes:
    body = json.dumps(request).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def http_response(buf: bytearray) -> tuple[int, bool] | None:
    """If ``buf`` holds a complete response: ``(its length, status was 200)``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = 0
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line[15:])
    total = end + 4 + length
    if len(buf) < total:
        return None
    return total, head.startswith(b"http/1.1 200")


def ws_connect(host: str, port: int, auth: str, path: str) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n"
                  f"Authorization: {auth}\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        buf += chunk
    if buf[9:12] != b"101":
        raise ConnectionError(f"WebSocket handshake refused: {buf[:80]!r}")
    return sock


def ws_message(i: int, request: dict[str, object] = ECHO) -> bytes:
    return ws_frame(1, json.dumps({"@type": "Request", "id": str(i), **request}).encode())


def warm_ws(sock: socket.socket, request: dict[str, object]) -> None:
    """One untimed round trip (``--warm``): the server side is set up before the clock."""
    sock.sendall(ws_message(-1, request))
    buf = bytearray()
    while True:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("closed during the warm-up request")
        buf += data
        for opcode, payload in ws_frames(buf):
            if opcode == 9:
                sock.sendall(ws_frame(10, payload))
            elif opcode == 1:
                return


def warm_http(sock: socket.socket, request: bytes) -> None:
    """One untimed request on a new keep-alive connection (``--warm``): a server that
    forks a process per connection (Cyrus) has forked it before the clock starts."""
    sock.sendall(request)
    buf = bytearray()
    while http_response(buf) is None:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("closed during the warm-up request")
        buf += data


def run_ws(args: argparse.Namespace, inflight: int) -> dict[str, object]:
    sock = ws_connect(args.host, args.port, args.auth, args.ws_path)
    if args.warm:
        warm_ws(sock, args.request)
    buf = bytearray()
    sent_at: dict[str, int] = {}
    latencies: list[int] = []
    errors = done = sent = 0
    deadline = _clock() + int(args.seconds * 1e9)
    start = _clock()
    for _ in range(inflight):
        sent_at[str(sent)] = _clock()
        sock.sendall(ws_message(sent, args.request))
        sent += 1
    while sent_at:
        data = sock.recv(262144)
        if not data:
            break
        buf += data
        for opcode, payload in ws_frames(buf):
            if opcode == 9:
                sock.sendall(ws_frame(10, payload))
                continue
            if opcode != 1:
                continue
            message = json.loads(payload)
            request_id = message.get("requestId")
            if message.get("@type") != "Response" or args.expect not in payload:
                errors += 1
            t = _clock()
            latencies.append(t - sent_at.pop(str(request_id), t))
            done += 1
            if t < deadline and sent < args.max_requests:
                sent_at[str(sent)] = _clock()
                sock.sendall(ws_message(sent, args.request))
                sent += 1
    elapsed = (_clock() - start) / 1e9
    sock.close()
    return summary(done, errors, elapsed, latencies)


def run_http(args: argparse.Namespace, connections: int) -> dict[str, object]:
    request = http_request(args.host, args.port, args.auth, args.api_path, args.request)
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, bytearray]] = {}
    sent_at: dict[int, int] = {}
    latencies: list[int] = []
    errors = done = sent = 0
    warmed = []
    for _ in range(connections if args.warm else 0):
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        warm_http(sock, request)
        warmed.append(sock)
    deadline = _clock() + int(args.seconds * 1e9)
    start = _clock()
    for _ in range(connections):
        if warmed:
            sock = warmed.pop()
        else:
            sock = socket.create_connection((args.host, args.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks[sock.fileno()] = (sock, bytearray())
        ep.register(sock.fileno(), select.EPOLLIN)
        sent_at[sock.fileno()] = _clock()
        sock.send(request)
        sent += 1
    while sent_at:
        for fd, _mask in ep.poll(5.0):
            sock, buf = socks[fd]
            data = sock.recv(262144)
            if not data:
                errors += 1
                sent_at.pop(fd, None)
                ep.unregister(fd)
                continue
            buf += data
            complete = http_response(buf)
            if complete is None:
                continue
            ok = complete[1] and args.expect in buf[: complete[0]]
            del buf[: complete[0]]
            errors += 0 if ok else 1
            t = _clock()
            latencies.append(t - sent_at.pop(fd))
            done += 1
            if t < deadline and sent < args.max_requests:
                sent_at[fd] = _clock()
                sock.send(request)
                sent += 1
    elapsed = (_clock() - start) / 1e9
    for sock, _ in socks.values():
        sock.close()
    return summary(done, errors, elapsed, latencies)


def run_raw(args: argparse.Namespace) -> dict[str, object]:
    """A plain TCP ping-pong between two processes: the floor of any round trip here."""
    server_cpu, client_cpu = (int(c) for c in args.cpus.split(","))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {server_cpu})
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(4096):
            conn.sendall(data)
        os._exit(0)
    os.sched_setaffinity(0, {client_cpu})
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, start = 0, _clock()
    deadline = start + int(args.seconds * 1e9)
    while _clock() < deadline:
        sock.sendall(b"x" * 200)
        sock.recv(4096)
        n += 1
    elapsed = (_clock() - start) / 1e3
    sock.close()
    os.waitpid(pid, 0)
    return {"us_per_round_trip": elapsed / max(1, n)}


def summary(done: int, errors: int, elapsed: float, latencies: list[int]) -> dict[str, object]:
    ordered = sorted(latencies) or [0]
    return {"requests": done, "errors": errors, "seconds": elapsed,
            "rate": done / elapsed if elapsed else 0.0,
            "p50_ms": ordered[len(ordered) // 2] / 1e6,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=("http-seq", "ws-seq", "http-par", "ws-par", "raw"),
                   required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--auth", required=True, help="the Authorization header value")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--api-path", default="/jmap/api/")
    p.add_argument("--ws-path", default="/jmap/ws")
    p.add_argument("--cpus", default="", help="pin this process to these CPUs, e.g. 0")
    p.add_argument("--request", dest="request_path", default="",
                   help="a JSON file with the JMAP request to send")
    p.add_argument("--expect", default="", help="text every answer must contain")
    p.add_argument("--warm", action="store_true",
                   help="one untimed request per connection before the clock starts")
    args = p.parse_args()
    args.request = ECHO
    if args.request_path:
        with open(args.request_path, encoding="utf-8") as f:
            args.request = json.load(f)
    args.expect = args.expect.encode()
    if args.cpus and args.mode != "raw":
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.mode == "raw":
        result = run_raw(args)
    elif args.mode == "http-seq":
        result = run_http(args, 1)
    elif args.mode == "http-par":
        result = run_http(args, args.inflight)
    elif args.mode == "ws-seq":
        result = run_ws(args, 1)
    else:
        result = run_ws(args, args.inflight)
    sys.stdout.write(json.dumps({"type": "result", "mode": args.mode, **result}) + "\n")


if __name__ == "__main__":
    main()
