"""Change events naming accounts the reader does not see cost bounded work.

A notify packet (or an upstream event) may name a user the reader's session does not list:
one granted since the session was read, or a name in a bogus packet. The state reader then
refreshes the reader's session, but at most once per REFRESH_INTERVAL however many such
names arrive, shares one refresh between concurrent reads, and forgets names still unknown
after it, so that a flood of made-up names costs neither memory nor upstream requests;
a user granted meanwhile is still read, at the next refresh. Time is a task.Clock.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from jmappushd.gateway.states import MAX_WAITING, REFRESH_INTERVAL, StateReader
from tests.support import log_into
from tests.test_gateway_units import CYRUS_SESSION, MAIL, FakeUpstream, upstream_session

DEBOUNCE = 0.2


class Sessions:
    """The reader's session as the upstream has it now; counts refreshes."""

    def __init__(self) -> None:
        self.value = copy.deepcopy(CYRUS_SESSION)
        self.refreshes = 0
        self.cached = upstream_session()

    def grant(self, account: str) -> None:
        self.value["accounts"][account] = {"name": account, "isPersonal": False,
                                           "isReadOnly": True,
                                           "accountCapabilities": {MAIL: {}}}

    def __call__(self, refresh: bool) -> Deferred[Any]:
        if refresh:
            self.refreshes += 1
            self.cached = upstream_session(accounts=self.value["accounts"])
        return succeed(self.cached)


def build(clock: Clock) -> tuple[StateReader, Sessions, FakeUpstream, list[Any]]:
    sessions, upstream, published = Sessions(), FakeUpstream(), []

    async def publish(changed: Any) -> None:
        published.append(changed)

    reader = StateReader(clock, DEBOUNCE, sessions, upstream.post, publish,
                         lambda account: succeed({}))
    return reader, sessions, upstream, published


def test_a_flood_of_unknown_names_costs_one_refresh_and_no_memory() -> None:
    clock = Clock()
    reader, sessions, upstream, published = build(clock)
    for i in range(500):
        reader.changed(f"nobody-{i}")
    clock.advance(DEBOUNCE)
    assert sessions.refreshes == 1
    assert reader.refreshes == 1
    assert upstream.requests == 0 and published == []
    assert reader.tracked == 0
    assert clock.getDelayedCalls() == []


def test_unknown_names_after_a_refresh_wait_for_the_next_window() -> None:
    clock = Clock()
    reader, sessions, upstream, _ = build(clock)
    reader.changed("nobody")
    clock.advance(DEBOUNCE)
    assert sessions.refreshes == 1
    for i in range(100):
        reader.changed(f"later-{i}")
    clock.advance(DEBOUNCE)
    assert sessions.refreshes == 1  # too soon: they wait
    assert reader.tracked == 100
    clock.advance(REFRESH_INTERVAL)
    assert sessions.refreshes == 2  # one refresh for all of them
    assert reader.tracked == 0 and clock.getDelayedCalls() == []
    assert upstream.requests == 0


def test_a_user_granted_meanwhile_is_read_at_the_next_refresh() -> None:
    """Nothing lost for a real account: unknown when its first event came (the session
    had just been refreshed), it is read and published once the next refresh lists it."""
    clock = Clock()
    reader, sessions, _, published = build(clock)
    reader.changed("nobody")
    clock.advance(DEBOUNCE)
    sessions.grant("carol")
    reader.changed("carol")
    clock.advance(DEBOUNCE)
    assert published == []
    clock.advance(REFRESH_INTERVAL)
    assert published == [{"carol": {"Mailbox": "1", "Email": "1", "Thread": "1"}}]
    assert reader.tracked == 1  # a known account keeps its states for the comparison


def test_waiting_names_are_capped_and_the_excess_logged_once() -> None:
    clock = Clock()
    reader, sessions, _, _ = build(clock)
    events: list[Any] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        reader.changed("nobody")
        clock.advance(DEBOUNCE)
        for i in range(MAX_WAITING + 50):
            reader.changed(f"later-{i}")
        clock.advance(DEBOUNCE)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert reader.tracked == MAX_WAITING
    warned = [formatEvent(e) for e in events if "unknown upstream accounts" in formatEvent(e)]
    assert len(warned) == 1, warned
    clock.advance(REFRESH_INTERVAL)
    assert sessions.refreshes == 2 and reader.tracked == 0


def test_known_accounts_do_not_refresh_the_session() -> None:
    clock = Clock()
    reader, sessions, upstream, published = build(clock)
    for _ in range(3):
        reader.changed("alice")
        clock.advance(DEBOUNCE)
    assert sessions.refreshes == 0 and upstream.requests == 3
    assert published == [{"alice": {"Mailbox": "1", "Email": "1", "Thread": "1"}}]
