"""What an idle EventSource stream holds: heap snapshots and RSS, daemon against bare.

    python -m benchmarks.heap_eventsource                 # 10,000 streams, about 4 minutes
    python -m benchmarks.heap_eventsource --streams 500   # a quick look
    python -m benchmarks --only heap                      # the same, inside the suite

Two parts, each on the real daemon (``twistd -n jmappushd``, every stream of one
user, as the capacity figure compares) and on the bare twisted.web server the
capacity figure uses (``benchmarks.baseline_server``, ``/events``):

* **RSS** (VmRSS): ``rounds`` runs of each server without tracemalloc, interleaved
  (bare, daemon, daemon, bare, ...), so drift on this shared machine hits both alike;
  per stream is (RSS after the streams - RSS before) / streams opened, after the same
  warm-up as the capacity benchmark.
* **Heap**: each server once more under ``python -X tracemalloc=32``, through the
  ``serve`` wrapper below, which dumps a snapshot (after ``gc.collect()``) and a census
  of gc-tracked objects by type when it gets SIGUSR1. The difference between the
  snapshot before and after the streams is divided by the streams opened and grouped
  three ways: by the line that allocated (innermost frame), by *owner* (the innermost
  frame in jmappushd, twisted or benchmarks code, so a dict made by ``collections``
  for twisted.web counts as twisted.web's), and by the first jmappushd line of the
  traceback (what the daemon itself caused, even inside Twisted).

Streams come from ``benchmarks.load_clients`` processes (one source address each),
loopback only; every wait is bounded. The raw figures go to ``--out`` (JSON) and a
readable summary to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import PYTHON, ROOT, Child, machine, pause, rss_kib, split, stop_all
from benchmarks.context import Context
from benchmarks.server import (
    Baseline,
    Daemon,
    Server,
    ServerProcess,
    client_processes,
    wait_ready,
)

FRAMES = 32
WARM_UP = 50
LIMITS = {"event-source": "max-connections-per-user = 20000"}
SNAPSHOT_TIMEOUT = 120.0
# Matched anywhere in a path: an exported older tree's daemon (``--before``) counts too.
_PROJECT = (os.sep + "jmappushd" + os.sep,)
_OWNERS = (*_PROJECT, os.sep + "benchmarks" + os.sep, os.sep + "twisted" + os.sep)


# -- inside the server process --


def _census(objects: list[Any] | None = None) -> dict[str, Any]:
    """gc-tracked objects (or ``objects``) by type: ``{type: [count, shallow bytes,
    instance-dict bytes, instance-dict keys]}``, plus one instance's attribute names."""
    out: dict[str, list[int]] = {}
    keys: dict[str, list[str]] = {}
    for obj in gc.get_objects() if objects is None else objects:
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        entry = out.get(name)
        if entry is None:
            entry = out[name] = [0, 0, 0, 0]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
        attrs = getattr(obj, "__dict__", None) if not isinstance(obj, type) else None
        if type(attrs) is dict:
            entry[2] += sys.getsizeof(attrs)
            entry[3] += len(attrs)
            keys[name] = sorted(attrs)
    return {"types": out, "keys": keys}


def dump_point(snap_dir: Path, index: int) -> None:
    """Write snapshot ``index`` (after ``gc.collect()``) and the type census beside it;
    the snapshot's file appears last, complete."""
    # What the cyclic collector would free now (garbage the RSS figures include until a
    # collection runs), seen in a forked child so the server's own heap is untouched.
    garbage_child = os.fork()
    if garbage_child == 0:
        try:
            tracemalloc.stop()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            (snap_dir / f"garbage-{index}.json").write_text(json.dumps(_census(gc.garbage)))
        finally:
            os._exit(0)
    os.waitpid(garbage_child, 0)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    # The census reads each object's __dict__, which makes CPython build the dicts it
    # otherwise keeps inline (and would show in the next snapshot): a forked child
    # takes it from a copy of the heap and exits.
    child = os.fork()
    if child == 0:
        try:
            tracemalloc.stop()
            (snap_dir / f"census-{index}.json").write_text(json.dumps(_census()))
        finally:
            os._exit(0)
    base = snap_dir / f"snap-{index}"
    snapshot.dump(str(base) + ".tracemalloc.tmp")
    del snapshot
    os.waitpid(child, 0)
    os.replace(str(base) + ".tracemalloc.tmp", str(base) + ".tracemalloc")


