"""4. Web Push pipeline: per-message CPU against pywebpush and the primitives' floor;
deliveries per second to a local receiver against a bare treq POST loop.

Both halves run in a child process (:mod:`benchmarks.load_webpush`). The receiver
is the bare baseline server's ``POST /push`` (201 to everything) in its own
process. The delivery half drives jmappushd's ``Sender`` over its real
``AgentTransport`` (the persistent pool, the SSRF-guarded endpoint factory, the push
timeout), each POST in a slot of the daemon's ``SlotLimiter`` at its default caps,
which is what the delivery service does per message; the daemon's scheduling around
it (the per-subscription queue, retries, the store writes that settle a delivered
state) is not in this figure (``daemon_path`` measures them, for reference). Both
loops hold the per-origin cap in flight (one receiver is one origin): the daemon is
offered twice that and the cap holds it there, so the comparison is at the
concurrency a fan-out to one push service runs at
(benchmarks/studies/08-webpush-deliveries.rst). The loops take turns, four each
(bare - ours - ours - bare, then flipped), and the ratio is the mean of our rates over
the mean of the bare loop's; each turn also records the receiver's CPU per delivery,
which tells whether the sending or the receiving side was the one saturated.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from benchmarks.common import PYTHON, ROOT
from benchmarks.context import Context
from benchmarks.server import Baseline
from jmappushd.config import PushConfig

CONCURRENCY = PushConfig().max_in_flight_per_origin


def child(*args: str, timeout: float = 600) -> dict[str, Any]:
    result = subprocess.run([PYTHON, "-m", "benchmarks.load_webpush", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"load_webpush {args}: {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def side_turns(deliver: dict[str, Any], side: str) -> list[dict[str, Any]]:
    """One side's turns (``jmappushd``, ``jmappushd_2``, ...), in the order run."""
    return [v for name, v in deliver.items()
            if isinstance(v, dict) and (name == side or name.startswith(side + "_"))]


def turn_rates(deliver: dict[str, Any], side: str) -> list[float]:
    """The rates of one side's turns."""
    return [float(v["per_s"]) for v in side_turns(deliver, side)]


def deliveries_ratio(deliver: dict[str, Any]) -> float:
    """The mean of our turns' rates over the mean of the bare loop's (as the throughput
    benchmark does): one turn's rate moves by a third on a shared VM (study 15)."""
    ours, bare = turn_rates(deliver, "jmappushd"), turn_rates(deliver, "bare_treq")
    return (sum(ours) / len(ours)) / (sum(bare) / len(bare))


def run(ctx: Context) -> dict[str, Any]:
    count = ctx.sizes["webpush_messages"]
    cpu = child("--mode", "cpu", "--count", str(count), "--rounds", "3" if ctx.smoke else "7")
    out: dict[str, Any] = {"cpu_us_per_message": cpu}
    has_pywebpush = "pywebpush" in cpu
    if not has_pywebpush:
        ctx.note("pywebpush is not installed (pip install -e '.[bench]'): its comparison "
                 "was skipped")
    out["vs_pywebpush"] = cpu["pywebpush"] / cpu["jmappushd"] if has_pywebpush else None
    out["vs_floor"] = cpu["jmappushd"] / cpu["floor"]
    out["pywebpush_vs_floor"] = cpu["pywebpush"] / cpu["floor"] if has_pywebpush else None
    receiver = Baseline(ctx.workdir, tag="webpush-receiver")
    receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.admin_port}/push/subscription-1"
        deliver = child("--mode", "deliver", "--url", url, "--count",
                        str(ctx.sizes["webpush_deliveries"]), "--concurrency", str(CONCURRENCY),
                        "--turns", "4" if ctx.smoke else "8",
                        "--receiver-pid", str(receiver.pid))
        # For reference (no target): what the scheduling and the durable records around
        # each POST add, measured after the comparison, in its own process.
        daemon = child("--mode", "daemon", "--url", f"http://127.0.0.1:{receiver.admin_port}"
                       "/push", "--count", str(ctx.sizes["webpush_deliveries"]),
                       "--rounds", "3")["daemon"]
    finally:
        receiver.stop()
    loops = [v for v in deliver.values() if isinstance(v, dict)]
    bare = max(turn_rates(deliver, "bare_treq"))
    out["deliveries"] = deliver | {"concurrency": CONCURRENCY}
    out["deliveries_ratio"] = deliveries_ratio(deliver)
    out["deliveries_cpu_us"] = {side: min(v["cpu_us"] for v in side_turns(deliver, side))
                                for side in ("jmappushd", "bare_treq")}
    out["daemon_path"] = {
        "rounds": daemon, "per_s": max(r["per_s"] for r in daemon),
        "cpu_us": min(r["cpu_us"] for r in daemon),
        "vs_bare_treq": max(r["per_s"] for r in daemon) / bare}
    failed = sum(v["failed"] for v in loops)
    out["targets"] = {
        "cpu_vs_pywebpush>=1.6": (out["vs_pywebpush"] >= 1.6) if has_pywebpush else None,
        "cpu_vs_floor<=1.15": out["vs_floor"] <= 1.15,
        "deliveries>=0.9x_bare_treq": out["deliveries_ratio"] >= 0.9 and failed == 0,
    }
    return out
