"""How the Web Push delivery benchmark orders its turns and turns them into a ratio."""

from __future__ import annotations

from benchmarks.bench_webpush import deliveries_ratio, turn_rates
from benchmarks.load_webpush import TURNS


def test_turns_balance_both_sides_in_four_and_in_eight() -> None:
    """bare - ours - ours - bare, then flipped: each side's mean turn is at the same time
    whether the run takes four turns (smoke) or eight."""
    for n in (4, 8):
        turns = TURNS[:n]
        positions = {side: [i for i, s in enumerate(turns) if s == side]
                     for side in ("bare_treq", "jmappushd")}
        assert len(positions["bare_treq"]) == len(positions["jmappushd"]) == n // 2
        assert sum(positions["bare_treq"]) == sum(positions["jmappushd"])


def test_ratio_is_mean_over_mean_of_every_turn() -> None:
    """Every turn counts (not the best one), and the concurrency entry is no turn."""
    deliver = {"type": "result",
               "bare_treq": {"per_s": 1000.0}, "jmappushd": {"per_s": 900.0},
               "jmappushd_2": {"per_s": 1100.0}, "bare_treq_2": {"per_s": 1500.0},
               "concurrency": 32}
    assert turn_rates(deliver, "jmappushd") == [900.0, 1100.0]
    assert turn_rates(deliver, "bare_treq") == [1000.0, 1500.0]
    assert deliveries_ratio(deliver) == 0.8