def _install_dumper(snap_dir: Path) -> None:
    taken = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        taken[0] += 1
        dump_point(snap_dir, taken[0])

    signal.signal(signal.SIGUSR1, dump)


def serve(snap_dir: str, target: list[str]) -> None:
    """Run ``target`` (``twistd ...`` or a module and its arguments) with the dumper."""
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)
    _install_dumper(Path(snap_dir))
    sys.argv = list(target)
    if target[0] == "twistd":
        from twisted.scripts.twistd import run

        run()
    else:
        runpy.run_module(target[0], run_name="__main__", alter_sys=True)


# -- the orchestrator --


def traced(server: Server, snap_dir: Path) -> Server:
    """The same server, started through :func:`serve` under tracemalloc."""
    proc = server.proc
    argv = proc.argv
    target = ["twistd", *argv[1:]] if argv[0].endswith("twistd") else argv[2:]
    wrapped = [PYTHON, "-X", f"tracemalloc={FRAMES}", "-m", "benchmarks.heap_eventsource",
               "serve", "--snap-dir", str(snap_dir), "--", *target]
    # Starting under tracemalloc takes several times longer (more on a busy machine).
    server.proc = _ProcessAt(wrapped, proc.log_path, proc.marker)
    server.proc.root = getattr(proc, "root", None)
    server.proc.start_timeout = 240.0
    return server


def snapshot(server: Server, snap_dir: Path, index: int) -> tuple[Path, Path]:
    """Ask for snapshot ``index`` and wait (bounded) until it is on disk."""
    os.kill(server.pid, signal.SIGUSR1)
    path = snap_dir / f"snap-{index}.tracemalloc"
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: no snapshot {index} in {SNAPSHOT_TIMEOUT} s")
        pause(0.2)
    return path, snap_dir / f"census-{index}.json"


_runs = [0]


def open_streams(server: Server, ctx: Context, n: int, auth_file: str) -> list[Child]:
    """Each run from source addresses of its own: the previous runs' closed connections
    sit in TIME_WAIT on theirs (5,000 a run would use up one address's ports in a few)."""
    _runs[0] += 1
    src_base = 30 + (_runs[0] * ctx.client_procs) % 200
    return client_processes(server, "es", split(n, ctx.client_procs), auth_file=auth_file,
                            src_base=src_base, max_seconds=ctx.max_seconds)


def warm_up(server: Server, ctx: Context, auth_file: str) -> None:
    """As the capacity benchmark: one-time costs land in neither figure."""
    group = client_processes(server, "es", [WARM_UP], auth_file=auth_file, src_base=20,
                             max_seconds=60)
    try:
        wait_ready(group, ctx.connect_timeout)
    finally:
        stop_all(group)


def measure(server: Server, ctx: Context, n: int, auth_file: str,
            between: Callable[[str], None] | None = None) -> dict[str, Any]:
    """RSS before and after ``n`` idle streams; ``between("before"|"after")`` at each point."""
    result: dict[str, Any] = {"server": server.name, "streams": n}
    children: list[Child] = []
    server.start()
    try:
        warm_up(server, ctx, auth_file)
        pause(ctx.settle)
        if between is not None:
            between("before")
        result["rss_before_kib"] = rss_kib(server.pid)
        started = time.monotonic()
        children = open_streams(server, ctx, n, auth_file)
        result["connect"] = wait_ready(children, ctx.connect_timeout)
        result["connect"]["seconds"] = round(time.monotonic() - started, 2)
        pause(ctx.settle)
        result["rss_after_kib"] = rss_kib(server.pid)
        if between is not None:
            between("after")
        opened = max(1, result["connect"]["opened"])
        result["opened"] = result["connect"]["opened"]
        result["bytes_per_stream"] = (result["rss_after_kib"]
                                      - result["rss_before_kib"]) * 1024 / opened
    finally:
        stop_all(children)
        server.stop()
    return result


def heap_run(server: Server, ctx: Context, n: int, auth_file: str, top: int
             ) -> dict[str, Any]:
    snap_dir = Path(tempfile.mkdtemp(prefix=f"heap-{server.name}-", dir=ctx.workdir))
    traced(server, snap_dir)
    files: dict[str, tuple[Path, Path]] = {}

    def take(point: str) -> None:
        files[point] = snapshot(server, snap_dir, len(files) + 1)

    result = measure(server, ctx, n, auth_file, between=take)
    result["heap"] = analyse(files["before"], files["after"], result["opened"], top)
    result["snapshots"] = {k: str(v[0]) for k, v in files.items()}
    return result


