"""Gateway mode's parts, built from ``[upstream]`` in one place for the daemon's wiring.

:func:`build_gateway` returns a :class:`Gateway`: the upstream client, the principal source
the authenticator uses instead of the store's users, the forwarder the request processor
hands non-local calls to, the state reader and the change source chosen by ``changes``
(a Twisted service, started and stopped with the daemon), and the re-check of live
connections' credentials (:meth:`Gateway.revalidator`). Nothing here talks to the
upstream at build or start time: an upstream that is down when the daemon starts costs a
logged outage and 503s, not a failed start.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from jmappushd.auth.authenticator import Principal, PrincipalSource
from jmappushd.config import Config, ConfigError, UpstreamConfig
from jmappushd.core.hub import Hub, StateMap
from jmappushd.gateway.auth import UpstreamChecker, UpstreamRealm, UpstreamSessions
from jmappushd.gateway.cyrus_notify import socket_path_problem
from jmappushd.gateway.forward import Call, Forwarder, Invocation
from jmappushd.gateway.revalidate import LiveConnections, Revalidator, revalidation_period
from jmappushd.gateway.session import UpstreamSession, parse_session
from jmappushd.gateway.sources import CyrusNotifySource, PollSource
from jmappushd.gateway.states import StateReader
from jmappushd.gateway.upstream import (
    UpstreamClient,
    UpstreamResponse,
    UpstreamUnavailable,
    load_ca_policy,
)
from jmappushd.gateway.upstream_events import UpstreamEventSource
from jmappushd.jmap.budget import ResponseBudget
from jmappushd.jmap.registry import MethodError
from jmappushd.reactor import IDaemonReactor
from jmappushd.secretfile import read_secret_line
from jmappushd.store.interface import IStore

__all__ = ["Gateway", "ReaderSession", "build_gateway", "gateway_problems",
           "read_reader_password"]


def read_reader_password(config: UpstreamConfig, path: str) -> str:
    """The reader's password: one line of a file only its owner may read (ConfigError else)."""
    try:
        return read_secret_line(config.reader_password_file)
    except ValueError as exc:
        raise ConfigError(f"{path}: [upstream] reader-password-file: {exc}") from None


