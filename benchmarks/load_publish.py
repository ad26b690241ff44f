"""Load generator: publish StateChanges to the admin endpoint over keep-alive connections.

Round r sets every account's Email state to ``r<r>`` (the last round to
``final``), ``--batch`` accounts per publish, the publishes of all rounds queued
in order and spread over ``--connections`` connections with one request
outstanding each. A later round never overtakes an earlier one for the same
account while a round has more publishes than there are connections. Prints one
JSON line with the publish count, the first send time and the last ack time
(system-wide monotonic nanoseconds).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from collections import deque

from benchmarks.load_echo import http_response

_MONO = time.CLOCK_MONOTONIC


def bodies(accounts: list[str], batch: int, rounds: int) -> deque[bytes]:
    queue: deque[bytes] = deque()
    for r in range(rounds):
        state = "final" if r == rounds - 1 else f"r{r}"
        for start in range(0, len(accounts), batch):
            changed = {a: {"Email": state} for a in accounts[start : start + batch]}
            queue.append(json.dumps({"@type": "StateChange", "changed": changed}).encode())
    return queue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--accounts-file", required=True)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args()
    with open(args.accounts_file) as handle:
        accounts = json.load(handle)
    queue = bodies(accounts, args.batch, args.rounds)
    head = (f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Authorization: Bearer {args.token}\r\nContent-Type: application/json\r\n")
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, bytearray]] = {}
    sent_at: dict[int, int] = {}
    acks: list[int] = []
    errors = 0
    deadline = time.monotonic() + args.max_seconds

    def send(fd: int) -> None:
        body = queue.popleft()
        sent_at[fd] = time.clock_gettime_ns(_MONO)
        socks[fd][0].sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    t_first = time.clock_gettime_ns(_MONO)
    for _ in range(args.connections):
        sock = socket.create_connection(("127.0.0.1", args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[sock.fileno()] = (sock, bytearray())
        ep.register(sock.fileno(), select.EPOLLIN)
        if queue:
            send(sock.fileno())
    t_last = t_first
    while sent_at and time.monotonic() < deadline:
        for fd, _mask in ep.poll(1.0):
            sock, buf = socks[fd]
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the daemon closed a publish connection")
            buf += data
            complete = http_response(buf)
            if complete is None:
                continue
            del buf[: complete[0]]
            t_last = time.clock_gettime_ns(_MONO)
            acks.append(t_last - sent_at.pop(fd))
            errors += 0 if b" 202 " in bytes(data[:16]) else 1
            if queue:
                send(fd)
    acks.sort()
    sys.stdout.write(json.dumps({
        "type": "result", "publishes": len(acks), "errors": errors, "unsent": len(queue),
        "t_first": t_first, "t_last_ack": t_last,
        "ack_p50_ms": acks[len(acks) // 2] / 1e6 if acks else 0.0,
        "ack_p99_ms": acks[int(len(acks) * 0.99)] / 1e6 if acks else 0.0,
    }) + "\n")


if __name__ == "__main__":
    main()
