"""6. Gateway mode (issue 12): the daemon in front of a private Cyrus IMAP 3.6.

The upstream is the test suite's private Cyrus, imported from ``tests/cyrus_server.py``
(Debian's cyrus-imapd and cyrus-caldav on 127.0.0.1 in a temporary folder; its master
runs as the cyrus user, so this needs root). Where Cyrus cannot run the benchmark is
recorded as skipped with the reason, except under ``CI=true``, where that is an error.
The daemon is the real one (``twistd -n jmappushd``) in gateway mode, configured as
tests/test_gateway_cyrus_e2e.py does (a reader granted ``lr``); the load generators are
separate processes (``load_echo.py``, ``load_clients.py``). Every figure has its direct
baseline, measured in the same run:

* Overhead: sequential ``Mailbox/get`` round trips through the gateway's ``apiUrl``
  against straight to Cyrus's, one keep-alive connection each, Basic on every request,
  the same user; p50/p99 and the ratio.
* One WebSocket through the gateway against HTTP straight to Cyrus with Basic, one
  request at a time and 16 in flight (16 keep-alive connections direct: HTTP/1.1 has no
  multiplexing); requests per second and the ratio.
* Change latency: from Cyrus's ``deliver`` returning to the ``state`` event at an
  EventSource client (``types=Email``), whose state must be the one Cyrus's own
  ``Email/get`` then returns. ``cyrus-notify`` with the throttles at 0 and the state
  read's debounce at 0 (and, in full runs, at its default); ``poll`` with the smallest
  ``poll-interval`` (1 s): that figure is the interval's, reported as such.

Request modes take turns in slices (as in bench_echo) so machine drift hits both sides
alike. CPU per request is given for the daemon and for Cyrus (its master, the service
processes it forked and those it reaped).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import PYTHON, ROOT, Child, cpu_seconds, now_ns, pause, percentiles
from benchmarks.context import Context
from benchmarks.profiling import Profile
from benchmarks.server import Daemon, Server, ServerProcess, wait_ready

if TYPE_CHECKING:
    from tests.cyrus_server import CyrusServer

USER, PASSWORD = "alice", "alice-bench-pw"
READER, READER_PASSWORD = "reader", "reader-bench-pw"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
REQUEST = {"using": USING,
           "methodCalls": [["Mailbox/get", {"accountId": USER, "ids": None}, "0"]]}
EXPECT = '"Mailbox/get"'
ES_PATH = "/jmap/eventsource/?types=Email&closeafter=no&ping=30"
INFLIGHT = 16
SEQ_MODES = ("direct-http-seq", "gw-http-seq", "proxy-http-seq", "gw-ws-seq", "proxy-ws-seq")
PAR_MODES = ("direct-http-par", "gw-ws-par", "proxy-ws-par", "gw-http-par", "proxy-http-par")
THROTTLES = {"event-source": "event-source-throttle = 0",
             "websocket": "ws-throttle = 0",
             "jmap": "max-concurrent-requests = 128"}
DEFAULT_DEBOUNCE_MS = 200
POLL_INTERVAL_S = 1
ROUND_TIMEOUT_S = 15.0
TARGET_OVERHEAD = 1.15
TARGET_WS16 = 1.5
TARGET_CHANGE_P99_MS = 200.0
TARGETS = ("gateway_p50<=1.15x_direct", "ws16>=1.5x_direct_http16",
           "cyrus_notify_p99<200ms+throttle")


def cyrus_unavailable() -> str | None:
    """Why the private Cyrus cannot run here (None if it can)."""
    try:
        from tests.cyrus_server import cyrus_missing
    except ImportError as e:  # the benchmarks run from a checkout: tests/ is there
        return f"tests.cyrus_server cannot be imported ({e})"
    return cyrus_missing()


def skipped(reason: str) -> dict[str, Any]:
    """The result of a run without Cyrus: recorded, with its reason, never silently."""
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"Cyrus IMAP is required under CI=true: {reason}")
    return {"skipped": f"Cyrus IMAP not available: {reason}",
            "targets": dict.fromkeys(TARGETS)}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its live children and the children it has reaped."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[1] == str(pid):
            total += (int(rest[11]) + int(rest[12])) / ticks
    return total


class GatewayDaemon(Daemon):
    """The daemon in gateway mode in front of ``cyrus``, on a state directory of its own."""

    name = "jmappushd-gateway"

    def __init__(self, ctx: Context, cyrus: CyrusServer, changes: str, tag: str,
                 debounce_ms: int = 0) -> None:
        secret = ctx.workdir / f"{tag}-reader.pw"
        secret.write_text(READER_PASSWORD + "\n")
        os.chmod(secret, 0o600)
        upstream = (f"session-url = {cyrus.session_url}\nchanges = {changes}\n"
                    f"reader-user = {READER}\nreader-password-file = {secret}\n"
                    f"debounce = {debounce_ms}")
        if changes == "cyrus-notify":
            upstream += f"\nnotify-socket = {cyrus.notify_socket}"
        if changes == "poll":
            upstream += f"\npoll-interval = {POLL_INTERVAL_S}"
        state_dir = ctx.workdir / f"{tag}-state"
        shutil.rmtree(state_dir, ignore_errors=True)
        super().__init__(ctx.workdir, state_dir, {**THROTTLES, "upstream": upstream}, tag=tag)


class BareProxy(Server):
    """``python -m benchmarks.baseline_proxy`` in front of Cyrus's API URL."""

    name = "bare-proxy"

    def __init__(self, workdir: Path, api_url: str) -> None:
        super().__init__(workdir)
        self.proc = ServerProcess([PYTHON, "-m", "benchmarks.baseline_proxy", "--port",
                                   str(self.port), "--upstream", api_url],
                                  workdir / "gateway-proxy.log", b"proxy ready")


