"""``changes = eventsource``: the event-stream parser, and the source against a real upstream.

The upstream with working push here is jmappushd itself (standalone): the source keeps
one stream open with the reader's credentials and reports the accounts its state events
name, and reconnects with ``Last-Event-ID`` after the upstream restarts.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from jmappushd.gateway.upstream_events import (
    EventStreamParser,
    UpstreamEventSource,
    accounts_of_state_event,
)
from tests.support import (
    LiveDaemon,
    bearer,
    live_reactor,
    make_config,
    start_daemon,
    stop_daemon,
)


def events_of(chunks: list[bytes]) -> list[tuple[str, str, str | None]]:
    seen: list[tuple[str, str, str | None]] = []
    parser = EventStreamParser(lambda kind, data, event_id: seen.append((kind, data, event_id)))
    for chunk in chunks:
        parser.feed(chunk)
    return seen


def test_parser_handles_any_chunking_and_line_ending() -> None:
    stream = (b": comment\r\nevent: state\r\nid: t1\r\ndata: {\"a\":1}\r\n\r\n"
              b"event: ping\ndata: {}\n\n"
              b"data: x\rdata: y\r\r\n")
    expected = [("state", '{"a":1}', "t1"), ("ping", "{}", "t1"), ("message", "x\ny", "t1")]
    assert events_of([stream]) == expected
    assert events_of([bytes([b]) for b in stream]) == expected  # one byte at a time


def test_parser_bounds_a_line() -> None:
    with pytest.raises(ValueError, match="too long"):
        events_of([b"data: " + b"x" * 1_000_001])


def test_state_event_accounts() -> None:
    data = '{"@type":"StateChange","changed":{"a1":{"Email":"s1"},"a2":{"Mailbox":"s"}}}'
    assert accounts_of_state_event(data) == ["a1", "a2"]
    assert accounts_of_state_event("{nope") == []
    assert accounts_of_state_event('{"changed":[1]}') == []


@pytest_twisted.ensureDeferred
async def test_source_follows_a_real_upstream_stream_across_a_restart(tmp_path: Path) -> None:
    reactor = live_reactor()
    config = make_config(tmp_path, sections={"event-source": "event-source-throttle = 0"})
    upstream = await start_daemon(config)
    account = await upstream.add_user("reader", "reader-pw")
    seen: list[str] = []
    waiters: list[tuple[int, defer.Deferred[None]]] = []

    def changed(name: str) -> None:
        seen.append(name)
        for count, waiter in list(waiters):
            if len(seen) >= count and not waiter.called:
                waiter.callback(None)

    def wait_for(count: int) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        waiters.append((count, waiter))
        if len(seen) >= count:
            waiter.callback(None)
        return waiter.addTimeout(10, reactor)

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    url = upstream.base + "/jmap/eventsource/?types=*&closeafter=no&ping=0"
    auth = b"Basic " + base64.b64encode(b"reader:reader-pw")
    source = UpstreamEventSource(reactor, client, lambda: defer.succeed(url), auth, changed)
    source.startService()
    try:
        for _ in range(1000):  # until the stream is open and subscribed (10 s at most)
            if upstream.app.hub.listener_count:
                break
            await _tick(reactor)
        assert upstream.app.hub.listener_count == 1
        await publish(upstream, {account: {"Email": "s1"}})
        await wait_for(1)
        assert seen == [account]
        # The upstream restarts: the source reconnects (backoff) with Last-Event-ID and,
        # resuming, is told about what changed while it was away.
        await stop_daemon(upstream)
        upstream = await start_daemon(config)
        await publish(upstream, {account: {"Email": "s2"}})
        await wait_for(2)
        assert seen == [account, account]
        assert source.connects >= 2
    finally:
        source.stopService()
        await stop_daemon(upstream)
        await pool.closeCachedConnections()


async def publish(daemon: LiveDaemon, changed: dict[str, dict[str, str]]) -> None:
    """Over a fresh connection: a kept-alive one would still reach the stopped daemon."""
    response = await treq.post(daemon.admin + "/publish",
                               json={"@type": "StateChange", "changed": changed},
                               headers=bearer(daemon.app.admin_token), persistent=False)
    assert response.code == 202


def _tick(reactor: Any) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
