"""2. Fan-out latency: one publish to an account watched by N connections (half ES, half WS).

Throttles are 0. Per round the orchestrator notes the monotonic time just before
it sends ``POST /publish``; every client notes when the ``state`` event (or
StateChange frame) carrying that round's state (its mark) arrives; latency is the
difference, one sample per client per round. The baseline server receives the
same publish and writes the same bytes to the same number of connections, so
the ratio isolates what the daemon adds: authentication state, the durable
write, the hub, filtering, throttling, encoding. All connections belong to one
user whose account is the one published to.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Child, expect_all, pause, percentiles, split, stop_all
from benchmarks.context import Context
from benchmarks.profiling import Profile
from benchmarks.server import Baseline, Daemon, Server, client_processes, wait_ready

SECTIONS = {
    "event-source": "event-source-throttle = 0\nmax-connections-per-user = 20000",
    "websocket": "ws-throttle = 0\nmax-connections-per-user = 20000",
}
WARMUP_ROUNDS = 3
GAP_S = 0.05


def _rounds(server: Server, children: list[Child], account: str, count: int, first: int,
            timeout: float) -> list[tuple[str, int, int]]:
    publisher = server.publisher()
    sent = []
    try:
        for r in range(first, first + count):
            token, t0, t1 = publisher.publish({account: {"Email": f"s{r}"}})
            expect_all(children, "done", timeout)
            sent.append((token, t0, t1))
            pause(GAP_S)
    finally:
        publisher.close()
    return sent


def measure(server: Server, ctx: Context, n: int, rounds: int, profile: str = ""
            ) -> dict[str, Any]:
    procs = 2 if n >= 4_000 and not ctx.smoke else 1
    children: list[Child] = []
    server.start()
    try:
        auth = ctx.fan_auth_file()
        for kind, src in (("es", 2), ("ws", 2 + procs)):
            children += client_processes(server, kind, split(n // 2, procs), auth_file=auth,
                                         src_base=src, announce=True,
                                         max_seconds=ctx.max_seconds)
        connect = wait_ready(children, ctx.connect_timeout)
        timeout = 60.0
        _rounds(server, children, ctx.fan_account, WARMUP_ROUNDS, 0, timeout)
        for child in children:
            child.send(cmd="report")  # drop the warm-up receipts
        expect_all(children, "report", 60)
        sent = _rounds(server, children, ctx.fan_account, rounds, WARMUP_ROUNDS, timeout)
        for child in children:
            child.send(cmd="report")
        reports = expect_all(children, "report", 120)
        result = _latencies(sent, reports)
        result.update(server=server.name, n=n, rounds=rounds, connect=connect)
        if profile:
            spy = Profile(server.pid, ctx.workdir / profile, 12)
            started = time.monotonic()
            extra = 0
            while time.monotonic() - started < 10:
                _rounds(server, children, ctx.fan_account, 1, 1000 + extra, timeout)
                extra += 1
            result["profile"] = spy.finish() | {"rounds": extra}
    finally:
        stop_all(children)
        server.stop()
    return result


def _latencies(sent: list[tuple[str, int, int]], reports: list[dict[str, Any]]
               ) -> dict[str, Any]:
    samples: list[int] = []
    last: list[int] = []
    missing = 0
    for token, t0, _t1 in sent:
        round_times = [t for r in reports for t in r["tokens"].get(token, [])]
        expected = sum(r["opened"] for r in reports)
        missing += expected - len(round_times)
        samples += [t - t0 for t in round_times]
        if round_times:
            last.append(max(round_times) - t0)
    return {
        "latency_ms": percentiles(samples),
        "last_client_ms": percentiles(last),
        "publish_ack_ms": percentiles([t1 - t0 for _, t0, t1 in sent]),
        "missing": missing,
    }


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}}
    biggest = max(ctx.sizes["fanout"])
    for n in ctx.sizes["fanout"]:
        rounds = ctx.sizes["fanout_rounds"][n]
        base = measure(Baseline(ctx.workdir, tag=f"fanout-baseline-{n}"), ctx, n, rounds)
        profile = f"fanout-{n}.pyspy" if ctx.profile and n == biggest else ""
        ours = measure(Daemon(ctx.workdir, ctx.state_dir, SECTIONS, tag=f"fanout-daemon-{n}"),
                       ctx, n, rounds, profile=profile)
        p99_ratio = ours["latency_ms"]["p99"] / max(1e-9, base["latency_ms"]["p99"])
        out["sizes"][str(n)] = {
            "baseline": base, "daemon": ours, "p99_ratio": p99_ratio,
            "p50_ratio": ours["latency_ms"]["p50"] / max(1e-9, base["latency_ms"]["p50"]),
        }
    out["targets"] = {
        f"p99_ratio<=1.5@{n}": v["p99_ratio"] <= 1.5 for n, v in out["sizes"].items()
    }
    if "1000" in out["sizes"]:
        out["targets"]["p99<100ms@1000"] = out["sizes"]["1000"]["daemon"]["latency_ms"]["p99"] < 100
    return out
