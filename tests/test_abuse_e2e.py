"""End to end: the issue 11 amplification and deep-reference attacks against
``twistd -n jmappushd`` as a subprocess, with real HTTP and WebSocket clients; the
daemon's memory is read from /proc/<pid>/status and its log from its stdout."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import defer

from jmappushd.jmap.ijson import MAX_NESTING
from tests.abuse_requests import amplification, deepening, nested, ref
from tests.daemon_process import DaemonProcess
from tests.support import basic
from tests.test_websocket_helpers import Client, basic_header, connect

CORE = "urn:ietf:params:jmap:core"
LIMIT = 10_000_000  # the default [jmap] max-size-response
ROUNDS = 20


def status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``-style line of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


@asynccontextmanager
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    d = DaemonProcess(tmp_path)
    for name in ("mallory", "bob"):
        d.ctl("user", "add", name, "--password-stdin", stdin="pw\n")
    d.start()
    try:
        yield d
    finally:
        d.stop()


async def post(d: DaemonProcess, body: Any, user: str = "mallory") -> tuple[int, bytes]:
    r = await treq.post(d.base + "/jmap/api/", json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", **basic(user, "pw")})
    return r.code, await r.content()


def check_bounded(response: dict[str, Any], size: int) -> None:
    """The calls that fit are echoes, one fails naming the limit, the rest reference it."""
    kinds = [r[1]["type"] if r[0] == "error" else r[0] for r in response["methodResponses"]]
    first = kinds.index("invalidArguments")
    assert kinds[:first] == ["Core/echo"] * first
    assert kinds[first + 1:] == ["invalidResultReference"] * (len(kinds) - first - 1)
    description = response["methodResponses"][first][1]["description"]
    assert "max-size-response" in description and str(LIMIT) in description
    assert size <= LIMIT + 16 * 300


class Bystander:
    """Another user's Core/echo, sent again and again while the attack runs."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d
        self.latencies: list[float] = []
        self.running = True
        self.done = defer.ensureDeferred(self._loop())

    async def _loop(self) -> None:
        body = {"using": [CORE], "methodCalls": [["Core/echo", {"hi": 1}, "b"]]}
        while self.running:
            started = time.monotonic()
            code, content = await post(self.d, body, "bob")
            assert code == 200 and json.loads(content)["methodResponses"][0][0] == "Core/echo"
            self.latencies.append(time.monotonic() - started)

    async def stop(self) -> list[float]:
        self.running = False
        await self.done
        return self.latencies


async def attack_round(d: DaemonProcess, ws: Client, i: int) -> float:
    """One amplification request over HTTP and one over the WebSocket; the slower time."""
    body = amplification()
    started = time.monotonic()
    code, content = await post(d, body)
    assert code == 200
    check_bounded(json.loads(content), len(content))
    http_time = time.monotonic() - started
    started = time.monotonic()
    ws.send({"@type": "Request", "id": f"w{i}", **body})
    message = await ws.next(timeout=60)
    assert message["@type"] == "Response" and message["requestId"] == f"w{i}"
    check_bounded(message, len(json.dumps(message, separators=(",", ":"))))
    return max(http_time, time.monotonic() - started)


@pytest_twisted.ensureDeferred
async def test_amplification_is_bounded_and_memory_stays_flat(tmp_path: Path) -> None:
    """Issue 11 defect 1: a 2 KB request of 16 Core/echo calls, each referencing the
    previous result twice (it would grow to ~40 MB), gets a response within the default
    max-size-response with the method error, over HTTP and over the WebSocket, each in
    a few seconds at most; across 20 such rounds the daemon's RSS stays flat (old code:
    1 GB), and another user's requests keep being answered promptly throughout."""
    async with daemon(tmp_path) as d:
        assert d.process is not None
        pid = d.process.pid
        ws = await connect(d.base, basic_header("mallory", "pw"))
        bystander = Bystander(d)
        times = [await attack_round(d, ws, i) for i in range(2)]
        warm = status_kib(pid, "VmRSS")
        times += [await attack_round(d, ws, i) for i in range(2, ROUNDS)]
        after = status_kib(pid, "VmRSS")
        latencies = await bystander.stop()
        peak = status_kib(pid, "VmHWM")
        await ws.bye()
    print(f"rounds {max(times):.2f}s max; RSS {warm} KiB -> {after} KiB, peak {peak} KiB; "
          f"bystander {len(latencies)} requests, max {max(latencies):.3f}s")
    assert max(times) < 10.0
    assert after - warm < 48 * 1024, (warm, after)
    assert peak < 400 * 1024, peak
    assert len(latencies) > ROUNDS and max(latencies) < 2.0, latencies


@pytest_twisted.ensureDeferred
async def test_deep_references_get_clear_errors_and_the_log_stays_small(
        tmp_path: Path) -> None:
    """Issue 11 defect 2: a request with a 500-level value in a reference (inside
    max-size-request) is refused as notJSON naming the nesting bound, over HTTP (400)
    and the WebSocket (RequestError), instead of serverFail with a 44 KB traceback per
    call; a reference chain that would pass the bound gets invalidArguments; fifty such
    requests add no traceback and only access-log lines to the daemon's log."""
    deep = {"using": [CORE], "methodCalls": [
        ["Core/echo", {"v": nested(500)}, "c0"],
        *[["Core/echo", {"#v": ref("c0", "/v")}, f"c{i}"] for i in range(1, 16)]]}
    async with daemon(tmp_path) as d:
        log_before = len(d.log())
        for _ in range(50):
            code, content = await post(d, deep)
            problem = json.loads(content)
            assert code == 400 and problem["type"] == "urn:ietf:params:jmap:error:notJSON"
            assert f"deeper than {MAX_NESTING} levels" in problem["detail"]
        ws = await connect(d.base, basic_header("mallory", "pw"))
        ws.send({"@type": "Request", "id": "deep", **deep})
        error = await ws.next()
        assert error["@type"] == "RequestError" and error["requestId"] is None
        assert error["type"].endswith(":notJSON")
        code, content = await post(d, deepening(MAX_NESTING - 8, 12))
        kinds = [r[1].get("type", r[0]) for r in json.loads(content)["methodResponses"]]
        assert code == 200 and kinds[8:] == ["invalidArguments"] + ["invalidResultReference"] * 3
        await ws.bye()
        grown = d.log()[log_before:]
    assert "Traceback" not in grown and "serverFail" not in grown
    assert len(grown) < 52 * 600, len(grown)
