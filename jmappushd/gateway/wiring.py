"""Gateway mode's parts, built from ``[upstream]`` in one place for the daemon's wiring.

:func:`build_gateway` returns a :class:`Gateway`: the upstream client, the principal source
the authenticator uses instead of the store's users, the forwarder the request processor
hands non-local calls to, the state reader and the change source chosen by ``changes``
(a Twisted service, started and stopped with the daemon). Nothing here talks to the
upstream at build or start time: an upstream that is down when the daemon starts costs a
logged outage and 503s, not a failed start.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from jmappushd.auth.authenticator import PrincipalSource
from jmappushd.config import Config, ConfigError, UpstreamConfig
from jmappushd.core.hub import Hub, StateMap
from jmappushd.gateway.auth import UpstreamChecker, UpstreamRealm, UpstreamSessions
from jmappushd.gateway.forward import Forwarder
from jmappushd.gateway.session import UpstreamSession, parse_session
from jmappushd.gateway.sources import CyrusNotifySource, PollSource
from jmappushd.gateway.states import StateReader
from jmappushd.gateway.upstream import UpstreamClient, UpstreamResponse, UpstreamUnavailable
from jmappushd.gateway.upstream_events import UpstreamEventSource
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.interface import IStore

__all__ = ["Gateway", "ReaderSession", "build_gateway", "read_reader_password"]


def read_reader_password(config: UpstreamConfig, path: str) -> str:
    """The reader's password: one line of a file only its owner may read (ConfigError else)."""
    where = f"{path}: [upstream] reader-password-file"
    name = config.reader_password_file
    try:
        info = os.stat(name)
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {name}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {name} is not UTF-8 text") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"{where}: {name} must not be readable by group or others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}; chmod 0600)")
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ConfigError(f"{where}: {name} must hold the password on one line")
    return lines[0]


class ReaderSession:
    """The reader's own upstream session (its shared accounts), fetched on first use."""

    def __init__(self, client: UpstreamClient, session_url: str, authorization: bytes) -> None:
        self._client = client
        self._session_url = session_url
        self.authorization = authorization
        self._session: UpstreamSession | None = None

    def __call__(self, refresh: bool = False) -> Deferred[UpstreamSession]:
        return Deferred.fromCoroutine(self._get(refresh))

    async def _get(self, refresh: bool) -> UpstreamSession:
        if self._session is None or refresh:
            answer = await self._client.get(self._session_url, self.authorization)
            if answer.status != 200:
                raise UpstreamUnavailable(
                    f"{self._client.name} answered the reader's session with {answer.status}")
            self._session = parse_session(answer.body, self._session_url, self._client.name)
        return self._session

    def post(self, url: str, body: bytes) -> Deferred[UpstreamResponse]:
        return self._client.post_json(url, self.authorization, body)

    async def event_source_url(self) -> str:
        """The reader's upstream stream: every type, kept open, pings every 60 s."""
        session = await self._get(False)
        if not session.event_source_url:
            raise UpstreamUnavailable(f"{self._client.name} advertises no eventSourceUrl")
        return (session.event_source_url.replace("{types}", "*")
                .replace("{closeafter}", "no").replace("{ping}", "60"))


@dataclass
class Gateway:
    """Everything gateway mode adds to the daemon."""

    client: UpstreamClient
    sessions: UpstreamSessions
    principals: PrincipalSource
    forwarder: Forwarder | None = None
    reader: ReaderSession | None = None
    states: StateReader | None = None
    sources: list[Service] = field(default_factory=list)

    def changed(self, account_id: str) -> None:
        """Something says ``account_id`` changed upstream: read and publish its states."""
        if self.states is not None:
            self.states.changed(account_id)


def build_gateway(config: Config, reactor: IDaemonReactor, store: IStore, hub: Hub,
                  watched: Callable[[], list[str]]) -> Gateway:
    """The gateway's parts for ``config`` (which must have ``[upstream] session-url``)."""
    upstream = config.upstream
    max_body = max(config.jmap.max_size_request, config.jmap.max_size_response)
    client = UpstreamClient(reactor, upstream, max_body=max_body)
    sessions = UpstreamSessions(client, upstream.session_url, reactor, config.auth.cache_ttl)
    principals = PrincipalSource(UpstreamRealm(sessions, store), (UpstreamChecker(sessions),))
    gateway = Gateway(client, sessions, principals)
    if not upstream.reader_user:
        return gateway
    password = read_reader_password(upstream, config.path)
    credentials = f"{upstream.reader_user}:{password}".encode()
    reader = ReaderSession(client, upstream.session_url,
                           b"Basic " + base64.b64encode(credentials))

    async def publish(changed: StateMap) -> object:
        return await hub.publish(changed)

    async def stored(account_id: str) -> dict[str, str]:
        states = await store.current_states([account_id])
        return dict(states.get(account_id, {}))

    gateway.reader = reader
    gateway.states = StateReader(reactor, upstream.debounce_s, reader, reader.post, publish,
                                 lambda account: Deferred.fromCoroutine(stored(account)))
    if upstream.changes == "cyrus-notify":
        gateway.sources.append(CyrusNotifySource(reactor, upstream.notify_socket,
                                                 gateway.changed))
    elif upstream.changes == "poll":
        gateway.sources.append(PollSource(reactor, upstream.poll_interval, watched,
                                          gateway.changed))
    elif upstream.changes == "eventsource":
        gateway.sources.append(UpstreamEventSource(
            reactor, client.http, lambda: Deferred.fromCoroutine(reader.event_source_url()),
            reader.authorization, gateway.changed))
    return gateway
