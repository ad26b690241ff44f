"""The gateway benchmark without Cyrus: recorded as skipped with the reason, never silently,
and never under CI=true, where the private Cyrus must run (the smoke suite runs it; its
report shows the reason: tests/test_benchmarks_smoke.py)."""

from __future__ import annotations

import pytest

from benchmarks import bench_gateway


def test_without_cyrus_the_benchmark_is_skipped_with_its_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(bench_gateway, "cyrus_unavailable", lambda: "no cyrus user")
    result = bench_gateway.run(None)  # type: ignore[arg-type]  # never reaches the context
    assert result["skipped"] == "Cyrus IMAP not available: no cyrus user"
    assert result["targets"] == dict.fromkeys(bench_gateway.TARGETS)


def test_under_ci_a_missing_cyrus_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(bench_gateway, "cyrus_unavailable", lambda: "no cyrus user")
    with pytest.raises(RuntimeError, match="required under CI=true: no cyrus user"):
        bench_gateway.run(None)  # type: ignore[arg-type]
