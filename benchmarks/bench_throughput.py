"""3. Publish throughput: state changes per second across many accounts, one listener each.

Every prepared user (10,000 in the full run) owns one account and holds one
connection (the first half EventSource, the second half WebSocket), throttles
at 0. A publisher process sends ``rounds`` rounds in which every account
changes once, ``batch`` accounts per publish, over 4 keep-alive connections.
The last round's state is ``final``; the rate counts only when every client
has seen ``final`` on its own account: changes published / (time the last
client saw ``final`` - time the first publish was sent).

The daemon and the bare server take turns, daemon - bare - bare - daemon, twice (every
second pass with the batch sizes in reverse order), and each ratio is the mean of the
daemon's rates at a batch size over the mean of the bare server's: on a shared
machine the load of other processes moves within a run, and a fixed order would
charge it to one side. Two turns each left a ratio good to about +-0.15 on the 2-core
VM (study 14); four narrow the mean's spread by about 30 % (1/sqrt(2)). Smoke runs take
one turn each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, Child, cpu_seconds, expect_all, split, stop_all
from benchmarks.context import Context
from benchmarks.profiling import Profile
from benchmarks.server import Baseline, Daemon, Server, client_processes, wait_ready

SECTIONS = {"event-source": "event-source-throttle = 0", "websocket": "ws-throttle = 0"}
PUBLISH_CONNECTIONS = 4
TARGET = 20_000
# The daemon's rate against the bare server's at the same batch size (issue 16): the
# smaller a publish, the more its fixed cost (the request, the store transaction and its
# thread hand-off) weighs against the one event per change both servers write.
RATIO_TARGETS = {1000: 0.95, 100: 0.95, 10: 0.80}
TURNS = ("daemon", "baseline", "baseline", "daemon") * 2


def publish(server: Server, accounts_file: str, batch: int, rounds: int) -> dict[str, Any]:
    result = subprocess.run(
        [PYTHON, "-m", "benchmarks.load_publish", "--port", str(server.admin_port),
         # One argument: a token may begin with "-" (base64url), which argparse would
         # take for an option.
         f"--token={server.admin_token}", "--accounts-file", accounts_file,
         "--batch", str(batch), "--rounds", str(rounds),
         "--connections", str(PUBLISH_CONNECTIONS)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"load_publish failed: {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def one_run(server: Server, children: list[Child], accounts_file: str, n: int, batch: int,
            rounds: int) -> dict[str, Any]:
    for child in children:
        child.send(cmd="reset")  # forget receipts and "final" flags of an earlier run
    expect_all(children, "reset", 60)
    for child in children:
        child.send(cmd="counters")
    events_before = sum(c["events"] for c in expect_all(children, "counters", 60))
    cpu_before = cpu_seconds(server.pid)
    sent = publish(server, accounts_file, batch, rounds)
    finals = expect_all(children, "final", 120)
    cpu_used = cpu_seconds(server.pid) - cpu_before
    for child in children:
        child.send(cmd="counters")
    counters = expect_all(children, "counters", 60)
    t_end = max(f["t"] for f in finals)
    seconds = (t_end - sent["t_first"]) / 1e9
    changes = n * rounds
    return {"batch": batch, "rounds": rounds, "changes": changes, "seconds": seconds,
            "changes_per_s": changes / seconds, "publishes": sent["publishes"],
            "publish_errors": sent["errors"], "ack_p50_ms": sent["ack_p50_ms"],
            "ack_p99_ms": sent["ack_p99_ms"],
            "events_received_total": sum(c["events"] for c in counters) - events_before,
            "daemon_cpu_s": cpu_used, "daemon_cpu_us_per_change": cpu_used / changes * 1e6,
            "daemon_core_share": cpu_used / seconds}


def measure(server: Server, ctx: Context, users: list[dict[str, str]], accounts_file: Path,
            batches: list[int], profile: bool) -> dict[str, Any]:
    """Connect one client per account to ``server``, then publish at each batch size."""
    n = len(users)
    half = n // 2
    procs = ctx.client_procs
    auth = ctx.auth_file(users)
    children: list[Child] = []
    out: dict[str, Any] = {"runs": []}
    server.start()
    try:
        children += client_processes(server, "es", split(half, procs), auth_file=auth,
                                     src_base=2, max_seconds=ctx.max_seconds)
        children += client_processes(server, "ws", split(n - half, procs), auth_file=auth,
                                     auth_offset=half, src_base=2 + procs,
                                     max_seconds=ctx.max_seconds)
        out["connect"] = wait_ready(children, ctx.connect_timeout)
        for batch in batches:
            out["runs"].append(one_run(server, children, str(accounts_file), n, batch,
                                       ctx.sizes["throughput_rounds"]))
        if profile:
            spy = Profile(server.pid, ctx.workdir / "throughput.pyspy", 8)
            one_run(server, children, str(accounts_file), n, batches[0], 3)
            out["profile"] = spy.finish()
    finally:
        stop_all(children)
        server.stop()
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def ratios(ours: list[dict[str, Any]], bare: list[dict[str, Any]]) -> dict[str, float]:
    """Per batch size: the mean of the daemon's rates over the mean of the bare server's."""
    rates: dict[int, tuple[list[float], list[float]]] = {}
    for side, runs in ((0, ours), (1, bare)):
        for r in runs:
            rates.setdefault(r["batch"], ([], []))[side].append(r["changes_per_s"])
    return {str(batch): _mean(d) / _mean(b) for batch, (d, b) in rates.items() if d and b}


def targets(best: float, ratio: dict[str, float]) -> dict[str, bool]:
    out = {f"changes_per_s>={TARGET}": best >= TARGET}
    for batch, goal in RATIO_TARGETS.items():
        if str(batch) in ratio:
            out[f"ratio>={goal:.2f} (batch {batch})"] = ratio[str(batch)] >= goal
    return out


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes["throughput_accounts"]
    users = ctx.users(n)
    batches = ctx.sizes["throughput_batches"]
    accounts_file = ctx.workdir / f"accounts-{n}.json"
    accounts_file.write_text(json.dumps([u["account"] for u in users]))
    routes_file = ctx.workdir / f"routes-{n}.json"
    routes_file.write_text(json.dumps(dict(zip(ctx.auth_lines(users),
                                               (u["account"] for u in users), strict=True))))
    turns = TURNS[:2] if ctx.smoke else TURNS
    out: dict[str, Any] = {"accounts": n, "turns": list(turns), "runs": [],
                           "baseline": {"runs": []}}
    for turn, side in enumerate(turns):
        sizes = batches if turn // 2 % 2 == 0 else batches[::-1]
        server: Server
        if side == "daemon":
            server = Daemon(ctx.workdir, ctx.state_dir, SECTIONS, tag=f"throughput-daemon{turn}")
        else:
            server = Baseline(ctx.workdir, tag=f"throughput-baseline{turn}", routes=routes_file)
        got = measure(server, ctx, users, accounts_file, sizes,
                      ctx.profile and side == "daemon" and turn == 0)
        into = out if side == "daemon" else out["baseline"]
        into["runs"] += got["runs"]
        into.setdefault("connect", got["connect"])
        if "profile" in got:
            out["profile"] = got["profile"]
    for into in (out, out["baseline"]):
        into["best_changes_per_s"] = max(r["changes_per_s"] for r in into["runs"])
    out["ratio_vs_baseline"] = ratios(out["runs"], out["baseline"]["runs"])
    out["targets"] = targets(out["best_changes_per_s"], out["ratio_vs_baseline"])
    return out