def gateway_problems(config: Config) -> list[str]:
    """What the daemon would refuse about gateway mode's files, one line each: the reader's
    password (one line, 0600), the CA bundle, the folder of the notify socket."""
    problems = []
    upstream = config.upstream
    if upstream.reader_password_file:
        try:
            read_reader_password(upstream, config.path)
        except ConfigError as e:
            problems.append(str(e))
    if upstream.ca_file:
        try:
            load_ca_policy(upstream.ca_file)
        except ValueError as e:
            problems.append(f"{config.path}: [upstream] ca-file: {e}")
    if upstream.notify_socket and upstream.changes == "cyrus-notify":
        folder = os.path.dirname(upstream.notify_socket) or "."
        problem = socket_path_problem(upstream.notify_socket)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"{config.path}: [upstream] notify-socket: cannot create a socket "
                            f"in {folder} (missing or not writable)")
        elif problem is not None:
            problems.append(f"{config.path}: [upstream] notify-socket: {problem}")
    return problems


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
    """Everything gateway mode adds to the daemon.

    Built in two steps because the authenticator (inside the app) needs the principal
    source before the hub exists, and the state reader publishes through the hub:
    :func:`build_gateway`, then :meth:`attach` once the app is built.
    """

    config: Config
    reactor: IDaemonReactor
    store: IStore
    client: UpstreamClient
    sessions: UpstreamSessions
    principals: PrincipalSource
    forwarder: Forwarder
    realm: UpstreamRealm
    reader: ReaderSession | None = None
    states: StateReader | None = None
    sources: list[Service] = field(default_factory=list)
    hub: Hub | None = None
    log: ClassVar[Logger] = Logger()

    def changed(self, account_id: str) -> None:
        """Something says ``account_id`` changed upstream: read and publish its states."""
        if self.states is not None:
            self.states.changed(account_id)

    async def forward(self, principal: Principal, run: Sequence[Call],
                      responses: Sequence[Invocation], using: Collection[str],
                      created_ids: dict[str, str], budget: ResponseBudget
                      ) -> list[Invocation]:
        """The request processor's hook for a run of non-local calls (gateway mode).

        The client's own credentials go upstream; ``Foo/set`` answers with a ``newState``
        are published at once (and the account's other states read, since a set may move
        them too), so a change made through the gateway reaches every listener at once.
        """
        identity = principal.upstream
        if identity is None:
            raise MethodError("unknownMethod")
        session = identity.session
        out = await self.forwarder.run(session.api_url, identity.authorization, run,
                                       responses, using, session.capabilities, created_ids,
                                       budget)
        for name, args, _ in out:
            if name.endswith("/set") and isinstance(args.get("newState"), str) \
                    and isinstance(args.get("accountId"), str):
                self.set_answered(args["accountId"], name[:-4], args["newState"])
        return out

    def set_answered(self, account_id: str, type_name: str, new_state: str) -> None:
        if self.hub is not None:
            self.hub_publish({account_id: {type_name: new_state}})
        self.changed(account_id)

    def hub_publish(self, changed: StateMap) -> None:
        assert self.hub is not None
        Deferred.fromCoroutine(self.hub.publish(changed)).addErrback(
            lambda f: self.log.failure("Publishing a change made through the gateway failed",
                                       f))

    def revalidator(self, connections: Sequence[LiveConnections]) -> Revalidator:
        """The upstream re-check of ``connections``' credentials (a child service)."""
        return Revalidator(self.reactor, self.sessions, self.realm,
                           lambda: self.client.health.up,
                           revalidation_period(self.config.auth.cache_ttl), connections)

    def attach(self, hub: Hub) -> None:
        """The reader's state reads and the change source, publishing through ``hub``."""
        self.hub = hub
        upstream = self.config.upstream
        if not upstream.reader_user:
            return
        password = read_reader_password(upstream, self.config.path)
        credentials = f"{upstream.reader_user}:{password}".encode()
        reader = ReaderSession(self.client, upstream.session_url,
                               b"Basic " + base64.b64encode(credentials))
        store = self.store

        async def publish(changed: StateMap) -> object:
            return await hub.publish(changed)

        async def stored(account_id: str) -> dict[str, str]:
            states = await store.current_states([account_id])
            return dict(states.get(account_id, {}))

        self.reader = reader
        self.states = StateReader(self.reactor, upstream.debounce_s, reader, reader.post,
                                  publish, lambda account: Deferred.fromCoroutine(stored(account)))
        if upstream.changes == "cyrus-notify":
            self.sources.append(CyrusNotifySource(
                self.reactor, upstream.notify_socket, self.changed,
                f"{self.config.path}: [upstream] notify-socket"))
        elif upstream.changes == "poll":
            self.sources.append(PollSource(self.reactor, upstream.poll_interval,
                                           hub.watched_accounts, self.changed))
        elif upstream.changes == "eventsource":
            self.sources.append(UpstreamEventSource(
                self.reactor, self.client.http,
                lambda: Deferred.fromCoroutine(reader.event_source_url()),
                reader.authorization, self.changed))


def build_gateway(config: Config, reactor: IDaemonReactor, store: IStore) -> Gateway:
    """The gateway's upstream side for ``config`` (which must have ``[upstream] session-url``);
    its reader and change source come with :meth:`Gateway.attach`."""
    upstream = config.upstream
    max_body = max(config.jmap.max_size_request, config.jmap.max_size_response)
    client = UpstreamClient(reactor, upstream, max_body=max_body)
    sessions = UpstreamSessions(client, upstream.session_url, reactor, config.auth.cache_ttl)
    realm = UpstreamRealm(sessions, store)
    principals = PrincipalSource(realm, (UpstreamChecker(sessions),))
    return Gateway(config, reactor, store, client, sessions, principals, Forwarder(client),
                   realm)
