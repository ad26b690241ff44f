"""The HTTP/2 benchmark (``python -m benchmarks --only http2``) runs end to end at smoke
sizes, so its harness cannot rot: a TLS daemon with a run-time certificate, EventSource
streams over one h2 connection and over HTTP/1.1 connections, and Core/echo over an RFC
8441 WebSocket and an HTTP/1.1 one. It is on request only, so the default suite's smoke
test does not run it, and its results go to their own file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_http2_benchmark_smoke(tmp_path: Path) -> None:
    """Every stream opened and got every event on both protocols, every echo answered,
    the figures are ratios, and neither benchmarks.json nor benchmarks.rst was written."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--no-profile", "--only", "http2",
         "--workdir", str(tmp_path / "work"), "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (tmp_path / "benchmarks.json").exists()
    assert not (tmp_path / "benchmarks.rst").exists()
    data = json.loads((tmp_path / "benchmarks-http2.json").read_text())
    bench = data["benchmarks"]["http2"]
    assert "error" not in bench and bench["errors"] == 0
    (run,) = bench["streams"]["10"]["runs"]
    assert run["h2"]["connect"] == {"opened": 10, "failed": {}, "connections": 1,
                                    "seconds": run["h2"]["connect"]["seconds"]}
    assert run["h1"]["connect"]["connections"] == 10
    for proto in ("h1", "h2"):
        assert run[proto]["latency_ms"]["n"] == 10 * 3  # every stream, every round
        assert run[proto]["missing"] == 0
    for label in ("sequential", "inflight16"):
        (ratio,) = bench["echo"]["ratios"][label]
        assert 0 < ratio < 10
        assert bench["echo"]["passes"][0][label]["h2"]["requests"] > 0
    assert data["machine"]["cpu"]
