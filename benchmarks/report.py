"""Turn a results dict into docs/benchmarks.rst and the latency plot.

The analysis (what the profiles show and what would close each gap) is kept by
hand in benchmarks/findings.rst and included verbatim, so a re-run refreshes the
numbers without losing it. So are the studies in benchmarks/studies/ (one file per
investigation, included after the introduction in file-name order): what the
on-request benchmarks measured and the profiles behind a change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

FINDINGS = Path(__file__).with_name("findings.rst")
STUDIES = Path(__file__).with_name("studies")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An RST simple table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join([*lines, rule, ""])


def _times(ratio: float | None) -> str:
    """A ratio as ``1.27x``; ``n/a`` when the baseline was too small to measure."""
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "met" if value else "**missed**"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) if value not in (None, "") else "-"


def heading(text: str, char: str = "-") -> str:
    return f"{text}\n{char * len(text)}\n\n"


def plot_latency(results: dict[str, Any], path: Path) -> str | None:
    """Latency (p50, p99) against subscribers for the daemon and the baseline."""
    fanout = results["benchmarks"].get("fanout", {})
    sizes = fanout.get("sizes")
    if not sizes:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ns = sorted(int(n) for n in sizes)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"daemon": ("tab:blue", "jmappushd"), "baseline": ("tab:gray", "bare Twisted")}
    for who, (color, label) in styles.items():
        for pct, dash in (("p50", "--"), ("p99", "-")):
            ys = [sizes[str(n)][who]["latency_ms"][pct] for n in ns]
            ax.plot(ns, ys, dash, marker="o", color=color, label=f"{label} {pct}")
    ax.axhline(100, color="tab:red", linewidth=0.8, linestyle=":")
    ax.text(ns[0], 105, "100 ms target (at 1,000)", color="tab:red", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers watching the account (half EventSource, half WebSocket)")
    ax.set_ylabel("publish -> receipt latency (ms)")
    ax.set_title("Fan-out latency, throttles 0")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def render(results: dict[str, Any], plot: str | None) -> str:
    b = results["benchmarks"]
    parts = [heading("Benchmarks", "="), _intro(results), *_studies(), _targets(b),
             _machine(results), _reproduce()]
    sections = (("capacity", _capacity), ("fanout", _fanout), ("throughput", _throughput),
                ("webpush", _webpush), ("echo", _echo), ("gateway", _gateway))
    for name, fn in sections:
        if name in b:
            if "error" in b[name]:
                parts.append(_error(name, b[name]))
            elif "skipped" in b[name]:
                parts.append(_skipped(name, b[name]))
            else:
                parts.append(fn(b[name], plot))
    parts.append(_profiles(b))
    if FINDINGS.exists():
        parts.append(FINDINGS.read_text())
    return "\n".join(parts)


def _studies() -> list[str]:
    """The hand-written sections, each a file of its own, in file-name order."""
    return [path.read_text() for path in sorted(STUDIES.glob("*.rst"))]


def _intro(results: dict[str, Any]) -> str:
    return (f"Results of one ``python -m benchmarks`` run ({results['mode']} sizes, "
            f"{results['date']}, {results['wall_seconds']:.0f} s wall time). Every ratio is "
            "measured against its baseline in the same run on the same machine; absolute "
            "times are context only: this machine is a shared two-core VM. The raw numbers "
            "are in ``docs/benchmarks.json``.\n")


def _targets(b: dict[str, Any]) -> str:
    rows = []
    for name, result in b.items():
        for target, met in (result.get("targets") or {}).items():
            rows.append((name, target, "not measured" if met is None else met))
    return heading("Targets") + table(("benchmark", "target", "result"), rows)


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [("cores", m["cores"]), ("CPU", m["cpu"]), ("memory", f"{m['memory_gib']} GiB"),
            ("Python", f"{m['implementation']} {m['python']}"), ("kernel", m["kernel"]),
            ("Twisted / Autobahn / cryptography",
             f"{m['twisted']} / {m['autobahn']} / {m['cryptography']}"),
            ("open files (soft/hard)", f"{m['nofile_soft']} / {m['nofile_hard']}")]
    return heading("Machine") + table(("what", "value"), rows)


def _reproduce() -> str:
    return heading("Reproducing") + (
        "``make bench`` (or ``.venv/bin/python -m benchmarks``) runs everything and rewrites "
        "``docs/benchmarks.json``, ``docs/benchmarks.rst`` and ``docs/latency.png``; "
        "``--only capacity,fanout`` picks benchmarks, ``--smoke`` runs tiny sizes in seconds "
        "(the test suite does that, in ``tests/test_benchmarks_smoke.py``), ``--no-profile`` "
        "skips py-spy. Install the extra first: ``pip install -e '.[bench]'`` (matplotlib "
        "for the plot, pywebpush for its comparison, py-spy for the profiles).\n\n"
        "The daemon runs as ``twistd -n jmappushd --config <bench config>`` on a state "
        "directory prepared once per run: 10,000 users with bearer tokens (created with the "
        "store calls ``jmappushctl`` uses, with a cheap password hash, since these users "
        "present tokens), plus ``echo`` and ``fan`` created with ``jmappushctl`` itself. "
        "The bench config keeps production defaults (pings, heartbeats, timeouts) except: a "
        "listen backlog of 1024 (baseline too), no access log, and per benchmark the "
        "settings it names (throttles 0, per-user connection or concurrency limits raised "
        "where one user holds all connections). Load generators are separate processes "
        "(``benchmarks/load_*.py``: raw sockets on epoll, cheap by design) on 127.0.0.x "
        "source addresses, each bounded in count and time. Timestamps are "
        "``CLOCK_MONOTONIC``, comparable across processes.\n")


def _error(name: str, result: dict[str, Any]) -> str:
    return heading(f"{name}: not measured") + f"The benchmark failed: ``{result['error']}``\n"


def _skipped(name: str, result: dict[str, Any]) -> str:
    return heading(f"{name}: not measured") + f"Skipped: {result['skipped']}.\n"


def _capacity(c: dict[str, Any], plot: str | None) -> str:
    rows = []
    for label, r in (("bare Twisted / Autobahn", c["baseline"]),
                     ("jmappushd, one user", c["daemon"]),
                     ("jmappushd, a user per connection pair", c["daemon_user_each"])):
        rows.append((label, r["es_connect"]["opened"] + r["ws_connect"]["opened"],
                     r["es_kib_per_conn"], r["ws_kib_per_conn"],
                     100 * r["idle_cpu_core_fraction"], r["held"], r["dropped"],
                     sum(r["es_connect"]["failed"].values())
                     + sum(r["ws_connect"]["failed"].values())))
    n = c["baseline"]["n_per_kind"]
    text = heading("1. Connection capacity") + (
        f"{n:,} idle EventSource streams, then {n:,} idle WebSocket connections, in one "
        "process. RSS per connection is the VmRSS growth over each phase divided by the "
        "connections it added; idle CPU is the share of one core used over a window with "
        "all connections held (EventSource ping=30, the daemon's WebSocket heartbeat every "
        "5 s, answered by the clients; the bare servers send nothing).\n\n")
    text += table(("server", "connections", "KiB/ES", "KiB/WS", "idle CPU %", "held",
                   "dropped", "failed"), rows)
    text += (f"\nRatios (daemon, one user, against the baseline): EventSource "
             f"**{_times(c['es_ratio'])}**, WebSocket **{_times(c['ws_ratio'])}**. With a user per "
             f"connection pair the daemon's whole growth is {_times(c['user_each_total_ratio'])} "
             "the baseline's (cached principals and credentials per user come on top).\n")
    return text


def _fanout(f: dict[str, Any], plot: str | None) -> str:
    rows = []
    for n, v in sorted(f["sizes"].items(), key=lambda kv: int(kv[0])):
        bl, d = v["baseline"]["latency_ms"], v["daemon"]["latency_ms"]
        rows.append((int(n), v["daemon"]["rounds"], bl["p50"], bl["p99"], bl["max"], d["p50"],
                     d["p99"], d["max"], v["p99_ratio"], v["daemon"]["publish_ack_ms"]["p50"],
                     v["daemon"]["missing"]))
    text = heading("2. Fan-out latency") + (
        "One publish to an account watched by N connections of one user (half EventSource, "
        "half WebSocket), throttles 0. Latency: from just before the ``POST /publish`` is "
        "sent to the arrival of the event at each client; one sample per client per round, "
        "after 3 warm-up rounds. The baseline server writes the same bytes to the same "
        "connections from its own ``/publish`` (without recording anything).\n\n")
    text += table(("N", "rounds", "base p50", "base p99", "base max", "ours p50", "ours p99",
                   "ours max", "p99 ratio", "ack p50", "missing"), rows)
    if plot:
        text += f"\n.. image:: {plot}\n   :alt: fan-out latency against subscriber count\n"
    return text


def _throughput(t: dict[str, Any], plot: str | None) -> str:
    def row(server: str, r: dict[str, Any]) -> tuple[Any, ...]:
        return (server, r["batch"], r["rounds"], r["changes"], r["seconds"], r["changes_per_s"],
                r.get("daemon_cpu_us_per_change", "-"), r["ack_p50_ms"],
                r["events_received_total"])

    rows = [row("jmappushd", r) for r in t["runs"]]
    base = t.get("baseline") or {}
    rows += [row("bare Twisted", r) for r in base.get("runs", [])]
    pairs = t.get("pairs")
    design = (
        f"Both servers run at once with their own clients and take {pairs} pairs of short "
        "bursts per batch size, daemon - bare then bare - daemon, each burst after an "
        "unmeasured round and with the other server held stopped (study 17); rows are "
        "each side's rows in the order run. " if pairs else "")
    text = heading("3. Publish throughput") + (
        f"{t['accounts']:,} accounts, one listener each (half EventSource, half WebSocket), "
        "throttles 0; rounds of one change per account, ``batch`` accounts per publish, "
        "4 publisher connections. Counted when every client has seen its last state. "
        + design +
        "The bare Twisted server gets the same publishes from the same publisher and "
        "writes each account's event to that account's connections only (twisted.web and "
        "Autobahn, nothing recorded): the ceiling for one event per change here. The CPU "
        "column is the server process's CPU time per change.\n\n"
    ) + table(("server", "batch", "rounds", "changes", "seconds", "changes/s",
               "CPU us/change", "ack p50 ms", "events received"), rows)
    ratios = t.get("ratio_vs_baseline") or {}
    if ratios:
        text += "\njmappushd's rate against the bare server's at the same batch size: " + (
            ", ".join(f"{ratio:.2f}x (batch {batch})" for batch, ratio in ratios.items())
        ) + " (mean rate over mean rate).\n"
    spread = t.get("pair_ratios") or {}
    if spread:
        text += "\nThe pairs' own ratios, lowest to highest: " + "; ".join(
            f"batch {batch} " + " ".join(f"{r:.2f}" for r in sorted(values))
            for batch, values in spread.items()) + ".\n"
    return text


def _webpush(w: dict[str, Any], plot: str | None) -> str:
    cpu = w["cpu_us_per_message"]
    rows = [("jmappushd (Sender.headers + ece.encrypt + request objects)", cpu["jmappushd"],
             w["vs_floor"]),
            ("pywebpush (Vapid.sign + WebPusher._prepare_send_data)", cpu.get("pywebpush"),
             w["pywebpush_vs_floor"]),
            ("floor (keygen, ECDH, HKDF via HMAC, AES-GCM)", cpu["floor"], 1.0)]
    d = w["deliveries"]
    drows = [(name, v["ok"], v["failed"], v["per_s"], v.get("cpu_us", "-"),
              v.get("receiver_cpu_us", "-")) for name, v in d.items() if isinstance(v, dict)]
    return heading("4. Web Push pipeline") + (
        "Per-message CPU (best of interleaved repetitions, same encoded body for all):\n\n"
    ) + table(("path", "us/message", "x floor"), rows) + (
        f"\njmappushd is **{w['vs_pywebpush'] or 0:.2f}x** faster than pywebpush and "
        f"**{w['vs_floor']:.2f}x** the floor.\n\nDeliveries to a local receiver (201 to "
        f"everything), {d['concurrency']} in flight, the loops in turns (each row one "
        "turn, in the order run); ratio of the mean rates "
        f"**{w['deliveries_ratio']:.2f}x** the bare treq loop. CPU is per delivery, the "
        "sending process's and the receiver's:\n\n"
    ) + table(("loop", "ok", "failed", "per second", "sender CPU us", "receiver CPU us"),
              drows)


def _echo(e: dict[str, Any], plot: str | None) -> str:
    modes = ("http-seq", "ws-seq", "http-seq-pinned", "ws-seq-pinned", "http-par", "ws-par")
    def cpu(side: str, m: str) -> Any:
        return e[side][m].get("server_cpu_us_per_request") or "-"

    rows = [(m, e["daemon"][m]["rate"], e["daemon"][m]["p50_ms"], cpu("daemon", m),
             e["baseline"][m]["rate"], cpu("baseline", m), e["daemon_vs_bare"][m])
            for m in modes]
    r, br = e["ratios"], e["baseline_ratios"]
    raw = e["daemon"].get("raw_round_trip_us", {})
    text = heading("5. WebSocket vs HTTP") + (
        "``Core/echo`` round trips per second: ``-seq`` one request at a time, ``-par`` 64 "
        "in flight (64 keep-alive HTTP connections; one WebSocket with 64 outstanding), "
        "``-pinned`` with client and server on one core. HTTP sends Basic credentials on "
        "every request (the daemon's credential cache spares the scrypt check). The bare "
        "server answers the same exchange from bare twisted.web and bare Autobahn. "
        "Sequential modes alternate HTTP and WebSocket in 5 slices; \"CPU us\" is the "
        "server process's CPU time per request over those slices.\n\n")
    text += table(("mode", "ours /s", "ours p50 ms", "ours CPU us", "bare /s", "bare CPU us",
                   "ours/bare"), rows)
    text += "\n" + table(("WS/HTTP ratio", "jmappushd", "bare Twisted"),
                  [("sequential", r["sequential"], br["sequential"]),
                   ("sequential, pinned", r["sequential_pinned"], br["sequential_pinned"]),
                   ("64 in flight", r["inflight64"], br["inflight64"])])
    if raw:
        text += (f"\nA raw TCP ping-pong between two processes takes {raw['same_core']:.0f} us "
                 f"on one core and {raw['across_cores']:.0f} us across the two cores of this "
                 "VM: cross-core wake-ups, not the daemon, dominate unpinned sequential "
                 "figures.\n")
    return text


GATEWAY_MODES = (
    ("direct-http-seq", "Cyrus, HTTP, sequential"),
    ("gw-http-seq", "gateway, HTTP, sequential"),
    ("proxy-http-seq", "bare proxy, HTTP, sequential"),
    ("gw-ws-seq", "gateway, one WebSocket, sequential"),
    ("proxy-ws-seq", "bare proxy, one WebSocket, sequential"),
    ("direct-http-par", "Cyrus, HTTP, 16 connections"),
    ("gw-ws-par", "gateway, one WebSocket, 16 in flight"),
    ("proxy-ws-par", "bare proxy, one WebSocket, 16 in flight"),
    ("gw-http-par", "gateway, HTTP, 16 connections"),
    ("proxy-http-par", "bare proxy, HTTP, 16 connections"),
)


def _gateway(g: dict[str, Any], plot: str | None) -> str:
    """The gateway figures as ratios against Cyrus answering directly in the same run."""
    req, r = g["requests"], g["ratios"]
    rows = [(label, req[m]["rate"], req[m]["p50_ms"], req[m]["p99_ms"],
             req[m]["front_cpu_us_per_request"] or "-", req[m]["cyrus_cpu_us_per_request"],
             req[m]["errors"]) for m, label in GATEWAY_MODES]
    text = heading("6. Gateway mode in front of Cyrus") + (
        f"The daemon in gateway mode in front of a private Cyrus IMAP {g['cyrus']} on "
        "loopback; ``Mailbox/get`` of every mailbox of one user, Basic on every HTTP "
        "request, each connection's first request made before the clock starts. \"bare "
        "proxy\" is the floor of one Twisted hop (``benchmarks/baseline_proxy.py``: bytes "
        "passed through over a keep-alive Agent, WebSocket requests parsed and re-encoded, "
        "no session check). CPU columns: the process in front of Cyrus, and Cyrus's own "
        "processes, per request.\n\n")
    text += table(("mode", "req/s", "p50 ms", "p99 ms", "front CPU us", "Cyrus CPU us",
                   "errors"), rows)
    text += "\n" + table(("ratio", "gateway", "bare proxy", "target"), [
        ("p50 latency vs direct HTTP, sequential", _times(r["overhead_p50"]),
         _times(r["bare_proxy_overhead_p50"]), "<= 1.15x"),
        ("one WebSocket vs direct HTTP, sequential, rate", _times(r["ws_seq_rate"]),
         _times(req["proxy-ws-seq"]["rate"] / max(1e-9, req["direct-http-seq"]["rate"])),
         "-"),
        ("one WebSocket vs direct HTTP, 16 in flight, rate", _times(r["ws16_rate"]),
         _times(r["bare_proxy_ws16_rate"]), ">= 1.5x"),
    ])
    crow = []
    for name, c in g["changes"].items():
        lat, start = c["latency_ms"], c["from_deliver_start_ms"]
        crow.append((name, c["debounce_ms"], lat["n"], lat["p50"], lat["p99"], lat["max"],
                     start["p50"], start["p99"], c["timeouts"]))
    text += "\n" + (
        "Change latency: from Cyrus's ``deliver`` returning (and, as an upper bound, from "
        "its start: ``runuser`` and ``deliver`` take their own time) to the ``state`` "
        "event carrying Cyrus's new Email state at an EventSource client; EventSource "
        f"throttle 0; ``poll`` with poll-interval {g['poll_interval_s']} s and deliveries "
        "at random phases of it. Cyrus sends its event before ``deliver`` exits, so the "
        "first figure can be below zero.\n\n")
    text += table(("changes", "debounce ms", "n", "p50 ms", "p99 ms", "max ms",
                   "from start p50", "from start p99", "missed"), crow)
    return text


def _profiles(b: dict[str, Any]) -> str:
    found = []
    for name, result in b.items():
        for key, value in _walk(result):
            is_profile = key.endswith("profile") or key.startswith("profile_")
            if is_profile and isinstance(value, dict) and "self_pct" in value:
                found.append((f"{name}: {key}", value))
    if not found:
        return ""
    text = heading("Profiles") + (
        "py-spy samples of the daemon (200 Hz) during extra runs of the same workload after "
        "the measured ones. Samples waiting in the reactor's ``epoll`` or in the thread "
        "pool's queue are dropped, so the shares are of busy time. *self* is the share of "
        "samples with the function on top of the stack, *incl.* with it anywhere on the "
        "stack; ``untilConcludes`` is Twisted's wrapper around the ``send()`` system call. "
        "Raw collapsed stacks (``*.pyspy``) stay in the work directory.\n\n")
    for title, prof in found:
        text += (f"**{title}** ({prof['samples']} busy samples, "
                 f"{prof.get('idle_samples', 0)} idle)\n\n")
        rows = [(n, p) for n, p in prof["self_pct"][:12]]
        text += table(("function (self)", "%"), rows) + "\n"
        ours = [(n, p) for n, p in prof.get("jmappushd_inclusive_pct", [])][:12]
        if ours:
            text += table(("jmappushd function (incl.)", "%"), ours) + "\n"
    return text


def _walk(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((str(k), v))
            if isinstance(v, dict) and "self_pct" not in v:
                out += _walk(v, str(k))
    return out
