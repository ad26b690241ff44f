"""1. Connection capacity: N idle EventSource + N idle WebSocket connections in one process.

For the baseline and then the daemon: RSS before, after N EventSource streams,
after N more WebSocket connections (VmRSS), so each kind gets its own
per-connection figure; then idle CPU over a window with all 2N held (pings and
heartbeats at their defaults: EventSource clients ask for ping=30, the daemon's
WebSocket heartbeat is 5 s). The client processes report any
connection that failed or dropped; the target needs none.

Three servers in turn: the baseline; the daemon with every connection of one
user (the per-connection cost alone, which the target compares); the daemon
with connection i of each kind belonging to user i with its own bearer token,
as in production (per-user state such as cached principals comes on top).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Child, expect_all, idle_cpu, open_fds, pause, rss_kib, split, stop_all
from benchmarks.context import Context
from benchmarks.profiling import Profile
from benchmarks.server import Baseline, Daemon, Server, client_processes, wait_ready

TARGET_RATIO = 1.5
WARM_UP = 50


LIMITS = {"event-source": "max-connections-per-user = 20000",
          "websocket": "max-connections-per-user = 20000"}


def warm_up(server: Server, ctx: Context, auth_file: str) -> None:
    """Open and close a few connections of each kind, so one-time costs (first use of a
    code path, caches, lazily built objects) land in neither kind's figure."""
    group: list[Child] = []
    for kind, src in (("es", 2), ("ws", 3)):
        group += client_processes(server, kind, [WARM_UP], auth_file=auth_file, src_base=src,
                                  max_seconds=60)
    wait_ready(group, ctx.connect_timeout)
    stop_all(group)


def measure(server: Server, ctx: Context, n: int, auth_file: str,
            profile: str = "") -> dict[str, Any]:
    """Open n ES then n WS connections against ``server``; RSS per kind and idle CPU."""
    procs = ctx.client_procs
    children: list[Child] = []
    result: dict[str, Any] = {"server": server.name, "n_per_kind": n}
    server.start()
    try:
        warm_up(server, ctx, auth_file)
        pause(ctx.settle)
        rss0 = rss_kib(server.pid)
        for kind, src in (("es", 2), ("ws", 2 + procs)):
            started = time.monotonic()
            group = client_processes(server, kind, split(n, procs), auth_file=auth_file,
                                     src_base=src, max_seconds=ctx.max_seconds)
            children += group
            result[f"{kind}_connect"] = wait_ready(group, ctx.connect_timeout)
            result[f"{kind}_connect"]["seconds"] = round(time.monotonic() - started, 2)
            pause(ctx.settle)
            result[f"rss_after_{kind}"] = rss_kib(server.pid)
        result["idle_cpu_core_fraction"] = idle_cpu(server.pid, ctx.idle_window)
        if profile:
            spy = Profile(server.pid, ctx.workdir / profile, ctx.idle_window)
            result["idle_profile"] = spy.finish()
        result["fds"] = open_fds(server.pid)
        for child in children:
            child.send(cmd="counters")
        counters = expect_all(children, "counters", 30)
        result["held"] = sum(c["open"] for c in counters)
        result["dropped"] = sum(c["closed_after_open"] for c in counters)
        result["ws_pings_answered"] = sum(c["pings"] for c in counters)
        result["rss_start"] = rss0
        result["es_kib_per_conn"] = ((result["rss_after_es"] - rss0)
                                     / max(1, result["es_connect"]["opened"]))
        result["ws_kib_per_conn"] = ((result["rss_after_ws"] - result["rss_after_es"])
                                     / max(1, result["ws_connect"]["opened"]))
    finally:
        stop_all(children)
        server.stop()
    return result


def _errors(result: dict[str, Any]) -> int:
    return int(sum(result["es_connect"]["failed"].values())
               + sum(result["ws_connect"]["failed"].values()) + result["dropped"])



def _ratio(ours: float, base: float) -> float | None:
    """ours / base, or None when the baseline did not grow (tiny smoke sizes: RSS moves
    in pages, so a few connections may cost no measurable memory)."""
    return ours / base if base > 0 else None

def run(ctx: Context) -> dict[str, Any]:
    """Baseline, daemon with one user (pure per-connection cost), daemon with a user each."""
    n = ctx.sizes["capacity"]
    one_user = ctx.fan_auth_file()
    per_user = ctx.auth_file(ctx.users(n))
    base = measure(Baseline(ctx.workdir, tag="capacity-baseline"), ctx, n, one_user)
    ours = measure(Daemon(ctx.workdir, ctx.state_dir, LIMITS, tag="capacity-daemon"),
                   ctx, n, one_user, profile="capacity-idle.pyspy" if ctx.profile else "")
    users = measure(Daemon(ctx.workdir, ctx.state_dir, LIMITS, tag="capacity-users"),
                    ctx, n, per_user)
    es_ratio = _ratio(ours["es_kib_per_conn"], base["es_kib_per_conn"])
    ws_ratio = _ratio(ours["ws_kib_per_conn"], base["ws_kib_per_conn"])
    errors = _errors(ours) + _errors(users)
    held = min(ours["held"], users["held"])
    return {
        "baseline": base, "daemon": ours, "daemon_user_each": users,
        "es_ratio": es_ratio, "ws_ratio": ws_ratio,
        "user_each_total_ratio": _ratio(users["rss_after_ws"] - users["rss_start"],
                                        base["rss_after_ws"] - base["rss_start"]),
        "total_held": held, "errors": errors,
        "targets": {
            "es_rss_ratio<=1.5": es_ratio is not None and es_ratio <= TARGET_RATIO,
            "ws_rss_ratio<=1.5": ws_ratio is not None and ws_ratio <= TARGET_RATIO,
            "19000_held_without_errors": held >= 19_000 and errors == 0,
        },
    }