class Endpoints:
    """Where each request mode goes: the gateway, the bare proxy, or Cyrus itself."""

    def __init__(self, ctx: Context, cyrus: CyrusServer, daemon: GatewayDaemon, proxy: BareProxy
                 ) -> None:
        self.cyrus_port = int(cyrus.http_port)
        self.cyrus_master = cyrus.master_pid
        self.fronts: dict[str, Server] = {"gw": daemon, "proxy": proxy}
        self.request_file = ctx.workdir / "gateway-request.json"
        self.request_file.write_text(json.dumps(REQUEST))
        self.auth = basic(USER, PASSWORD)

    def front_cpu(self, mode: str) -> float:
        """CPU seconds so far of the process in front of Cyrus in ``mode`` (0 direct)."""
        front = self.fronts.get(mode.partition("-")[0])
        return cpu_seconds(front.pid) if front is not None else 0.0

    def load(self, mode: str, seconds: float) -> dict[str, Any]:
        """One slice of ``mode`` (``direct-``/``gw-``/``proxy-`` + a load_echo mode)."""
        side, _, kind = mode.partition("-")
        args = [PYTHON, "-m", "benchmarks.load_echo", "--mode", kind,
                "--auth", self.auth, "--seconds", str(seconds), "--inflight", str(INFLIGHT),
                "--request", str(self.request_file), "--expect", EXPECT, "--warm"]
        if side == "direct":
            args += ["--port", str(self.cyrus_port), "--api-path", "/jmap/"]
        else:
            args += ["--port", str(self.fronts[side].port)]
        result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                                timeout=seconds + 120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"load_echo {mode} failed: {result.stderr[-2000:]}")
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    def cyrus_cpu(self) -> float:
        pid = self.cyrus_master()
        return tree_cpu(pid) if pid is not None else 0.0


def alternate(ends: Endpoints, modes: Sequence[str], seconds: float, rounds: int
              ) -> dict[str, dict[str, Any]]:
    """``modes`` in turns, ``rounds`` slices each, merged per mode (see bench_echo)."""
    slices: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    front_cpu = dict.fromkeys(modes, 0.0)
    cyrus_cpu = dict.fromkeys(modes, 0.0)
    for _ in range(rounds):
        for mode in modes:
            f0, c0 = ends.front_cpu(mode), ends.cyrus_cpu()
            slices[mode].append(ends.load(mode, seconds / rounds))
            front_cpu[mode] += ends.front_cpu(mode) - f0
            cyrus_cpu[mode] += ends.cyrus_cpu() - c0
    merged: dict[str, dict[str, Any]] = {}
    for mode, runs in slices.items():
        requests = sum(r["requests"] for r in runs)
        elapsed = sum(r["seconds"] for r in runs)

        def per_request(cpu: float, requests: int = requests) -> float | None:
            return cpu / requests * 1e6 if requests else None

        merged[mode] = {
            "requests": requests, "errors": sum(r["errors"] for r in runs),
            "seconds": elapsed, "rate": requests / elapsed if elapsed else 0.0,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "slice_rates": [r["rate"] for r in runs],
            "front_cpu_us_per_request": per_request(front_cpu[mode]),
            "cyrus_cpu_us_per_request": per_request(cyrus_cpu[mode]),
        }
    return merged


