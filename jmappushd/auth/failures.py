"""Failed-login throttling by client address, and a penalty per attacked username.

One address gets ``max_failures`` failed Basic logins per window; the next failure locks
it for a whole ``window``, during which its Basic attempts are refused (429) before any
password is looked at — even a cached one, or the lock would tell the attacker which
guess is right. Attempts still being checked count against the allowance, so parallel
requests cannot buy more guesses than sequential ones. A success resets the address.

Guesses spread over many addresses are slowed per username instead: past
``max_failures`` failures for one name within the window, each further failure for it
is answered after a growing delay. Only failures wait, so the real user, with the right
password from an address of their own, still gets in at once. The penalty is keyed by
the name as typed, whether or not such a user exists, so it reveals nothing either.

IPv6 clients are counted per /64, the block one subscriber usually holds. Both tables
are capped (least recently touched entries are dropped first), so an attacker with many
addresses or names costs bounded memory. Time comes from the injected clock.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jmappushd.auth.refusals import LoginThrottled

MAX_ENTRIES = 50_000  # per table; an entry is a few hundred bytes
PENALTY_FIRST = 0.05  # s, the delay of the first failure over the allowance
PENALTY_MAX = 5.0  # s
_PURGE_PER_CALL = 4  # expired entries dropped per insertion (amortised clean-up)
_LOGGED_NAME = 64  # characters of a username shown in the log

K = TypeVar("K", str, bytes)


def address_key(client: str | None) -> str | None:
    """The unit failures are counted in: the IPv4 address or the IPv6 /64; None when
    the transport has no address (a Unix socket), which is not counted."""
    if not client or client == "-":
        return None
    return _address_key(client)


@functools.lru_cache(maxsize=4096)
def _address_key(client: str) -> str:
    """Parsing an address costs more than the rest of a cached login: remembered."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(eq=False)
class _Window:
    """Failures counted since ``start``; for an address also its lock and open checks."""

    start: float
    failures: int = 0
    locked_until: float = 0.0
    pending: set[bytes] = field(default_factory=set)


class FailureThrottle:
    """Decides whether a Basic login may be checked, and how long a failure waits."""

    log = Logger()

    def __init__(self, clock: IReactorTime, max_failures: int, window: float,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max(1, max_failures)
        self._window = window
        self._cap = max(1, max_entries)
        self._secret = secrets.token_bytes(32)
        self._addresses: OrderedDict[str, _Window] = OrderedDict()
        self._names: OrderedDict[bytes, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._addresses) + len(self._names)

    def admit(self, client: str | None, attempt: bytes) -> None:
        """Raise :class:`LoginThrottled` unless ``client`` may try ``attempt`` (a keyed hash
        of the credentials; the same credentials in flight count once)."""
        key = address_key(client)
        if key is None:
            return
        now = self._clock.seconds()
        entry = self._current(self._addresses, key, now)
        if entry.locked_until > now:
            raise LoginThrottled(
                "too many failed logins from this address; retry later",
                math.ceil(entry.locked_until - now))
        if attempt not in entry.pending and entry.failures + len(entry.pending) >= self._max:
            raise LoginThrottled("too many logins in progress from this address", 1)
        entry.pending.add(attempt)

    def failed(self, client: str | None, attempt: bytes, username: str) -> float:
        """Count a failure; return how many seconds its 401 should wait."""
        now = self._clock.seconds()
        key = address_key(client)
        if key is not None:
            entry = self._current(self._addresses, key, now)
            entry.pending.discard(attempt)
            entry.failures += 1
            if entry.failures >= self._max and entry.locked_until <= now:
                entry.locked_until = now + self._window
                self.log.warn(
                    "login throttle: {client} locked for {window}s after {failures} failed"
                    " logins", client=key, window=self._window, failures=entry.failures)
        return self._penalise(username, now)

    def succeeded(self, client: str | None, attempt: bytes) -> None:
        """A success resets its address's count (other checks in flight stay open)."""
        key = address_key(client)
        entry = None if key is None else self._addresses.get(key)
        if key is None or entry is None:
            return
        entry.pending.discard(attempt)
        entry.failures = 0
        entry.locked_until = 0.0
        entry.start = self._clock.seconds()
        self._drop_if_idle(key, entry)

    def abandon(self, client: str | None, attempt: bytes) -> None:
        """The check ended without a verdict (e.g. KDF queue full): forget it."""
        key = address_key(client)
        entry = None if key is None else self._addresses.get(key)
        if key is None or entry is None:
            return
        entry.pending.discard(attempt)
        self._drop_if_idle(key, entry)

    def _penalise(self, username: str, now: float) -> float:
        name = hmac.new(self._secret, username.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()
        entry = self._current(self._names, name, now)
        entry.failures += 1
        over = entry.failures - self._max
        if over <= 0:
            return 0.0
        if over == 1:
            self.log.warn("login throttle: more than {max} failed logins for {username!r}"
                          " within {window}s; its failures are now delayed",
                          max=self._max, username=username[:_LOGGED_NAME],
                          window=self._window)
        return float(min(PENALTY_MAX, PENALTY_FIRST * 2 ** min(over - 1, 16)))

    def _current(self, table: OrderedDict[K, _Window], key: K, now: float) -> _Window:
        """The live window of ``key`` (a new one once the old one has passed)."""
        entry = table.get(key)
        if entry is not None and self._expired(entry, now):
            entry.start, entry.failures, entry.locked_until = now, 0, 0.0
        if entry is None:
            entry = table[key] = _Window(now)
            self._trim(table, now)
        table.move_to_end(key)
        return entry

    def _expired(self, entry: _Window, now: float) -> bool:
        if entry.locked_until:
            return entry.locked_until <= now
        return now - entry.start >= self._window

    def _trim(self, table: OrderedDict[K, _Window], now: float) -> None:
        for _ in range(_PURGE_PER_CALL):
            oldest = next(iter(table.items()), None)
            if oldest is None or not self._expired(oldest[1], now) or oldest[1].pending:
                break
            del table[oldest[0]]
        while len(table) > self._cap:
            table.popitem(last=False)

    def _drop_if_idle(self, key: str, entry: _Window) -> None:
        if not entry.pending and not entry.failures and not entry.locked_until:
            self._addresses.pop(key, None)
