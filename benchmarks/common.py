"""Shared helpers: process statistics from /proc, percentiles, child processes speaking JSON.

Timestamps everywhere are ``CLOCK_MONOTONIC`` nanoseconds, which Linux keeps
system-wide, so a receipt time taken in a load-generator process can be
subtracted from a send time taken in the orchestrator.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def now_ns() -> int:
    """System-wide monotonic time, comparable across processes."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def pause(seconds: float) -> None:
    """Let the measured processes run for a while (an Event wait, not a busy loop)."""
    threading.Event().wait(seconds)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time consumed by ``pid`` so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in ns (schedstat: /proc/<pid>/stat counts
    in 10 ms ticks, too coarse for a few microseconds per change over a 20,000-change run)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except OSError:
            continue  # a thread that has just ended
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_cpu(pid: int, window: float) -> float:
    """Fraction of one core ``pid`` used during ``window`` seconds."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    pause(window)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def percentiles(values_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds (nearest-rank)."""
    if not values_ns:
        return {"n": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(values_ns)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, int(p * n + 0.999999) - 1))] / 1e6

    return {"n": n, "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99),
            "max": ordered[-1] / 1e6, "mean": sum(ordered) / n / 1e6}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    """Cores, memory, Python and library versions: the context of every number."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import resource
    from importlib.metadata import version

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cores": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "kernel": platform.release(), "twisted": version("twisted"),
        "autobahn": version("autobahn"), "cryptography": version("cryptography"),
        "nofile_soft": soft, "nofile_hard": hard,
    }


@dataclass
class Child:
    """A load-generator process: JSON commands on stdin, JSON lines on stdout."""

    args: list[str]
    name: str = "child"
    process: subprocess.Popen[str] = field(init=False)
    lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, bufsize=1,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            del self.stderr[:-50]

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next message of type ``kind`` (others are skipped), or raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {kind!r} within {timeout:.0f}s; "
                                   f"stderr: {''.join(self.stderr[-5:])}")
            try:
                message = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if message is None:
                raise RuntimeError(f"{self.name} exited: {''.join(self.stderr[-10:])}")
            if message.get("type") == kind:
                return message

    def stop(self) -> None:
        self.send(cmd="stop")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def expect_all(children: Iterable[Child], kind: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [c.expect(kind, max(0.1, deadline - time.monotonic())) for c in children]


def stop_all(children: Iterable[Child]) -> None:
    children = list(children)
    for child in children:
        child.send(cmd="stop")
    for child in children:
        child.stop()


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts (fewer parts if total is small)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