def measure_requests(ends: Endpoints, seconds: float, rounds: int) -> dict[str, Any]:
    """Every mode, after the fronts' upstream pools have been filled.

    Each connection's first request (which makes Cyrus fork a service process, or the
    gateway check the session) is made before the clock starts (``--warm``); the fronts'
    own pools to Cyrus open their 16 connections in an untimed slice first.
    """
    for mode in ("gw-ws-par", "proxy-ws-par"):
        ends.load(mode, min(1.0, seconds))
    out = alternate(ends, SEQ_MODES, seconds, rounds)
    out |= alternate(ends, PAR_MODES, seconds, rounds)
    return out


def request_ratios(out: dict[str, Any]) -> dict[str, float]:
    def of(mode: str, key: str) -> float:
        return max(1e-9, float(out[mode][key]))

    return {
        "overhead_p50": of("gw-http-seq", "p50_ms") / of("direct-http-seq", "p50_ms"),
        "overhead_p99": of("gw-http-seq", "p99_ms") / of("direct-http-seq", "p99_ms"),
        "ws_seq_rate": of("gw-ws-seq", "rate") / of("direct-http-seq", "rate"),
        "ws16_rate": of("gw-ws-par", "rate") / of("direct-http-par", "rate"),
        "gw_http16_rate": of("gw-http-par", "rate") / of("direct-http-par", "rate"),
        "bare_proxy_overhead_p50": of("proxy-http-seq", "p50_ms") / of("direct-http-seq",
                                                                       "p50_ms"),
        "bare_proxy_ws16_rate": of("proxy-ws-par", "rate") / of("direct-http-par", "rate"),
        "gw_vs_bare_proxy_p50": of("gw-http-seq", "p50_ms") / of("proxy-http-seq", "p50_ms"),
        "gw_vs_bare_proxy_ws16_rate": of("gw-ws-par", "rate") / of("proxy-ws-par", "rate"),
    }


class ChangeClient:
    """One EventSource stream (types=Email) in a load_clients process, announcing each
    new state it receives."""

    def __init__(self, ctx: Context, daemon: GatewayDaemon, tag: str) -> None:
        auth_file = ctx.workdir / f"{tag}-auth.txt"
        auth_file.write_text(basic(USER, PASSWORD) + "\n")
        self.child = Child(["benchmarks.load_clients", "--kind", "es", "--port",
                            str(daemon.port), "--path", ES_PATH, "--count", "1",
                            "--auth-file", str(auth_file), "--announce",
                            "--max-seconds", str(ctx.max_seconds)], name=f"{tag}-es")
        ready = wait_ready([self.child], ctx.connect_timeout)
        if ready["opened"] != 1:
            self.child.stop()
            raise RuntimeError(f"the EventSource stream did not open: {ready['failed']}")

    def arrival(self, cyrus: CyrusServer, deadline: float) -> tuple[int, int]:
        """Wait for the event carrying Cyrus's current Email state: (receipt ns, stale
        events seen first, e.g. the state an earlier read published)."""
        truth = ""
        stale = 0
        while True:
            done = self.child.expect("done", max(0.1, deadline - time.monotonic()))
            if not truth:
                truth = cyrus.states(USER, USER, ("Email",))["Email"]
            if done["token"] == truth:
                break
            stale += 1
        self.child.send(cmd="report")
        report = self.child.expect("report", 30)
        return int(report["tokens"][truth][0]), stale

    def stop(self) -> None:
        self.child.stop()


def change_latency(ctx: Context, cyrus: CyrusServer, daemon: GatewayDaemon, rounds: int,
                   tag: str, warmup: int = 2, dephase: float = 0.0) -> dict[str, Any]:
    """``rounds`` deliveries, each timed from ``deliver`` returning to the event (and,
    as an upper bound that includes deliver's own run, from its start).

    Cyrus sends its event before ``deliver`` has exited, so the first figure can be
    below zero. ``dephase``: a random pause of up to that many seconds before each
    delivery, so deliveries do not lock onto a poll tick.
    """
    client = ChangeClient(ctx, daemon, tag)
    after: list[int] = []
    since_start: list[int] = []
    stale = timeouts = 0
    rng = random.Random(12)
    try:
        for r in range(warmup + rounds):
            if dephase:
                pause(rng.uniform(0.0, dephase))
            t_start = now_ns()
            cyrus.deliver(USER, f"bench {tag} {r}")
            t0 = now_ns()
            try:
                received, extra = client.arrival(cyrus, time.monotonic() + ROUND_TIMEOUT_S)
            except TimeoutError:
                timeouts += 1
                continue
            if r >= warmup:
                after.append(received - t0)
                since_start.append(received - t_start)
                stale += extra
    finally:
        client.stop()
    return {"latency_ms": percentiles(after), "rounds": rounds, "stale_events": stale,
            "timeouts": timeouts, "min_ms": min(after) / 1e6 if after else 0.0,
            "from_deliver_start_ms": percentiles(since_start)}


