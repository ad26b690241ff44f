"""The objects one daemon shares between its transports, wired once by the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime

from jmappushd.auth.authenticator import Authenticator, Principal
from jmappushd.config import Config
from jmappushd.core.hub import Hub
from jmappushd.core.inflight import InFlightRequests
from jmappushd.gateway.session import merge_session
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import MethodRegistry
from jmappushd.jmap.session import SessionURLs, build_session, core_capability
from jmappushd.metrics import Metrics
from jmappushd.net.timerwheel import TimerWheel
from jmappushd.store.interface import IStore
from jmappushd.web.clientaddr import ClientAddresses


@dataclass
class App:
    """Configuration, storage, hub, auth and the JMAP method registry."""

    config: Config
    clock: IReactorTime
    store: IStore
    hub: Hub
    auth: Authenticator
    registry: MethodRegistry
    processor: RequestProcessor
    metrics: Metrics
    urls: SessionURLs
    admin_token: str = ""
    _states: WeakKeyDictionary[Principal, tuple[int, str]] = field(
        default_factory=WeakKeyDictionary, repr=False)
    wheel: TimerWheel = field(init=False, repr=False)
    clients: ClientAddresses = field(init=False, repr=False)
    inflight: InFlightRequests = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # maxConcurrentRequests per user across HTTP and all their WebSockets (WS-15).
        self.inflight = InFlightRequests(self.config.jmap.max_concurrent_requests)
        # Real client addresses behind [server] trusted-proxies (logs, limits, throttling).
        self.clients = ClientAddresses(self.config.server.trusted_proxies)
        # The connections' heartbeats and pings, on the app's clock (tests inject one).
        self.wheel = TimerWheel(self.clock)

    def session_for(self, principal: Principal) -> dict[str, Any]:
        if principal.upstream is not None:
            # Gateway mode: the upstream's session with the daemon's push parts merged in.
            return merge_session(principal.upstream.session,
                                 self.registry.session_capabilities(),
                                 core_capability(self.config), self.urls.api,
                                 self.urls.event_source)
        return build_session(self.config, self.registry, self.urls, principal)

    def session_state(self, principal: Principal) -> str:
        """The session ``state`` (SES-11), memoized per principal and registry generation.

        A Principal is immutable and replaced when the user's accounts change, and every
        capability change bumps the registry's generation, so the memo cannot go stale.
        """
        generation = self.registry.generation
        memo = self._states.get(principal)
        if memo is not None and memo[0] == generation:
            return memo[1]
        state = self.session_for(principal)["state"]
        assert isinstance(state, str)
        self._states[principal] = (generation, state)
        return state
