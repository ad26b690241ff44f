"""One connection's StateChange subscription (RFC 8887 §4.3.5).

Created by WebSocketPushEnable and dropped by WebSocketPushDisable, a newer
enable (C-WS-6) or the end of the connection. It is the hub listener: changes
are filtered to the connection's accounts and types, coalesced by the shared
leading-edge throttle, and written as StateChange frames with ``pushState``.
An enable that carries a ``pushState`` first sends what changed since that
token; changes published while that catch-up query runs are held (merged, so
bounded) and folded in afterwards, so the newest state always wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.core.hub import Change, Hub, HubSubscription, StateMap, merge, restrict
from jmappushd.core.throttle import CoalescingThrottle
from jmappushd.transports.websocket.frames import state_change_frame

Payload = tuple[dict[str, dict[str, str]], bytes]
"""A change restricted to one listener's view, and its StateChange as a text frame."""


class PayloadSource(Protocol):
    """Restricts and encodes a change once per distinct view (the factory's cache)."""

    def payload_for(self, change: Change, account_ids: frozenset[str],
                    types: frozenset[str] | None) -> Payload | None: ...


class PushSession:
    """Filter, throttle and write StateChanges for one connection."""

    __slots__ = ("_account_ids", "_held", "_held_token", "_ready", "_send", "_source",
                 "_subscription", "active", "throttle", "types")
    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float, send: Callable[[bytes], None],
                 source: PayloadSource, types: frozenset[str] | None) -> None:
        self._send = send
        self._source = source
        self.types = types
        self.throttle = CoalescingThrottle(clock, interval, self._flush)
        self._account_ids: frozenset[str] = frozenset()
        self._subscription: HubSubscription | None = None
        self._held: dict[str, dict[str, str]] | None = None
        self._held_token = ""
        self._ready: bytes | None = None
        self.active = True

    def start(self, hub: Hub, account_ids: frozenset[str], push_state: str | None) -> None:
        """Subscribe, then (with a token) catch up; subscribing first loses nothing (WS-19)."""
        self._account_ids = account_ids
        self._subscription = hub.subscribe(self, account_ids)
        if push_state is None:
            return
        self._held = {}
        d = defer.ensureDeferred(hub.catch_up(push_state, account_ids))
        d.addCallbacks(self._caught_up, self._catch_up_failed)

    def resubscribe(self, hub: Hub, account_ids: frozenset[str]) -> None:
        """Follow changed grants: watch exactly the accounts now readable."""
        if not self.active or account_ids == self._account_ids:
            return
        if self._subscription is not None:
            self._subscription.cancel()
        self._account_ids = account_ids
        self._subscription = hub.subscribe(self, account_ids)

    def cancel(self) -> None:
        """Leave the hub and drop pending data and the throttle's timer at once."""
        self.active = False
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self.throttle.cancel()
        self._held = None

    def change_published(self, change: Change) -> None:
        """Hub callback: offer this listener's part of ``change`` to the throttle."""
        found = self._source.payload_for(change, self._account_ids, self.types)
        if found is None:
            return
        restricted, frame = found
        if self._held is not None:
            merge(self._held, restricted)
            self._held_token = change.token
            return
        # With nothing pending, an immediate flush sends exactly this change: reuse
        # the frame built once for every listener with the same view.
        self._ready = None if self.throttle.pending else frame
        self.throttle.offer(restricted, change.token)
        self._ready = None

    def _flush(self, changed: StateMap, token: str) -> None:
        frame = self._ready
        self._send(frame if frame is not None else state_change_frame(changed, token))

    def _caught_up(self, result: tuple[dict[str, dict[str, str]], str, bool]) -> None:
        states, token, known = result
        held, self._held = self._held, None
        if not self.active or held is None:
            return
        changed = restrict(states, self._account_ids, self.types)
        if held:
            merged: dict[str, dict[str, str]] = {}
            merge(merged, changed)  # restrict's maps are read-only: merge into new ones
            merge(merged, held)
            changed, token = merged, self._held_token
        if changed:
            self.throttle.offer(changed, token)
        elif not known:
            # C-WS-8: an unknown token still gets one StateChange with a fresh pushState.
            self._send(state_change_frame({}, token))

    def _catch_up_failed(self, failure: Failure) -> Any:
        self.log.failure("WebSocket push catch-up failed", failure)
        held, self._held = self._held, None
        if self.active and held:
            self.throttle.offer(held, self._held_token)
        return None
