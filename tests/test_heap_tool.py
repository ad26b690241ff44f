"""The heap tool's analysis (benchmarks/heap_eventsource.py): per-stream bytes by owner.

The breakdown in docs/benchmarks.rst comes from :func:`analyse`; here it reads two
snapshots taken around a known number of known allocations made through Twisted, and
must put them on Twisted's line, per "stream", with the type census agreeing.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from twisted.web.http_headers import Headers

from benchmarks.heap_eventsource import analyse, dump_point

N = 500


def _take(tmp_path: Path, index: int) -> tuple[Path, Path]:
    dump_point(tmp_path, index)
    return tmp_path / f"snap-{index}.tracemalloc", tmp_path / f"census-{index}.json"


def test_analysis_puts_each_allocation_on_its_owner_per_stream(tmp_path: Path) -> None:
    """N Headers objects, each with one header, made between the snapshots: their
    bytes land on twisted/web/http_headers.py, divided by N, and the census counts one
    Headers per "stream"."""
    tracemalloc.start(32)
    try:
        before = _take(tmp_path, 1)
        held = []
        for i in range(N):
            headers = Headers()
            headers.addRawHeader(b"X-Test", b"value-%d" % i)
            held.append(headers)
        after = _take(tmp_path, 2)
    finally:
        tracemalloc.stop()
    result = analyse(before, after, N, top=10)
    modules = {row["where"]: row["bytes"] for row in result["by_module"]}
    assert max(modules, key=lambda m: modules[m]) == "twisted/web/http_headers.py"
    # A Headers object, its dict of lists and one value: some hundreds of bytes each.
    assert 100 < modules["twisted/web/http_headers.py"] < 2000
    assert result["traced_bytes_per_stream"] >= modules["twisted/web/http_headers.py"]
    types = {row["type"]: row for row in result["by_type"]}
    assert types["twisted.web.http_headers.Headers"]["per_stream"] == 1.0
    assert len(held) == N
