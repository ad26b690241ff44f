"""The metrics registry: hot-path tallies export as ordinary Prometheus counters."""

from __future__ import annotations

from jmappushd.metrics import Metrics


def test_events_sent_tally_is_a_labelled_counter() -> None:
    """Per-event counts are plain ints bumped on the reactor thread and read at scrape
    time; the exposition is the same counter family a prometheus Counter would give."""
    metrics = Metrics()
    ws = metrics.events_sent.labels("websocket")
    assert metrics.events_sent.labels("websocket") is ws  # one tally per label value
    ws.inc()
    ws.inc(4)
    metrics.events_sent.labels("eventsource").inc()
    text = metrics.render().decode()
    assert "# TYPE jmappushd_events_sent_total counter" in text
    assert 'jmappushd_events_sent_total{transport="websocket"} 5.0' in text
    assert 'jmappushd_events_sent_total{transport="eventsource"} 1.0' in text
    ws.inc()
    assert 'jmappushd_events_sent_total{transport="websocket"} 6.0' in metrics.render().decode()
