"""Sampling profiles of the daemon with py-spy, summarised as top functions.

``py-spy record --format raw`` writes collapsed stacks ("frame;frame;... count").
The summary lists, per function (name, file, line of definition), the share of
samples in which it was on the stack (inclusive) and on top of it (self), which
is what "what in which file costs what" needs. The raw file is kept next to the
results for a flame graph (``flamegraph.pl`` or speedscope read it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON

# Top frames that mean "waiting", not working: with --nonblocking py-spy cannot tell
# idle threads itself, so samples parked in the reactor's poll or in the thread pool's
# queue are dropped here.
IDLE_TOPS = ("EPollReactor.doPoll ", "Condition.wait ", "Queue.get ")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]+?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    candidate = Path(PYTHON).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profile:
    """A py-spy recording of ``pid`` running in the background until ``finish``."""

    def __init__(self, pid: int, out: Path, duration: float, rate: int = 200) -> None:
        self.out = out
        self.process: subprocess.Popen[bytes] | None = None
        exe = py_spy()
        if exe is None:
            return
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))),
             "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, top: int = 40) -> dict[str, Any]:
        if self.process is None:
            return {"error": "py-spy is not installed (pip install py-spy)"}
        try:
            _, err = self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return {"error": "py-spy did not finish"}
        if not self.out.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
        return summarise(self.out.read_text(), top) | {"raw": self.out.name}


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(collapsed: str, top: int = 40) -> dict[str, Any]:
    """Inclusive and self shares per function from collapsed stacks, idle samples dropped."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1].startswith(IDLE_TOPS):
            idle += count
            continue
        total += count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def ranked(table: dict[str, int]) -> list[list[Any]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100.0 * n / total, 1)] for name, n in best]

    ours = {k: v for k, v in inclusive.items() if "jmappushd/" in k}
    return {"samples": total, "idle_samples": idle, "self_pct": ranked(own),
            "inclusive_pct": ranked(inclusive), "jmappushd_inclusive_pct": ranked(ours)}