def cyrus_version() -> str:
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "cyrus-imapd"],
                                capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def start_cyrus() -> CyrusServer:
    from tests.cyrus_server import CyrusServer

    cyrus = CyrusServer()
    try:
        cyrus.start()
        cyrus.add_user(USER, PASSWORD)
        cyrus.add_user(READER, READER_PASSWORD)
        cyrus.grant(USER, READER, "lr")
        cyrus.deliver(USER, "first")
    except BaseException:
        cyrus.cleanup()
        raise
    return cyrus


def notify_phase(ctx: Context, cyrus: CyrusServer, out: dict[str, Any]) -> None:
    """Requests and cyrus-notify change latency on one gateway daemon (debounce 0)."""
    daemon = GatewayDaemon(ctx, cyrus, "cyrus-notify", "gateway-notify")
    proxy = BareProxy(ctx.workdir, f"{cyrus.base}/jmap/")
    try:
        daemon.start()
        proxy.start()
        ends = Endpoints(ctx, cyrus, daemon, proxy)
        seconds = ctx.sizes["gateway_seconds"]
        out["requests"] = measure_requests(ends, seconds, ctx.sizes["gateway_slices"])
        out["ratios"] = request_ratios(out["requests"])
        out["changes"]["cyrus-notify"] = change_latency(
            ctx, cyrus, daemon, ctx.sizes["gateway_change_rounds"],
            "gateway-notify", warmup=1 if ctx.smoke else 3) | {"debounce_ms": 0}
        if ctx.profile:
            for mode in ("gw-http-seq", "gw-ws-par"):
                spy = Profile(daemon.pid, ctx.workdir / f"gateway-{mode}.pyspy", seconds)
                ends.load(mode, seconds)
                out[f"profile_{mode}"] = spy.finish()
    finally:
        proxy.stop()
        daemon.stop()


def run(ctx: Context) -> dict[str, Any]:
    reason = cyrus_unavailable()
    if reason is not None:
        return skipped(reason)
    out: dict[str, Any] = {"cyrus": cyrus_version(), "changes": {},
                           "inflight": INFLIGHT, "poll_interval_s": POLL_INTERVAL_S}
    cyrus = start_cyrus()
    try:
        notify_phase(ctx, cyrus, out)
        rounds = ctx.sizes["gateway_poll_rounds"]
        if not ctx.smoke:
            daemon = GatewayDaemon(ctx, cyrus, "cyrus-notify", "gateway-notify-default",
                                   debounce_ms=DEFAULT_DEBOUNCE_MS)
            daemon.start()
            try:
                out["changes"]["cyrus-notify-default-debounce"] = change_latency(
                    ctx, cyrus, daemon, rounds, "gateway-notify-default"
                ) | {"debounce_ms": DEFAULT_DEBOUNCE_MS}
            finally:
                daemon.stop()
        daemon = GatewayDaemon(ctx, cyrus, "poll", "gateway-poll")
        daemon.start()
        try:
            out["changes"]["poll"] = change_latency(
                ctx, cyrus, daemon, rounds, "gateway-poll", warmup=1, dephase=POLL_INTERVAL_S
            ) | {"debounce_ms": 0, "poll_interval_s": POLL_INTERVAL_S}
        finally:
            daemon.stop()
    finally:
        cyrus.cleanup()
    ratios = out["ratios"]
    notify_p99 = out["changes"]["cyrus-notify"]["latency_ms"]["p99"]
    out["errors"] = sum(m["errors"] for m in out["requests"].values())
    out["errors"] += sum(c["timeouts"] for c in out["changes"].values())
    out["targets"] = {
        TARGETS[0]: ratios["overhead_p50"] <= TARGET_OVERHEAD,
        TARGETS[1]: ratios["ws16_rate"] >= TARGET_WS16,
        TARGETS[2]: notify_p99 < TARGET_CHANGE_P99_MS,  # throttles and debounce are 0
    }
    return out
