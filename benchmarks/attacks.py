"""``python -m benchmarks.attacks``: the attacks of docs/security.rst against a real daemon.

    python -m benchmarks.attacks                 # all attacks (about 2 minutes)
    python -m benchmarks.attacks --only slowloris,login-timing
    python -m benchmarks.attacks --out-dir /tmp  # results elsewhere than docs/

Each attack starts from a daemon (``twistd -n jmappushd``) on loopback with production
defaults, except ``[auth] cache-ttl = 0`` so every login runs the KDF as a cold one does,
and measures what the issue that found it measured (issue 11). It records the numbers
and whether the requirement holds, and goes on when one fails. The results go to
``docs/security-attacks.json`` and a reST table is printed for docs/security.rst.
Bounded: every wait has a deadline, amplification is capped at tens of megabytes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.attack_clients import (
    CORE,
    EventStream,
    WebSocket,
    api,
    basic,
    echo_request,
    publish,
    request,
)
from benchmarks.attack_support import (
    LOW_FD_LIMIT,
    LOW_FD_SECTIONS,
    MAIN_SECTIONS,
    PASSWORD,
    TIMING_USERS,
    Bystander,
    Env,
    Outcome,
    counts,
    error_types,
    git_commit,
    log_size,
    mb,
    peak_rss_kib,
    rst_table,
    setup_users,
)
from benchmarks.common import ROOT, cpu_seconds, machine, pause, rss_kib
from benchmarks.server import Daemon

# -- 1. amplification --------------------------------------------------------------

AMPLIFY_BASE = 2_000
AMPLIFY_CALLS = 16


def amplifying_request() -> dict[str, Any]:
    """16 Core/echo calls, each referencing the whole previous result twice (k^n)."""
    calls: list[list[Any]] = [["Core/echo", {"v": "x" * AMPLIFY_BASE}, "c0"]]
    for i in range(1, AMPLIFY_CALLS):
        ref = {"resultOf": f"c{i - 1}", "name": "Core/echo", "path": ""}
        calls.append(["Core/echo", {"#a": ref, "#b": ref}, f"c{i}"])
    return echo_request(calls)


def amplification_http(env: Env) -> Outcome:
    daemon, limit = env.daemon, 10_000_000
    body = json.dumps(amplifying_request()).encode()
    rss_before = rss_kib(daemon.pid)
    with Bystander(daemon.port, env.users.bearer("bob")) as bob:
        reply = api(daemon.port, body, env.users.bearer("alice"), timeout=120)
    errors = error_types(reply.json()["methodResponses"]) if reply.json() else {}
    data: dict[str, Any] = {
        "request_bytes": len(body), "status": reply.status, "response_bytes": reply.size,
        "seconds": round(reply.seconds, 2), "method_errors": errors,
        "rss_before_kib": rss_before, "rss_after_kib": rss_kib(daemon.pid),
        "peak_rss_kib": peak_rss_kib(daemon.pid), "other_user": bob.summary()}
    return Outcome(
        "amplification-http",
        f"{len(body):,} B request: {AMPLIFY_CALLS} Core/echo, each referencing the previous "
        "result twice",
        f"HTTP {reply.status}, response {mb(reply.size)} in {reply.seconds:.2f} s"
        f"{', errors: ' + counts(errors) if errors else ''}; daemon RSS {rss_before // 1024} → "
        f"{data['rss_after_kib'] // 1024} MiB (peak {data['peak_rss_kib'] // 1024} MiB); "
        f"bob's echo max {bob.summary()['max_ms']} ms",
        "response ≤ max-size-response (10 MB), the excess calls fail alone",
        reply.status == 200 and reply.size <= limit + 20_000 and bool(errors), data)


def amplification_ws(env: Env) -> Outcome:
    daemon = env.daemon
    message = json.dumps({"@type": "Request", "id": "amp", **amplifying_request()}).encode()
    rss_before = rss_kib(daemon.pid)
    ws = WebSocket(daemon.port, env.users.bearer("alice"), timeout=120)
    try:
        start = time.monotonic()
        with Bystander(daemon.port, env.users.bearer("bob")) as bob:
            ws.send(message)
            reply, size = ws.receive_json()
        seconds = time.monotonic() - start
    finally:
        ws.close()
    errors = error_types(reply["methodResponses"]) if reply and "methodResponses" in reply else {}
    data = {"message_bytes": len(message), "frame_bytes": size, "seconds": round(seconds, 2),
            "method_errors": errors, "rss_before_kib": rss_before,
            "peak_rss_kib": peak_rss_kib(daemon.pid), "other_user": bob.summary()}
    return Outcome(
        "amplification-ws", f"the same request as one {len(message):,} B WebSocket message",
        f"one {mb(size)} frame in {seconds:.2f} s"
        f"{', errors: ' + counts(errors) if errors else ''}; bob's echo max "
        f"{bob.summary()['max_ms']} ms",
        "frame ≤ max-size-response (10 MB)", size <= 10_020_000 and bool(errors), data)


# -- 2. deep references ------------------------------------------------------------

DEPTH = 600


def deep_references(env: Env) -> Outcome:
    daemon = env.daemon
    value = "[" * DEPTH + "1" + "]" * DEPTH
    refs = ",".join(
        f'["Core/echo",{{"#a":{{"resultOf":"c0","name":"Core/echo","path":"/a"}}}},"r{i}"]'
        for i in range(15))
    body = (f'{{"using":["{CORE}"],"methodCalls":[["Core/echo",{{"a":{value}}},"c0"],'
            f"{refs}]}}").encode()
    before = log_size(daemon)
    reply = api(daemon.port, body, env.users.bearer("alice"))
    added = log_size(daemon) - before
    parsed = reply.json()
    errors = error_types(parsed["methodResponses"]) if reply.status == 200 else {}
    data = {"request_bytes": len(body), "depth": DEPTH, "status": reply.status,
            "method_errors": errors, "log_bytes_added": added}
    return Outcome(
        "deep-references", f"{len(body):,} B request: a value {DEPTH} levels deep, "
        "referenced by 15 calls",
        f"HTTP {reply.status}, errors: {counts(errors)}; log +{mb(added)}",
        "a clear method error, no serverFail; at most one bounded log entry",
        reply.status < 500 and "serverFail" not in errors and added < 16_384, data)


# -- 3. login timing ---------------------------------------------------------------

def _login_seconds(port: int, user: str, password: str, source: str) -> tuple[int, float]:
    reply = request(port, "GET", "/jmap/session", source=source,
                    headers={"Authorization": basic(user, password)})
    return reply.status, reply.seconds


def login_timing(env: Env) -> Outcome:
    """Wrong password for an existing user vs an unknown user, interleaved, each attempt
    from its own address and (existing) user, so no throttle counts them together."""
    port = env.daemon.port
    existing, unknown, codes = [], [], set()
    for i in range(TIMING_USERS):
        code, seconds = _login_seconds(port, f"t{i}", "wrong", f"127.0.1.{i + 1}")
        existing.append(seconds)
        codes.add(code)
        code, seconds = _login_seconds(port, f"nobody{i}", "wrong", f"127.0.2.{i + 1}")
        unknown.append(seconds)
        codes.add(code)
    a, b = statistics.median(existing), statistics.median(unknown)
    ratio = max(a, b) / max(1e-9, min(a, b))
    data = {"attempts_each": TIMING_USERS, "existing_median_ms": round(a * 1000, 1),
            "unknown_median_ms": round(b * 1000, 1), "ratio": round(ratio, 2),
            "statuses": sorted(codes)}
    return Outcome(
        "login-timing", f"{TIMING_USERS} wrong passwords for existing users and "
        f"{TIMING_USERS} for unknown users, interleaved",
        f"median {a * 1000:.1f} ms (existing) vs {b * 1000:.1f} ms (unknown), x{ratio:.1f}",
        "the two medians within 20 %", ratio <= 1.2, data)


# -- 4. failed-login flood ---------------------------------------------------------

def failed_login_flood(env: Env) -> Outcome:
    port = env.daemon.port
    quiet = [_login_seconds(port, "legit", PASSWORD, "127.0.0.2")[1] for _ in range(6)]
    stop = threading.Event()
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def flood(source: str) -> None:
        while not stop.is_set():
            try:
                code, _ = _login_seconds(port, "legit", "guess", source)
            except OSError:
                code = 0
            with lock:
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=flood, args=("127.0.0.3",), daemon=True)
               for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    pause(1.0)
    loaded, legit_codes = [], set()
    while time.monotonic() - start < 7.0:
        code, seconds = _login_seconds(port, "legit", PASSWORD, "127.0.0.2")
        loaded.append(seconds)
        legit_codes.add(code)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - start
    q, f = statistics.median(quiet), statistics.median(loaded)
    statuses = {str(k): v for k, v in sorted(codes.items())}
    data = {"quiet_median_ms": round(q * 1000, 1), "flood_median_ms": round(f * 1000, 1),
            "ratio": round(f / q, 2), "flood_attempts": sum(codes.values()),
            "flood_per_second": round(sum(codes.values()) / elapsed, 1),
            "flood_statuses": statuses,
            "legit_statuses": sorted(legit_codes), "legit_logins_under_flood": len(loaded)}
    return Outcome(
        "failed-login-flood", "8 connections from 127.0.0.3 sending wrong passwords for 7 s; "
        "correct logins from 127.0.0.2",
        f"legit login {q * 1000:.0f} ms quiet → {f * 1000:.0f} ms under flood (x{f / q:.1f}); "
        f"flood {data['flood_per_second']}/s: "
        f"{counts({f'answered {k}': v for k, v in statuses.items()})}",
        "legit login under flood < 2 x quiet; the flood gets 429 after max-failures",
        f < 2 * q and legit_codes == {200} and "429" in statuses, data)


# -- 5. slowloris ------------------------------------------------------------------

SLOW_CONNECTIONS = 200
SLOW_DEADLINE = 20.0


def slowloris(env: Env) -> Outcome:
    port = env.daemon.port
    socks = []
    for i in range(SLOW_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=(f"127.0.3.{i % 200 + 1}", 0))
        s.sendall(b"GET /jmap/session HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    closed_at: dict[int, float] = {}
    served, refused, worst = 0, 0, 0.0
    next_byte = start
    while time.monotonic() - start < SLOW_DEADLINE and len(closed_at) < len(socks):
        now = time.monotonic()
        if now >= next_byte:  # one header byte per second per connection
            for i, s in enumerate(socks):
                if i not in closed_at:
                    try:
                        s.send(b"X")
                    except OSError:
                        closed_at[i] = now - start
            next_byte = now + 1.0
        open_socks = [s for i, s in enumerate(socks) if i not in closed_at]
        readable, _, _ = select.select(open_socks, [], [], 0.2)
        for s in readable:
            try:
                gone = s.recv(4096) == b""
            except OSError:
                gone = True
            if gone:
                closed_at[socks.index(s)] = time.monotonic() - start
        try:
            reply = request(port, "GET", "/.well-known/jmap", source="127.0.0.2", timeout=5)
            served += reply.status == 307
            worst = max(worst, reply.seconds)
        except OSError:
            refused += 1
    for s in socks:
        s.close()
    times = sorted(closed_at.values())
    data = {"connections": len(socks), "closed": len(times),
            "first_closed_s": round(times[0], 1) if times else None,
            "last_closed_s": round(times[-1], 1) if times else None,
            "watched_s": SLOW_DEADLINE, "normal_served": served, "normal_failed": refused,
            "normal_worst_ms": round(worst * 1000, 1)}
    held = f"{len(times)} of {len(socks)} closed within {SLOW_DEADLINE:.0f} s"
    if times:
        held += f" (after {times[0]:.1f} to {times[-1]:.1f} s)"
    return Outcome(
        "slowloris", f"{SLOW_CONNECTIONS} connections sending one header byte per second",
        f"{held}; a normal client meanwhile: {served} served, {refused} failed, worst "
        f"{worst * 1000:.0f} ms",
        "closed within header-timeout (10 s) + 1 s; normal clients served",
        len(times) == len(socks) and times[-1] <= 11.5 and refused == 0, data)


# -- 6. descriptor exhaustion ------------------------------------------------------

def descriptor_exhaustion(env: Env) -> Outcome:
    daemon = env.low_fd()
    try:
        before_log = log_size(daemon)
        socks, refused_at = [], None
        for i in range(400):
            try:
                s = socket.create_connection(("127.0.0.1", daemon.port), timeout=2,
                                             source_address=(f"127.0.4.{i % 200 + 1}", 0))
                socks.append(s)
            except OSError:
                refused_at = i
                break
        pause(1.0)
        dropped = sum(1 for s in socks if _closed_by_peer(s))
        cpu0 = cpu_seconds(daemon.pid)
        outcome = "served"
        try:
            reply = request(daemon.port, "GET", "/.well-known/jmap", source="127.0.0.2",
                            timeout=3)
            outcome = f"served ({reply.status})" if reply.status == 307 else str(reply.status)
        except (OSError, http.client.HTTPException) as exc:
            outcome = f"failed ({type(exc).__name__})"
        pause(2.0)
        cpu = (cpu_seconds(daemon.pid) - cpu0) / 5.0
        for s in socks:
            s.close()
        pause(1.0)
        after: int | str
        try:
            after = request(daemon.port, "GET", "/.well-known/jmap", source="127.0.0.2",
                            timeout=5).status
        except OSError as exc:
            after = type(exc).__name__
        log_added = log_size(daemon) - before_log
    finally:
        daemon.stop()
    data = {"open_files_limit": LOW_FD_LIMIT, "connections_opened": len(socks),
            "closed_at_once_by_daemon": dropped,
            "connect_refused_at": refused_at, "normal_client": outcome,
            "daemon_cpu_while_full": round(cpu, 2), "log_bytes_added": log_added,
            "normal_client_after_release": after}
    return Outcome(
        "descriptor-exhaustion", "400 idle connections to a daemon limited to 256 descriptors",
        f"{len(socks) - dropped} held, {dropped} accepted and closed at once; normal "
        f"client: {outcome}; daemon CPU "
        f"{cpu:.0%} of a core while full; log +{mb(log_added)}; after release: {after}",
        "no EMFILE spin (CPU near idle), one log line, service recovers",
        cpu < 0.2 and log_added < 4096 and after == 307, data)


def _closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# -- 7. fullwidth digits -----------------------------------------------------------

def fullwidth_push_url(env: Env) -> Outcome:
    host = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in "127.0.0.1")
    url = f"https://{host}/push"
    body = echo_request([["PushSubscription/set", {"create": {"k": {
        "deviceClientId": "attack", "url": url}}}, "0"]])
    reply = api(env.daemon.port, body, env.users.bearer("alice"))
    args = reply.json()["methodResponses"][0][1]
    created = bool(args.get("created"))
    refused = (args.get("notCreated") or {}).get("k", {}).get("type")
    for sub in (args.get("created") or {}).values():  # leave nothing behind
        api(env.daemon.port, echo_request([["PushSubscription/set", {
            "destroy": [sub["id"]]}, "0"]]), env.users.bearer("alice"))
    return Outcome(
        "fullwidth-push-url", f"PushSubscription/set create with url {url}",
        "created" if created else f"refused: {refused}",
        "refused at create (forbidden), like https://127.0.0.1/",
        not created, {"url": url, "created": created, "set_error": refused})


# -- 8. token opacity --------------------------------------------------------------

_TOKEN_SHAPE = re.compile(r"^(.+)-([0-9a-z]{1,14})$")


def token_opacity(env: Env) -> Outcome:
    daemon, accounts = env.daemon, env.users.accounts
    stream = EventStream(daemon.port, env.users.bearer("alice"), "types=*&closeafter=no&ping=0")

    def change(account: str, state: str) -> None:
        publish(daemon.admin_port, daemon.admin_token, {accounts[account]: {"Email": state}})

    try:
        change("alice", "a1")
        first = stream.next_event()["id"]
        others = 5
        for i in range(others):
            change("bob", f"b{i}")
        pause(1.2)  # past alice's throttle window, so her next change goes out at once
        change("alice", "a2")
        second = stream.next_event()["id"]
    finally:
        stream.close()
    m1, m2 = _TOKEN_SHAPE.match(first), _TOKEN_SHAPE.match(second)
    gap = 0
    if m1 and m2 and m1.group(1) == m2.group(1):
        gap = int(m2.group(2), 36) - int(m1.group(2), 36)
    leaks = gap > 1
    observed = (f"ids {first} → {second}: the position moved by {gap} for one own change, "
                f"revealing {gap - 1} changes of another account" if leaks
                else f"ids {first} → {second}: nothing readable about other accounts")
    return Outcome(
        "token-opacity", f"alice's EventSource ids around {others} changes of bob's account",
        observed, "ids reveal nothing about other accounts", not leaks,
        {"first_id": first, "second_id": second, "decoded_gap": gap or None,
         "other_account_changes": others})


# -- 9. per-user concurrency -------------------------------------------------------

SOCKETS, PER_SOCKET = 10, 8
SLOW_CALLS = 16
"""Calls per request, each a store query in the SQL thread: a request stays in flight for
tens of milliseconds, longer than sending all 80 takes."""


def per_user_concurrency(env: Env) -> Outcome:
    port, alice = env.daemon.port, env.users.bearer("alice")
    sockets = [WebSocket(port, alice) for _ in range(SOCKETS)]
    try:
        batch = b"".join(WebSocket.frame({
            "@type": "Request", "id": f"r{i}", "using": [CORE], "methodCalls": [
                ["PushSubscription/get", {}, str(c)] for c in range(SLOW_CALLS)]})
            for i in range(PER_SOCKET))
        for ws in sockets:  # all of them at once, before the daemon can answer any
            ws.sock.sendall(batch)
        accepted = limited = other = 0
        for ws in sockets:
            for _ in range(PER_SOCKET):
                message, _ = ws.receive_json()
                if message.get("@type") == "Response":
                    accepted += 1
                elif message.get("limit") == "maxConcurrentRequests":
                    limited += 1
                else:
                    other += 1
    finally:
        for ws in sockets:
            ws.close()
    data = {"sockets": SOCKETS, "requests": SOCKETS * PER_SOCKET, "accepted": accepted,
            "refused_limit": limited, "other": other, "maxConcurrentRequests": 4}
    return Outcome(
        "per-user-concurrency", f"{SOCKETS * PER_SOCKET} requests ({SLOW_CALLS} "
        f"PushSubscription/get each) at once over {SOCKETS} WebSockets of one user",
        f"{accepted} accepted, {limited} refused with limit maxConcurrentRequests",
        "at most maxConcurrentRequests (4) in flight per user across sockets",
        accepted <= 4 + 4, data)  # 4 in flight; a few may finish while later ones arrive


ATTACKS: dict[str, Callable[[Env], Outcome]] = {
    "amplification-http": amplification_http,
    "amplification-ws": amplification_ws,
    "deep-references": deep_references,
    "login-timing": login_timing,
    "failed-login-flood": failed_login_flood,
    "fullwidth-push-url": fullwidth_push_url,
    "token-opacity": token_opacity,
    "per-user-concurrency": per_user_concurrency,
    "slowloris": slowloris,
    "descriptor-exhaustion": descriptor_exhaustion,
}


def run(names: list[str], workdir: Path) -> list[Outcome]:
    daemon = Daemon(workdir, workdir / "state", MAIN_SECTIONS, tag="attacks")
    users = setup_users(daemon)
    daemon.start()
    extra: list[Daemon] = []

    def low_fd() -> Daemon:
        low = Daemon(workdir, workdir / "state-lowfd", LOW_FD_SECTIONS, tag="attacks-lowfd")
        low.start()
        extra.append(low)
        # max-open-files only ever raises the limit; lower the running daemon's soft limit
        # the way a small LimitNOFILE= would have started it.
        _, hard = resource.prlimit(low.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(low.pid, resource.RLIMIT_NOFILE, (LOW_FD_LIMIT, hard))
        return low

    env = Env(daemon, users, workdir, low_fd)
    outcomes = []
    try:
        for name in names:
            start = time.monotonic()
            try:
                outcome = ATTACKS[name](env)
            except Exception as exc:
                traceback.print_exc()
                outcome = Outcome(name, "", f"the attack failed: {exc!r}", "", None)
            outcome.data["attack_seconds"] = round(time.monotonic() - start, 1)
            print(f"{name}: {outcome.observed}", file=sys.stderr)
            outcomes.append(outcome)
    finally:
        daemon.stop()
        for low in extra:
            low.stop()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ATTACKS)}")
    p.add_argument("--out-dir", default=str(ROOT / "docs"))
    p.add_argument("--workdir", default="")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ATTACKS)
    unknown = set(names) - set(ATTACKS)
    if unknown:
        p.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    # The daemons run this checkout's code, not whichever copy the venv has installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="jmappushd-attacks-"))
    started = time.time()
    outcomes = run(names, workdir)
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
               "commit": git_commit(), "seconds": round(time.time() - started, 1),
               "machine": machine(), "attacks": [o.__dict__ for o in outcomes]}
    out = Path(args.out_dir) / "security-attacks.json"
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(rst_table(outcomes, results))
    print(f"results: {out} ({results['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