# -- analysis --


def _owner(frames: tuple[tracemalloc.Frame, ...], roots: tuple[str, ...]) -> str | None:
    """The innermost frame (``frames`` innermost first) under one of ``roots``."""
    for frame in frames:
        if any(r in frame.filename for r in roots):
            return _where(frame)
    return None


_FILES: dict[str, str] = {}
"""Short name (as reported) -> the file it came from, for the source line."""


def _where(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for marker in (os.sep + "site-packages" + os.sep, *_OWNERS):
        if marker in name:
            keep = marker if marker in _OWNERS else ""
            name = keep.lstrip(os.sep) + name.rsplit(marker, 1)[1]
            break
    else:
        name = os.path.join(*Path(name).parts[-2:])
    _FILES.setdefault(name, frame.filename)
    return f"{name}:{frame.lineno}"


def _group(snap: tracemalloc.Snapshot) -> dict[str, Counter[str]]:
    groups: dict[str, Counter[str]] = {"line": Counter(), "owner": Counter(),
                                       "jmappushd": Counter(), "module": Counter()}
    counts: Counter[str] = Counter()
    keys: dict[tracemalloc.Traceback, tuple[str, str, str, str]] = {}
    for trace in snap.traces:
        key = keys.get(trace.traceback)
        if key is None:
            frames = tuple(trace.traceback)[::-1]  # a Traceback lists the oldest frame first
            line = _where(frames[0])
            owner = _owner(frames, _OWNERS) or line
            key = keys[trace.traceback] = (line, owner, owner.rsplit(":", 1)[0],
                                           _owner(frames, _PROJECT) or "(no jmappushd frame)")
        size = trace.size
        groups["line"][key[0]] += size
        counts[key[0]] += 1
        groups["owner"][key[1]] += size
        groups["module"][key[2]] += size
        groups["jmappushd"][key[3]] += size
    groups["line_count"] = counts
    return groups


def _source(where: str) -> str:
    name, _, lineno = where.rpartition(":")
    path = _FILES.get(name)
    return linecache.getline(path, int(lineno)).strip()[:90] if path else ""


def analyse(before: tuple[Path, Path], after: tuple[Path, Path], streams: int, top: int
            ) -> dict[str, Any]:
    """The snapshots' difference per stream, grouped; the type census's too."""
    _FILES.clear()  # another server's files (an exported tree) may share the names
    old = _group(tracemalloc.Snapshot.load(str(before[0])))
    new = _group(tracemalloc.Snapshot.load(str(after[0])))
    n = max(1, streams)
    out: dict[str, Any] = {}
    total = sum(new["line"].values()) - sum(old["line"].values())
    out["traced_bytes_per_stream"] = round(total / n, 1)
    for key in ("line", "owner", "module", "jmappushd"):
        diff = Counter(new[key])
        diff.subtract(old[key])
        rows = []
        for where, size in diff.most_common(top):
            if size / n < 1:
                break
            row: dict[str, Any] = {"where": where, "bytes": round(size / n, 1)}
            if key == "line":
                row["blocks"] = round((new["line_count"][where]
                                       - old["line_count"][where]) / n, 2)
            if key in ("line", "owner", "jmappushd") and ":" in where:
                row["source"] = _source(where)
            rows.append(row)
        out[f"by_{key}"] = rows
    c_old = json.loads(before[1].read_text())["types"]
    census = json.loads(after[1].read_text())
    types = []
    for name, (count, size, dict_size, dict_keys) in census["types"].items():
        count0, size0, dict_size0, _ = c_old.get(name, (0, 0, 0, 0))
        if (count - count0) / n >= 0.5:
            entry: dict[str, Any] = {
                "type": name, "per_stream": round((count - count0) / n, 2),
                "bytes": round((size - size0) / n, 1),
                "dict_bytes": round((dict_size - dict_size0) / n, 1)}
            if dict_size:
                entry["attributes"] = round(dict_keys / count, 1)
                entry["keys"] = census["keys"].get(name, [])
            types.append(entry)
    out["by_type"] = sorted(types, key=lambda t: -(t["bytes"] + t["dict_bytes"]))[:top]
    return out


# -- the run --


def export_tree(ref: str, into: Path) -> Path:
    """The daemon's code (``jmappushd``, ``twisted/plugins``) at ``ref`` of this repository,
    exported into ``into`` (``git archive``): a daemon to compare with."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "jmappushd", "twisted"],
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=120)
    return into


class _ProcessAt(ServerProcess):
    """A server process that imports jmappushd from ``root`` (an exported older tree,
    holding only ``jmappushd`` and ``twisted/plugins``) and the rest, benchmarks
    included, from this checkout; ``root`` None: everything from this checkout."""

    root: Path | None = None
    start_timeout = 60.0

    def start(self, timeout: float = 0.0) -> None:
        first = self.root or ROOT
        env = dict(os.environ)
        env.pop("STATE_DIRECTORY", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys((str(first), str(ROOT))))
        # ``python -m`` puts its working directory first on sys.path.
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, cwd=first)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(timeout or self.start_timeout) or not self._seen:
            self.kill()
            raise RuntimeError(f"{self.argv[:3]} from {first} did not become ready")


def _at(server: Server, root: Path | None, name: str) -> Server:
    if root is not None:
        proc = server.proc
        server.proc = _ProcessAt(proc.argv, proc.log_path, proc.marker)
        server.proc.root = root
        server.name = name
    return server


def run(ctx: Context, streams: int | None = None, rounds: int = 2, top: int = 30,
        before: str = "", traced_runs: bool = True) -> dict[str, Any]:
    """RSS rounds interleaved, then one traced run of each server; ratios daemon / bare.

    With ``before`` (a git ref), the daemon of that commit runs too, in every round and
    traced, so a change is measured against its own starting point in the same run.
    """
    n = streams if streams is not None else (40 if ctx.smoke else 10_000)
    auth = ctx.fan_auth_file()
    old_root = export_tree(before, ctx.workdir / "before-tree") if before else None

    def bare(tag: str) -> Server:
        return Baseline(ctx.workdir, tag=tag)

    def daemon(tag: str) -> Server:
        return Daemon(ctx.workdir, ctx.state_dir, LIMITS, tag=tag)

    def old(tag: str) -> Server:
        server = Daemon(ctx.workdir, ctx.state_dir, LIMITS, tag=tag)
        return _at(server, old_root, "jmappushd-before")

    makers = [bare, daemon] + ([old] if old_root is not None else [])
    rss: list[dict[str, Any]] = []
    for i in range(rounds):
        order = makers if i % 2 == 0 else makers[::-1]
        pair: dict[str, Any] = {}
        for make in order:
            server = make(f"heap-rss-{make.__name__}-{i}")
            pair[server.name] = measure(server, ctx, n, auth)
        base = max(1.0, pair["baseline"]["bytes_per_stream"])
        pair["ratio"] = pair["jmappushd"]["bytes_per_stream"] / base
        if "jmappushd-before" in pair:
            pair["ratio_before"] = pair["jmappushd-before"]["bytes_per_stream"] / base
        rss.append(pair)
        log(f"RSS round {i + 1}: " + ", ".join(
            f"{name} {pair[name]['bytes_per_stream']:.0f} B" for name in pair
            if isinstance(pair[name], dict)) + f" per stream; ratio {pair['ratio']:.2f}x")
    heap: dict[str, Any] = {}
    for make in makers if traced_runs else []:  # each made when its turn comes (free ports)
        server = make(f"heap-traced-{make.__name__}")
        heap[server.name] = heap_run(server, ctx, n, auth, top)
    result: dict[str, Any] = {
        "streams": n, "before": before, "rss_rounds": rss, "heap": heap,
        "rss_ratio_mean": sum(r["ratio"] for r in rss) / len(rss),
        # At smoke sizes RSS moves in whole pages: no figure to hold against a target.
        "targets": {"rss_ratio<=1.2": None if ctx.smoke
                    else max(r["ratio"] for r in rss) <= 1.2},
    }
    if old_root is not None:
        result["rss_ratio_before_mean"] = sum(r["ratio_before"] for r in rss) / len(rss)
    if heap:
        traced_base = max(1.0, heap["baseline"]["heap"]["traced_bytes_per_stream"])
        result["traced_ratio"] = (heap["jmappushd"]["heap"]["traced_bytes_per_stream"]
                                  / traced_base)
        if old_root is not None:
            result["traced_ratio_before"] = (
                heap["jmappushd-before"]["heap"]["traced_bytes_per_stream"] / traced_base)
    return result


def summary(result: dict[str, Any], top: int = 20) -> str:
    lines = [f"{result['streams']} idle streams per server"]
    for i, pair in enumerate(result["rss_rounds"], 1):
        sizes = ", ".join(f"{name} {pair[name]['bytes_per_stream']:.0f}" for name in pair
                          if isinstance(pair[name], dict))
        extra = f", before {pair['ratio_before']:.3f}" if "ratio_before" in pair else ""
        lines.append(f"RSS round {i} (B/stream): {sizes}; ratio {pair['ratio']:.3f}{extra}")
    for name, run_ in result["heap"].items():
        heap = run_["heap"]
        lines.append(f"\n== {name}: traced {heap['traced_bytes_per_stream']:.0f} B/stream")
        for key in ("module", "owner", "jmappushd", "line"):
            lines.append(f"-- by {key}")
            for row in heap[f"by_{key}"][:top]:
                extra = f" x{row['blocks']}" if "blocks" in row else ""
                lines.append(f"{row['bytes']:8.0f}{extra:>7}  {row['where']}  "
                             f"{row.get('source', '')}")
        lines.append("-- by type (gc-tracked: shallow bytes, its __dict__'s bytes, count)")
        for row in heap["by_type"][:top]:
            attrs = f"  ({row['attributes']} attributes)" if "attributes" in row else ""
            lines.append(f"{row['bytes']:8.0f} {row['dict_bytes']:6.0f} "
                         f"{row['per_stream']:6.2f}  {row['type']}{attrs}")
    traced = result.get("traced_ratio")
    lines.append(f"\ntraced ratio {traced or 0:.3f}, "
                 f"RSS ratio mean {result['rss_ratio_mean']:.3f}")
    if "rss_ratio_before_mean" in result:
        lines.append(f"before ({result['before']}): traced ratio "
                     f"{result.get('traced_ratio_before') or 0:.3f}, RSS ratio mean "
                     f"{result['rss_ratio_before_mean']:.3f}")
    return "\n".join(lines)


def reanalyse(path: Path, top: int) -> int:
    """Group the snapshots of an earlier run again (the analysis changed, not the run)."""
    result = json.loads(path.read_text())
    for entry in result["heap"].values():
        files = {point: (Path(snap), Path(snap).with_name(
            Path(snap).name.replace("snap-", "census-").replace(".tracemalloc", ".json")))
            for point, snap in entry["snapshots"].items()}
        entry["heap"] = analyse(files["before"], files["after"], entry["opened"], top)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    sys.stdout.write(summary(result) + "\n")
    return 0


def log(text: str) -> None:
    sys.stderr.write(f"[heap {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        p = argparse.ArgumentParser(prog="heap_eventsource serve")
        p.add_argument("--snap-dir", required=True)
        p.add_argument("target", nargs=argparse.REMAINDER)
        args = p.parse_args(argv[1:])
        target = args.target[1:] if args.target[:1] == ["--"] else args.target
        serve(args.snap_dir, target)
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.heap_eventsource",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2, help="interleaved RSS rounds")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--before", default="", metavar="REF",
                   help="also measure the daemon of this git commit, in the same rounds")
    p.add_argument("--rss-only", action="store_true", help="no traced runs (RSS rounds only)")
    p.add_argument("--analyse", default="", metavar="JSON",
                   help="only analyse again the snapshots an earlier results file names")
    p.add_argument("--workdir", default="")
    p.add_argument("--out", default="", help="JSON results (default: <workdir>/heap.json)")
    args = p.parse_args(argv)
    if args.analyse:
        return reanalyse(Path(args.analyse), args.top)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="jmappushd-heap-"))
    ctx = Context(workdir)
    log(f"work dir {workdir}")
    ctx.prepare(1)
    result = run(ctx, args.streams, args.rounds, args.top, args.before,
                 traced_runs=not args.rss_only)
    result["machine"] = machine()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(args.out or workdir / "heap.json")
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    sys.stdout.write(summary(result) + "\n")
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
