"""``python -m benchmarks``: run the suite, write docs/benchmarks.{json,rst} and docs/latency.png.

    python -m benchmarks                      # the full suite (about 15-25 minutes)
    python -m benchmarks --smoke              # tiny sizes, seconds; writes to the work dir
    python -m benchmarks --only echo,fanout   # some benchmarks only
    python -m benchmarks --only http2         # on request only: docs/benchmarks-http2.json
    python -m benchmarks --only cluster       # cluster mode on a private PostgreSQL:
                                              # docs/benchmarks-cluster.json only
    python -m benchmarks --only heap          # what an idle EventSource stream holds

Each benchmark is independent: one that fails is recorded with its error and the
others still run. Everything runs on loopback, bounded in count and time. ``heap``
(``benchmarks/heap_eventsource.py``) is not part of the default run: it is an
investigation tool (heap snapshots under tracemalloc, a few minutes), asked for by name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_capacity,
    bench_cluster,
    bench_echo,
    bench_fanout,
    bench_gateway,
    bench_http2,
    bench_throughput,
    bench_webpush,
    heap_eventsource,
    report,
)
from benchmarks.common import ROOT, machine
from benchmarks.context import Context

BENCHMARKS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "webpush": bench_webpush.run,
    "echo": bench_echo.run,
    "fanout": bench_fanout.run,
    "throughput": bench_throughput.run,
    "capacity": bench_capacity.run,
    "gateway": bench_gateway.run,
    "http2": bench_http2.run,
    "cluster": bench_cluster.run,
    "heap": heap_eventsource.run,
}
# Run only when named in ``--only``: they need more than the daemon (cluster: a private
# PostgreSQL), or take long, and their results go to their own file, not to
# benchmarks.json/rst (their section in docs/benchmarks.rst is written by hand).
ON_REQUEST = {"http2": "benchmarks-http2.json", "cluster": "benchmarks-cluster.json",
              "heap": "benchmarks-eventsource-memory.json"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds each")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--workdir", default="", help="scratch directory (default: a temp dir)")
    p.add_argument("--out-dir", default="",
                   help="where results go (default: docs/, or the work dir with --smoke)")
    p.add_argument("--profile", dest="profile", action="store_true", default=None,
                   help="py-spy profiles of the daemon (default: on for full runs)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--render", default="", metavar="JSON",
                   help="only re-render the RST and the plot from an earlier results file")
    return p.parse_args(argv)


def render_only(path: Path, out_dir: Path) -> int:
    results = json.loads(path.read_text())
    plot = report.plot_latency(results, out_dir / "latency.png")
    (out_dir / "benchmarks.rst").write_text(report.render(results, plot))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        return render_only(Path(args.render), Path(args.out_dir or ROOT / "docs"))
    names = ([n.strip() for n in args.only.split(",") if n.strip()]
             or [n for n in BENCHMARKS if n not in ON_REQUEST])
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.stderr.write(f"unknown benchmark(s): {', '.join(unknown)}\n")
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="jmappushd-bench-"))
    ctx = Context(workdir, smoke=args.smoke)
    ctx.profile = (not args.smoke) if args.profile is None else args.profile
    out_dir = Path(args.out_dir) if args.out_dir else (workdir if args.smoke else ROOT / "docs")
    started = time.monotonic()
    needed = max(ctx.sizes["capacity"] if "capacity" in names else 0,
                 ctx.sizes["throughput_accounts"] if "throughput" in names else 0,
                 bench_cluster.accounts_needed(ctx) if "cluster" in names else 0, 1)
    log(f"work dir {workdir}; preparing {needed} users")
    ctx.prepare(needed)
    results: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full", "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sizes": ctx.sizes,
        "benchmarks": {},
    }
    for name in names:
        log(f"running {name}")
        begin = time.monotonic()
        try:
            result = BENCHMARKS[name](ctx)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:]}
            log(f"{name} FAILED: {result['error']}")
        result["wall_seconds"] = round(time.monotonic() - begin, 1)
        results["benchmarks"][name] = result
        log(f"{name} done in {result['wall_seconds']}s; targets: {result.get('targets')}")
    results["notes"] = ctx.notes
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    if all(n in ON_REQUEST for n in names):
        for name in names:
            own = results | {"benchmarks": {name: results["benchmarks"][name]}}
            (out_dir / ON_REQUEST[name]).write_text(json.dumps(own, indent=1, default=str)
                                                    + "\n")
        log(f"results in {out_dir} after {results['wall_seconds']}s")
        return 1 if any("error" in r for r in results["benchmarks"].values()) else 0
    (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot = report.plot_latency(results, out_dir / "latency.png")
    (out_dir / "benchmarks.rst").write_text(report.render(results, plot))
    log(f"results in {out_dir} after {results['wall_seconds']}s")
    failed = [n for n, r in results["benchmarks"].items() if "error" in r]
    return 1 if failed else 0


def log(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
