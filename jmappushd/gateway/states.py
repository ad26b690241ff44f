"""Reading an upstream account's real JMAP states after a change event, and publishing them.

Whatever tells the gateway that an account changed (a Cyrus notify datagram, the upstream's
EventSource, a poll tick, an admin ``/publish``), the states it pushes are the upstream's
own: :class:`StateReader` asks the upstream, with the reader's credentials, for the state of
every data type the account has (one request of ``Foo/get`` calls with ``ids: []``, which
return ``state`` and no objects) and publishes through the hub only the types whose state
moved since the last read. Events for one account within ``[upstream] debounce`` cost one
read; a read already running when another event arrives is followed by exactly one more, so
the last event is never answered by a read that started before it (nothing lost). An event
naming an account the reader's session does not list refreshes that session, at most once
per REFRESH_INTERVAL for all such accounts, and names it still does not list are forgotten:
bogus names cost bounded work and no memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.gateway.session import UpstreamSession
from jmappushd.gateway.upstream import UpstreamRejected, UpstreamResponse, UpstreamUnavailable
from jmappushd.jmap import ijson
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.registry import CORE_CAPABILITY

__all__ = ["StateReader", "read_states_request"]

StateMap = Mapping[str, Mapping[str, str]]


def read_states_request(account_id: str, types: tuple[str, ...], capabilities: list[str]
                        ) -> bytes:
    """One JMAP request reading the state of each type of ``account_id``."""
    calls = [[f"{t}/get", {"accountId": account_id, "ids": []}, t] for t in types]
    return ijson.dumps({"using": [CORE_CAPABILITY, *capabilities], "methodCalls": calls})


def parse_states(body: bytes, types: tuple[str, ...]) -> dict[str, str]:
    """``{type: state}`` from the answer; a type whose call failed is left out."""
    try:
        value = ijson.loads(body)
    except RequestProblem as e:
        raise ValueError(e.detail) from None
    responses = value.get("methodResponses") if isinstance(value, dict) else None
    if not isinstance(responses, list):
        raise ValueError("no methodResponses")
    states: dict[str, str] = {}
    for item in responses:
        if (isinstance(item, list) and len(item) == 3 and item[2] in types
                and isinstance(item[1], dict) and isinstance(item[1].get("state"), str)
                and item[0] == f"{item[2]}/get"):
            states[item[2]] = item[1]["state"]
    return states


RETRY_FIRST = 1.0  # s after an upstream outage, doubling per failed read
RETRY_MAX = 30.0
# An account the reader's session does not list (a user granted since the session was
# read, or a name in a bogus notify packet) refreshes that session, at most once per this
# many seconds; accounts met meanwhile wait for the next refresh, at most MAX_WAITING of
# them. Accounts still unknown after a refresh are forgotten, so names that are not
# accounts cost neither memory nor more than one upstream request per window.
REFRESH_INTERVAL = 5.0
MAX_WAITING = 1_000


class _Outcome(Enum):
    DONE = "done"
    RETRY = "retry"  # the upstream is unavailable: read again later
    UNKNOWN = "unknown"  # not an account of the reader's (fresh) session: forget it
    LATER = "later"  # unknown, and the session was refreshed too recently: wait


@dataclass
class _Account:
    timer: IDelayedCall | None = None
    reading: bool = False
    again: bool = False
    retry: float = 0.0
    known: dict[str, str] = field(default_factory=dict)
    seeded: bool = False
    event_refreshes: int = 0  # session refreshes started before the latest event


class StateReader:
    """Debounced state reads per account, published as one change each when states moved."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        debounce: float,
        session: Callable[[bool], Deferred[UpstreamSession]],
        post: Callable[[str, bytes], Deferred[UpstreamResponse]],
        publish: Callable[[StateMap], Awaitable[object]],
        stored: Callable[[str], Deferred[dict[str, str]]],
    ) -> None:
        """``session(refresh)`` gives the reader's upstream session; ``post(url, body)``
        sends a JMAP request with the reader's credentials; ``publish`` is the hub's;
        ``stored(account)`` the states last recorded for it (seeds the comparison after a
        restart, so the first read publishes only what moved while the daemon was down).
        """
        self._clock = clock
        self._debounce = debounce
        self._session = session
        self._post = post
        self._publish = publish
        self._stored = stored
        self._accounts: dict[str, _Account] = {}
        self._rejected_logged = False
        self._refreshing: list[Deferred[UpstreamSession]] | None = None
        self._last_refresh: float | None = None
        self._started = 0  # session refreshes started so far
        self._completed = 0  # the number of the last refresh that succeeded
        self._waiting: set[str] = set()
        self._waiting_logged = False
        self.reads = 0
        self.refreshes = 0

    @property
    def tracked(self) -> int:
        """How many accounts the reader keeps a record for (known ones, and unknown ones
        waiting for the next session refresh)."""
        return len(self._accounts)

    def changed(self, account_id: str) -> None:
        """An event says ``account_id`` changed: read its states soon (debounced)."""
        entry = self._accounts.setdefault(account_id, _Account())
        entry.event_refreshes = self._started
        if entry.reading:
            entry.again = True  # read once more when this read ends: it may predate the event
            return
        if entry.timer is None:
            entry.timer = self._clock.callLater(self._debounce, self._fire, account_id)

    def _fire(self, account_id: str) -> None:
        entry = self._accounts[account_id]
        entry.timer = None
        entry.reading = True
        Deferred.fromCoroutine(self._read(account_id, entry)).addBoth(
            lambda retry: self._done(account_id, entry, retry))

    def _done(self, account_id: str, entry: _Account, outcome: object) -> None:
        entry.reading = False
        if outcome is _Outcome.UNKNOWN:
            if entry.again:  # a newer event: the next read decides with it
                entry.again = False
                self.changed(account_id)
            else:
                self._forget(account_id, entry)
            return
        if outcome is _Outcome.LATER:
            self._wait_for_refresh(account_id, entry)
            return
        self._waiting.discard(account_id)
        if outcome is _Outcome.RETRY:
            # The upstream is down: the change is not lost, it is read again later.
            entry.retry = min(RETRY_MAX, entry.retry * 2 or RETRY_FIRST)
            if entry.timer is None:
                entry.timer = self._clock.callLater(entry.retry, self._fire, account_id)
            entry.again = False
            return
        entry.retry = 0.0
        if entry.again:
            entry.again = False
            self.changed(account_id)
        elif not entry.seeded:
            self._forget(account_id, entry)  # it holds nothing worth keeping

    def _forget(self, account_id: str, entry: _Account) -> None:
        self._waiting.discard(account_id)
        if self._accounts.get(account_id) is entry and entry.timer is None:
            del self._accounts[account_id]

    def _wait_for_refresh(self, account_id: str, entry: _Account) -> None:
        """Read ``account_id`` again once the session may be refreshed (bounded)."""
        entry.again = False
        if account_id not in self._waiting and len(self._waiting) >= MAX_WAITING:
            if not self._waiting_logged:
                self._waiting_logged = True
                self.log.warn("Over {limit} unknown upstream accounts named by change events "
                              "within {interval:g}s; ignoring the rest (logged once)",
                              limit=MAX_WAITING, interval=REFRESH_INTERVAL)
            self._forget(account_id, entry)
            return
        self._waiting.add(account_id)
        last = self._last_refresh if self._last_refresh is not None else 0.0
        delay = max(self._debounce, last + REFRESH_INTERVAL - self._clock.seconds())
        if entry.timer is None:
            entry.timer = self._clock.callLater(delay, self._fire, account_id)

    def _refresh_for(self, entry: _Account) -> Deferred[UpstreamSession] | _Outcome:
        """A reader session fetched after ``entry``'s last event, shared by concurrent
        reads; or UNKNOWN when one already was (and did not list it); or LATER when the
        session was refreshed less than REFRESH_INTERVAL ago."""
        if self._completed > entry.event_refreshes:
            return _Outcome.UNKNOWN
        mine: Deferred[UpstreamSession] = Deferred()
        if self._refreshing is not None and self._started > entry.event_refreshes:
            self._refreshing.append(mine)
            return mine
        now = self._clock.seconds()
        if self._refreshing is not None or (
                self._last_refresh is not None and now - self._last_refresh < REFRESH_INTERVAL):
            return _Outcome.LATER
        self._last_refresh = now
        self._refreshing = [mine]
        self._started += 1
        self.refreshes += 1
        number = self._started

        def settle(result: UpstreamSession | Failure) -> None:
            waiters, self._refreshing = self._refreshing or [], None
            if not isinstance(result, Failure):
                self._completed = number
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self._session(True).addBoth(settle)
        return mine

    async def _read(self, account_id: str, entry: _Account) -> _Outcome:
        """One read and what follows from it."""
        self.reads += 1
        try:
            session = await self._session(False)
            types = session.account_types(account_id)
            if not types:
                # A user granted since the session was read?
                refreshed = self._refresh_for(entry)
                if isinstance(refreshed, _Outcome):
                    return refreshed
                session = await refreshed
                types = session.account_types(account_id)
            if not types:
                self.log.debug("No readable account {account} upstream", account=account_id)
                return _Outcome.UNKNOWN
            capabilities = sorted(session.accounts[account_id].get("accountCapabilities", {}))
            body = read_states_request(account_id, types, capabilities)
            response = await self._post(session.api_url, body)
            states = parse_states(response.body, types)
            if not entry.seeded:
                entry.known = dict(await self._stored(account_id))
                entry.seeded = True
            moved = {t: s for t, s in states.items() if entry.known.get(t) != s}
            if moved:
                await self._publish({account_id: moved})
                entry.known.update(moved)
            return _Outcome.DONE
        except UpstreamUnavailable:
            return _Outcome.RETRY  # the client's health logged the outage once
        except UpstreamRejected as e:
            if not self._rejected_logged:
                self._rejected_logged = True
                self.log.error("The upstream refused the reader's credentials ({status}); "
                               "states cannot be read until [upstream] reader-user works",
                               status=e.status)
            return _Outcome.DONE
        except ValueError as e:
            self.log.warn("Upstream state read for {account} was not a JMAP response: {e}",
                          account=account_id, e=e)
            return _Outcome.DONE
        except Exception:
            # The store refused the publish (or its seed read): keep the change, try again.
            self.log.failure("Publishing the upstream states of {account} failed; retrying",
                             account=account_id)
            return _Outcome.RETRY

    def stop(self) -> None:
        for entry in self._accounts.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            entry.timer = None
