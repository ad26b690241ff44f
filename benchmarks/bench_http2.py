"""HTTP/2 against HTTP/1.1 on the same TLS listener: EventSource streams and WebSocket echo.

One daemon (``twistd -n jmappushd``) listens on an ``ssl:`` endpoint with a
certificate made at run time and ``[server] http2 = true``; clients pick the
protocol through ALPN, so both kinds reach the same process, heap and code.

EventSource (:mod:`benchmarks.load_h2_streams`): N streams as HTTP/2 streams,
at most 100 on one connection (the daemon's ``SETTINGS_MAX_CONCURRENT_STREAMS``;
so N = 100 is ONE connection and N = 1,000 is ten), against N HTTP/1.1 TLS
connections. Both groups are held at once, each by its own user (so each publish
reaches one group only); the daemon's RSS is read before and after each group
opened (memory per stream), then publishes alternate between the two accounts
round by round (fan-out latency: publish to every stream having the event, one
sample per stream per round). Two runs per size on fresh daemons, the second with
the groups opened in the other order and the users swapped, so neither the heap
the first group leaves nor the machine's drift favours one protocol.

WebSocket (:mod:`benchmarks.load_h2_echo`): ``Core/echo`` over one WebSocket opened
with an RFC 8441 extended CONNECT against one opened with the HTTP/1.1 upgrade,
sequential and 16 in flight, in alternating slices (a new TLS connection per
slice, one untimed request first); the whole comparison twice. The daemon's CPU
time per request is read for every slice too (it is much less noisy than a rate).
Both clients frame by hand once the WebSocket is open (the HTTP/2 one its DATA frames,
with flow control, after ``h2`` opened the stream), so neither client's own framing
library weighs on the comparison.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    ROOT,
    Child,
    cpu_seconds,
    expect_all,
    pause,
    percentiles,
    rss_kib,
    split,
    stop_all,
)
from benchmarks.context import ECHO_PASSWORD, ECHO_USER, Context
from benchmarks.load_h2_tls import write_self_signed
from benchmarks.server import BACKLOG, Daemon

SECTIONS = {
    "server": "http2 = true",
    "event-source": "event-source-throttle = 0\nmax-connections-per-user = 20000",
    "websocket": "ws-throttle = 0",
    "jmap": "max-concurrent-requests = 128",
}
STREAMS_PER_CONNECTION = 100
"""What the daemon advertises (``jmappushd.web.http2.MAX_CONCURRENT_STREAMS``)."""
PROTOS = ("h1", "h2")
WARMUP_ROUNDS = 3
GAP_S = 0.05
TARGETS = {"memory_ratio": 1.5, "p99_ratio": 1.5, "echo_ratio": 0.7}
FULL: dict[str, Any] = {"sizes": [100, 1_000], "rounds": {100: 30, 1_000: 25}, "runs": 2,
        "echo_slices": 5, "echo_slice_s": 1.0, "echo_passes": 2}
SMOKE: dict[str, Any] = {"sizes": [10], "rounds": {10: 3}, "runs": 1,
         "echo_slices": 1, "echo_slice_s": 0.3, "echo_passes": 1}


class TLSDaemon(Daemon):
    """The benchmark daemon with its JMAP listener on ``ssl:`` (HTTP/2 by ALPN)."""

    def __init__(self, ctx: Context, key: Path, cert: Path, tag: str) -> None:
        super().__init__(ctx.workdir, ctx.state_dir, SECTIONS, tag=tag)
        self.cafile = str(cert)
        plain = f"listen = tcp:{self.port}:interface=127.0.0.1:backlog={BACKLOG}"
        text = self.config_path.read_text()
        if plain not in text:
            raise RuntimeError(f"{self.config_path}: no {plain!r} to turn into ssl:")
        text = text.replace(plain, f"listen = ssl:{self.port}:interface=127.0.0.1:"
                                   f"backlog={BACKLOG}:privateKey={key}:certKey={cert}")
        text = text.replace("public-url = http://", "public-url = https://")
        self.config_path.write_text(text)


# -- EventSource streams --

def stream_group(daemon: TLSDaemon, proto: str, n: int, auth: str, src_base: int,
                 max_seconds: float) -> list[Child]:
    """Load processes holding ``n`` streams of ``proto`` (two processes from 1,000 on)."""
    procs = 2 if n >= 1_000 else 1
    if proto == "h2":
        connections = split(math.ceil(n / STREAMS_PER_CONNECTION), procs)
        per = min(n, STREAMS_PER_CONNECTION)
    else:
        connections, per = split(n, procs), 1
    children = []
    for i, count in enumerate(connections):
        children.append(Child([
            "benchmarks.load_h2_streams", "--proto", proto, "--port", str(daemon.port),
            "--cafile", daemon.cafile, "--auth", auth, "--connections", str(count),
            "--streams", str(per), "--src", f"127.0.0.{src_base + i}", "--announce",
            "--path", daemon.es_path.format(ping=30), "--max-seconds", str(max_seconds)],
            name=f"{proto}-streams{i}"))
    return children


def _ready(children: list[Child], timeout: float) -> dict[str, Any]:
    reports = expect_all(children, "ready", timeout)
    failed: dict[str, int] = {}
    for r in reports:
        for reason, k in r["failed"].items():
            failed[reason] = failed.get(reason, 0) + k
    return {"opened": sum(r["opened"] for r in reports), "failed": failed,
            "connections": sum(r["connections"] for r in reports)}


def streams_run(ctx: Context, key: Path, cert: Path, n: int, rounds: int,
                order: tuple[str, str], who: dict[str, tuple[str, str]],
                tag: str) -> dict[str, Any]:
    """One fresh daemon: both groups opened in ``order`` (RSS around each), then
    publishes alternating between their accounts."""
    daemon = TLSDaemon(ctx, key, cert, tag)
    groups: dict[str, list[Child]] = {}
    out: dict[str, Any] = {"order": list(order), "n": n, "rounds": rounds}
    daemon.start()
    try:
        warm = [c for i, p in enumerate(PROTOS)
                for c in stream_group(daemon, p, min(n, 10), who[p][0], 10 + i, 60)]
        _ready(warm, ctx.connect_timeout)
        stop_all(warm)
        pause(ctx.settle)
        for i, proto in enumerate(order):
            before = rss_kib(daemon.pid)
            started = time.monotonic()
            groups[proto] = stream_group(daemon, proto, n, who[proto][0], 2 + 2 * i,
                                         ctx.max_seconds)
            connect = _ready(groups[proto], ctx.connect_timeout)
            connect["seconds"] = round(time.monotonic() - started, 2)
            pause(ctx.settle)
            after = rss_kib(daemon.pid)
            out[proto] = {"connect": connect, "rss_before_kib": before,
                          "rss_after_kib": after,
                          "kib_per_stream": (after - before) / max(1, connect["opened"])}
        sent = _alternate(daemon, groups, who, order, WARMUP_ROUNDS, 0)
        for proto in order:
            _reports(groups[proto])  # drop the warm-up receipts
        sent = _alternate(daemon, groups, who, order, rounds, WARMUP_ROUNDS)
        for proto in order:
            reports = _reports(groups[proto])
            out[proto].update(_latencies(sent[proto]["marks"], reports))
            out[proto]["daemon_cpu_ms_per_round"] = (
                sent[proto]["cpu"] / max(1, rounds) * 1e3)
            out[proto]["client_cpu_s"] = sum(r["cpu_s"] for r in reports)
            out[proto]["dropped"] = sum(r["closed_after_open"] for r in reports)
    finally:
        for children in groups.values():
            stop_all(children)
        daemon.stop()
    return out


def _reports(children: list[Child]) -> list[dict[str, Any]]:
    for child in children:
        child.send(cmd="report")
    return expect_all(children, "report", 120)


def _alternate(daemon: TLSDaemon, groups: dict[str, list[Child]],
               who: dict[str, tuple[str, str]], order: tuple[str, str], rounds: int,
               first: int) -> dict[str, dict[str, Any]]:
    """``rounds`` publishes per group, taking turns; each waits until its group has it."""
    publisher = daemon.publisher()
    sent: dict[str, dict[str, Any]] = {p: {"marks": [], "cpu": 0.0} for p in order}
    try:
        for r in range(first, first + rounds):
            for proto in order:
                cpu = cpu_seconds(daemon.pid)
                mark, t0, _t1 = publisher.publish({who[proto][1]: {"Email": f"{proto}{r}"}})
                expect_all(groups[proto], "done", 60)
                sent[proto]["cpu"] += cpu_seconds(daemon.pid) - cpu
                sent[proto]["marks"].append((mark, t0))
                pause(GAP_S)
    finally:
        publisher.close()
    return sent


def _latencies(marks: list[tuple[str, int]], reports: list[dict[str, Any]]
               ) -> dict[str, Any]:
    samples: list[int] = []
    last: list[int] = []
    missing = 0
    expected = sum(r["opened"] for r in reports)
    for mark, t0 in marks:
        times = [t for r in reports for t in r["tokens"].get(mark, [])]
        missing += expected - len(times)
        samples += [t - t0 for t in times]
        if times:
            last.append(max(times) - t0)
    return {"latency_ms": percentiles(samples), "last_stream_ms": percentiles(last),
            "missing": missing}


# -- WebSocket echo --

def echo_slice(daemon: TLSDaemon, proto: str, inflight: int, seconds: float
               ) -> dict[str, Any]:
    auth = "Basic " + base64.b64encode(f"{ECHO_USER}:{ECHO_PASSWORD}".encode()).decode()
    cpu = cpu_seconds(daemon.pid)
    result = subprocess.run(
        [PYTHON, "-m", "benchmarks.load_h2_echo", "--proto", proto, "--port",
         str(daemon.port), "--cafile", daemon.cafile, "--auth", auth, "--seconds",
         str(seconds), "--inflight", str(inflight)],
        capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60, check=False)
    used = cpu_seconds(daemon.pid) - cpu
    if result.returncode != 0:
        raise RuntimeError(f"load_h2_echo {proto} failed: {result.stderr[-2000:]}")
    out = dict(json.loads(result.stdout.strip().splitlines()[-1]))
    out["daemon_cpu_s"] = used  # includes the slice's TLS and WebSocket handshakes
    return out


def echo_pass(daemon: TLSDaemon, slices: int, seconds: float, flip: bool
              ) -> dict[str, Any]:
    """Sequential, then 16 in flight; h1 and h2 take turns slice by slice."""
    out: dict[str, Any] = {}
    for label, inflight in (("sequential", 1), ("inflight16", 16)):
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PROTOS}
        for i in range(slices):
            turn = PROTOS if (i % 2 == 0) != flip else PROTOS[::-1]
            for proto in turn:
                runs[proto].append(echo_slice(daemon, proto, inflight, seconds))
        merged = {}
        for proto, rs in runs.items():
            requests = sum(r["requests"] for r in rs)
            elapsed = sum(r["seconds"] for r in rs)
            merged[proto] = {
                "requests": requests, "errors": sum(r["errors"] for r in rs),
                "rate": requests / elapsed if elapsed else 0.0,
                "slice_rates": [round(r["rate"]) for r in rs],
                "p50_ms": sorted(r["p50_ms"] for r in rs)[len(rs) // 2],
                "p99_ms": max(r["p99_ms"] for r in rs),
                "daemon_cpu_us_per_request": sum(r["daemon_cpu_s"] for r in rs)
                / max(1, requests) * 1e6,
                "client_cpu_us_per_request": sum(
                    r["client_cpu_us_per_request"] * r["requests"] for r in rs)
                / max(1, requests)}
        merged["ratio"] = merged["h2"]["rate"] / max(1e-9, merged["h1"]["rate"])
        out[label] = merged
    return out


# -- the benchmark --

def run(ctx: Context) -> dict[str, Any]:
    plan = SMOKE if ctx.smoke else FULL
    key, cert = write_self_signed(ctx.workdir / "tls")
    other = ctx.users(1)[0]
    people = ((f"Bearer {ctx.fan_token}", ctx.fan_account),
              (f"Bearer {other['token']}", other["account"]))
    out: dict[str, Any] = {"plan": plan, "streams": {}, "echo": {}}
    for n in plan["sizes"]:
        runs = []
        for k in range(plan["runs"]):
            order = PROTOS if k % 2 == 0 else PROTOS[::-1]
            who = dict(zip(PROTOS, people if k % 2 == 0 else people[::-1], strict=True))
            runs.append(streams_run(ctx, key, cert, n, plan["rounds"][n], order, who,
                                    tag=f"http2-streams-{n}-{k}"))
        out["streams"][str(n)] = {"runs": runs, **_stream_ratios(runs)}
    daemon = TLSDaemon(ctx, key, cert, "http2-echo")
    daemon.start()
    try:
        passes = [echo_pass(daemon, plan["echo_slices"], plan["echo_slice_s"], flip=k % 2 == 1)
                  for k in range(plan["echo_passes"])]
    finally:
        daemon.stop()
    out["echo"] = {"passes": passes, "ratios": {
        label: [p[label]["ratio"] for p in passes] for label in ("sequential", "inflight16")}}
    out["targets"] = _targets(out, max(plan["sizes"]))
    out["errors"] = _errors(out)
    return out


def _stream_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def ratio(run: dict[str, Any], pick: Any) -> float | None:
        base = pick(run["h1"])
        return pick(run["h2"]) / base if base > 0 else None

    return {
        "memory_ratio": [ratio(r, lambda g: g["kib_per_stream"]) for r in runs],
        "p99_ratio": [ratio(r, lambda g: g["latency_ms"]["p99"]) for r in runs],
        "p50_ratio": [ratio(r, lambda g: g["latency_ms"]["p50"]) for r in runs],
        "cpu_per_round_ratio": [ratio(r, lambda g: g["daemon_cpu_ms_per_round"])
                                for r in runs],
    }


def _targets(out: dict[str, Any], n: int) -> dict[str, bool]:
    s = out["streams"][str(n)]
    e = out["echo"]["ratios"]
    return {
        f"memory_ratio<=1.5@{n}": all(r is not None and r <= TARGETS["memory_ratio"]
                                      for r in s["memory_ratio"]),
        f"p99_ratio<=1.5@{n}": all(r is not None and r <= TARGETS["p99_ratio"]
                                   for r in s["p99_ratio"]),
        "ws_sequential>=0.7": all(r >= TARGETS["echo_ratio"] for r in e["sequential"]),
        "ws_inflight16>=0.7": all(r >= TARGETS["echo_ratio"] for r in e["inflight16"]),
    }


def _errors(out: dict[str, Any]) -> int:
    errors = 0
    for size in out["streams"].values():
        for run in size["runs"]:
            for proto in PROTOS:
                g = run[proto]
                errors += sum(g["connect"]["failed"].values()) + g["missing"] + g["dropped"]
    for p in out["echo"]["passes"]:
        for label in ("sequential", "inflight16"):
            errors += sum(p[label][proto]["errors"] for proto in PROTOS)
    return errors
