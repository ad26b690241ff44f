"""The fuzz suite's world: a whole daemon's request side in memory, and what it must answer.

Every fuzz test builds a fresh :class:`World` per example (a memory store, a
``task.Clock``, the real App with Web Push methods registered on a fake push transport,
no sockets, no threads) and drives one entry point with generated input: the API
resource with an HTTP body, the EventSource resource with a query and headers, or the
WebSocket :class:`~jmappushd.transports.websocket.conversation.Conversation` with a text
message. The checks here say what any answer must be: a JMAP Response whose shapes are
right, an RFC 7807 problem (``type`` and ``status``), or a stream; never a 5xx, never a
``serverFail``, never a critical or failure log event.

Example counts come from a hypothesis profile: ``ci`` (the default, a bounded run that
is the same on every machine) or ``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, ``make fuzz``:
many more, random). Neither keeps an example database, so nothing lands in the tree.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.authenticator import Principal
from jmappushd.auth.passwords import hash_password, token_digest
from jmappushd.config import Config, JMAPConfig, PushConfig
from jmappushd.context import App
from jmappushd.daemon.service import build_app
from jmappushd.store import MemoryStore
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import EventSourceResource
from jmappushd.transports.webpush.service import PushRuntime
from jmappushd.transports.websocket.conversation import Conversation
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.messages import WEBSOCKET_CAPABILITY
from jmappushd.web.api import APIResource
from tests.push_fakes import FakeTransport
from tests.sse_parser import EventParser
from tests.support import TEST_LOG_N, log_into
from tests.test_websocket_conversation import Sink

# -- profiles -----------------------------------------------------------------------

settings.register_profile(
    "ci", max_examples=150, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True)
settings.register_profile(
    "fuzz", max_examples=3000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORE = "urn:ietf:params:jmap:core"
ERR = "urn:ietf:params:jmap:error:"
TOKEN = "jmp_fuzz-token-alice"
PASSWORD = "secret"
MAX_SIZE_RESPONSE = 64_000
"""A small ``[jmap] max-size-response`` so amplification shows within a test's memory."""

# RFC 8620 §3.6.2 (plus RFC 9404) method-level error types, and §5.3 SetError types.
METHOD_ERRORS = frozenset({
    "serverUnavailable", "serverFail", "serverPartialFail", "unknownMethod",
    "invalidArguments", "invalidResultReference", "forbidden", "accountNotFound",
    "accountNotSupportedByMethod", "accountReadOnly", "requestTooLarge", "unknownDataType"})
SET_ERRORS = frozenset({
    "forbidden", "overQuota", "tooLarge", "rateLimit", "notFound", "invalidPatch",
    "willDestroy", "invalidProperties", "singleton"})
REQUEST_PROBLEMS = frozenset(ERR + k for k in (
    "notJSON", "notRequest", "unknownCapability", "limit"))


def sync_threads(f: Any, *args: Any) -> defer.Deferred[Any]:
    """A thread runner that runs the (cheap, test-cost) KDF at once: no threads, no waits."""
    return defer.maybeDeferred(f, *args)


# -- the world ----------------------------------------------------------------------

@dataclasses.dataclass
class HttpAnswer:
    """One HTTP response as the client would see it."""

    status: int
    headers: dict[str, list[str]]
    body: bytes
    finished: bool

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def fuzz_config(**jmap: Any) -> Config:
    """Production defaults, except a small max-size-response and a fast creation rate.

    ``allow-private-urls`` stays off, so the SSRF rules are what is fuzzed.
    """
    jmap_config = dataclasses.replace(JMAPConfig(), max_size_response=MAX_SIZE_RESPONSE, **jmap)
    push = dataclasses.replace(PushConfig(), create_rate=1000)
    return dataclasses.replace(Config(), jmap=jmap_config, push=push)


class World:
    """alice (account A, bearer TOKEN, password ``secret``) and bob (account B) on a
    memory store; the App, its API and EventSource resources and Web Push methods."""

    def __init__(self, config: Config | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # a plausible "now" for expires dates
        self.store = MemoryStore(self.clock)
        self.store.open()
        cheap = hash_password(PASSWORD, TEST_LOG_N)
        self.store.add_user("alice", cheap, "A")
        self.store.add_user("bob", cheap, "B")
        self.store.create_token("alice", token_digest(TOKEN))
        self.store.record_changes({"A": {"Email": "e1", "Mailbox": "m1"}})
        self.store.record_changes({"B": {"Email": "b1"}})
        self.app: App = build_app(config or fuzz_config(), self.clock, self.store, sync_threads)
        defer.ensureDeferred(self.app.hub.start())
        self.push_transport = FakeTransport()
        self.runtime = PushRuntime(self.app, self.push_transport)
        self.runtime.register()
        defer.ensureDeferred(self.runtime.start())
        self.app.registry.add_capability(WEBSOCKET_CAPABILITY, {"url": "", "supportsPush": True})
        self.api_resource = APIResource(self.app)
        self.streams = StreamRegistry(self.store)
        self.eventsource = EventSourceResource(self.app, self.clock, self.streams)
        self.ws_factory = JMAPWebSocketFactory(self.app, reactor=self.clock)
        self.alice = self.login()

    def login(self) -> Principal:
        from jmappushd.auth.authenticator import BearerToken

        d = defer.ensureDeferred(self.app.auth.login(BearerToken(TOKEN)))
        result: list[Principal] = []
        d.addCallback(result.append)
        assert result, "the bearer login did not finish at once"
        return result[0]

    # -- HTTP --

    def _request(self, method: bytes, path: bytes, headers: Mapping[bytes, bytes | Sequence[bytes]],
                 args: Mapping[bytes, list[bytes]] | None = None, body: bytes = b""
                 ) -> tuple[Request, DummyChannel]:
        channel = DummyChannel()
        request = Request(channel)
        request.method = method
        request.clientproto = b"HTTP/1.1"
        request.uri = request.path = path
        request.args = dict(args or {})
        request.content = io.BytesIO(body)
        for name, value in headers.items():
            values = [value] if isinstance(value, bytes) else list(value)
            request.requestHeaders.setRawHeaders(name, values)
        return request, channel

    @staticmethod
    def _answer(request: Request, channel: DummyChannel) -> HttpAnswer:
        """What went out on the wire (the EventSource fast path writes its own head)."""
        return parse_response(channel.transport.written.getvalue(), bool(request.finished))

    def post_api(self, body: bytes, content_type: bytes | None = b"application/json",
                 authorization: bytes | None = None) -> HttpAnswer:
        """POST ``body`` to the API resource as alice (or with ``authorization``)."""
        headers: dict[bytes, bytes] = {
            b"Authorization": authorization or f"Bearer {TOKEN}".encode()}
        if content_type is not None:
            headers[b"Content-Type"] = content_type
        request, channel = self._request(b"POST", b"/jmap/api/", headers, body=body)
        self.api_resource.render(request)
        return self._answer(request, channel)

    def api(self, value: Any) -> HttpAnswer:
        return self.post_api(json.dumps(value).encode())

    def get_eventsource(self, args: Mapping[bytes, list[bytes]],
                        headers: Mapping[bytes, bytes]) -> tuple[Request, DummyChannel]:
        """GET the EventSource resource as alice; the request stays open if it streams."""
        merged: dict[bytes, bytes] = {b"Authorization": f"Bearer {TOKEN}".encode()}
        merged.update(headers)
        request, channel = self._request(b"GET", b"/jmap/eventsource/", merged, args=args)
        self.eventsource.render(request)
        return request, channel

    def observed_token(self) -> str:
        """A resumption token the daemon itself gave alice (an EventSource ``id:``), so the
        tests never depend on the token format."""
        request, channel = self.get_eventsource(
            {b"types": [b"*"], b"closeafter": [b"state"], b"ping": [b"0"]}, {})
        self.publish({"A": {"Email": f"seen{self.clock.seconds()}"}})
        events = EventParser().feed(self.answer_of(request, channel).body)
        if not request.finished:
            request.connectionLost(Failure(ConnectionDone()))
        ids = [e.id for e in events if e.event == "state" and e.id]
        assert ids, events
        return ids[-1]

    def answer_of(self, request: Request, channel: DummyChannel) -> HttpAnswer:
        return self._answer(request, channel)

    def publish(self, changed: Mapping[str, Mapping[str, str]]) -> None:
        """Record and fan out a change as /publish would (the memory store answers at once)."""
        done: list[object] = []
        defer.ensureDeferred(self.app.hub.publish(changed)).addBoth(done.append)
        assert done and not isinstance(done[0], Exception), done

    # -- WebSocket --

    def conversation(self) -> tuple[Conversation, Sink]:
        sink = Sink()
        return Conversation(self.ws_factory.conversation_context, sink, self.alice), sink


def parse_response(raw: bytes, finished: bool) -> HttpAnswer:
    """Status line, headers and (de-chunked) body of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines[0] else 0
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.decode("latin-1").lower(), []).append(
            value.strip().decode("latin-1"))
    if headers.get("transfer-encoding") == ["chunked"]:
        body = dechunk(body)
    return HttpAnswer(status, headers, body, finished)


def dechunk(data: bytes) -> bytes:
    """The payload of a chunked body (what a client reads)."""
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


# -- what every answer must be --------------------------------------------------------

DAEMON_RECURSION_LIMIT = 1000
"""CPython's default, which the daemon runs with (nothing in it raises the limit)."""
DAEMON_STACK_IN_USE = 40
"""Frames the reactor, twisted.web or Autobahn may have used when a request reaches the
API resource or the conversation. Measured in a running daemon: 19 frames in all at a
method called over HTTP, 21 over a WebSocket; 40 leaves room for paths that never wait."""


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back  # type: ignore[assignment]
    return depth


@contextmanager
def daemon_recursion_limit() -> Iterator[None]:
    """Give the code under test the stack the daemon gives it.

    Hypothesis raises the recursion limit while it runs a test, which would hide every
    RecursionError a client can provoke in production (issue 11 #2): restore the room
    the daemon has, counted from here.
    """
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + DAEMON_RECURSION_LIMIT - DAEMON_STACK_IN_USE)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


@contextmanager
def no_failures_logged() -> Iterator[list[Any]]:
    """Run with the daemon's stack (see :func:`daemon_recursion_limit`), collect every
    twisted.logger event, and fail on a critical one or one carrying a failure."""
    events: list[Any] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        with daemon_recursion_limit():
            yield events
    finally:
        globalLogPublisher.removeObserver(observer)
    bad = [e for e in events
           if e.get("log_failure") is not None or e.get("log_level") == LogLevel.critical]
    assert not bad, "logged: " + "; ".join(
        f"{e.get('log_format')!r} {e.get('log_failure')!r}"[:2000] for e in bad)


def check_problem(value: Any, status: int | None = None) -> None:
    """An RFC 7807 problem object: string ``type``, integer ``status`` (equal to the HTTP
    status when given), ``limit`` naming the limit for the JMAP ``limit`` type (API-8)."""
    assert isinstance(value, dict), value
    assert isinstance(value.get("type"), str) and value["type"], value
    assert isinstance(value.get("status"), int), value
    if status is not None:
        assert value["status"] == status, (value, status)
    assert 400 <= value["status"] < 500, value
    if value["type"].startswith(ERR):
        assert value["type"] in REQUEST_PROBLEMS, value
    if value["type"] == ERR + "limit":
        assert isinstance(value.get("limit"), str), value


def check_set_response(args: dict[str, Any]) -> None:
    """A /set response (API-17, PS-11): the six members, maps or null, SetErrors typed."""
    assert set(args) == {"created", "updated", "destroyed", "notCreated", "notUpdated",
                         "notDestroyed"}, args
    for name in ("created", "updated", "notCreated", "notUpdated", "notDestroyed"):
        assert args[name] is None or (isinstance(args[name], dict) and args[name]), args
    assert args["destroyed"] is None or (isinstance(args["destroyed"], list)
                                         and args["destroyed"]), args
    for name in ("notCreated", "notUpdated", "notDestroyed"):
        for error in (args[name] or {}).values():
            assert isinstance(error, dict) and error.get("type") in SET_ERRORS, error
            if "properties" in error:
                assert all(isinstance(p, str) for p in error["properties"]), error


def check_response(value: Any) -> list[list[Any]]:
    """A JMAP Response (API-14): methodResponses of ``[name, args, id]`` with a string id,
    sessionState a string, no ``serverFail``. Returns the method responses."""
    assert isinstance(value, dict), value
    assert isinstance(value.get("sessionState"), str), value
    responses = value.get("methodResponses")
    assert isinstance(responses, list), value
    for item in responses:
        assert isinstance(item, list) and len(item) == 3, item
        name, args, call_id = item
        assert isinstance(name, str) and isinstance(args, dict) and isinstance(call_id, str), item
        if name == "error":
            assert args.get("type") in METHOD_ERRORS, item
            assert args["type"] != "serverFail", item
        elif name == "PushSubscription/set":
            check_set_response(args)
        elif name == "PushSubscription/get":
            assert set(args) == {"list", "notFound"}, item
    if "createdIds" in value:
        assert isinstance(value["createdIds"], dict), value
    return responses


def check_http(answer: HttpAnswer) -> Any:
    """An API answer: finished at once; 200 with a Response or a 4xx problem. Returns the
    decoded body."""
    assert answer.finished, "the response did not finish (a hang)"
    assert answer.status < 500, (answer.status, answer.body[:2000])
    body = json.loads(answer.body)
    if answer.status == 200:
        assert answer.header("content-type") == "application/json", answer.headers
        check_response(body)
    else:
        assert answer.header("content-type") == "application/problem+json", answer.headers
        check_problem(body, answer.status)
    return body


def check_ws_messages(messages: Sequence[Any]) -> None:
    """Every server message is a Response, a RequestError (a 4xx problem) or a StateChange."""
    for message in messages:
        assert isinstance(message, dict), message
        kind = message.get("@type")
        if kind == "Response":
            check_response(message)
            assert "requestId" not in message or isinstance(message["requestId"], str)
        elif kind == "RequestError":
            assert "requestId" in message, message
            assert message["requestId"] is None or isinstance(message["requestId"], str)
            check_problem({k: v for k, v in message.items()
                           if k not in ("@type", "requestId")})
        else:
            assert kind == "StateChange", message
            assert isinstance(message.get("changed"), dict), message
            assert isinstance(message.get("pushState"), str), message


# -- strategies -----------------------------------------------------------------------

def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from one of ``choices`` with the given odds (``one_of`` merges repeats of
    one strategy, so repeating it does not raise its odds)."""
    picks = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: choices[i][1])


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (``integers(0, n - 1) == 0`` is much likelier: the
    engine favours small integers)."""
    return weighted((n - 1, st.just(False)), (1, st.just(True)))


ijson_chars = st.characters(exclude_categories=("Cs", "Cn"))
"""Characters I-JSON allows (no surrogates, no noncharacters, which are unassigned)."""

def json_values_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON values (finite numbers, safe integers) with strings and names from ``text``."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), text)
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=20)


json_values = json_values_of(st.text(max_size=20))
"""Any JSON value; its strings may hold what I-JSON forbids (noncharacters)."""
ijson_values = json_values_of(st.text(ijson_chars, max_size=20))
"""Any I-JSON value."""

method_names = st.one_of(
    st.sampled_from(["Core/echo", "PushSubscription/get", "PushSubscription/set",
                     "Unknown/method", "error", ""]),
    st.text(max_size=30))
call_ids = st.one_of(st.sampled_from(["c0", "c1", "c2", "#c1"]), st.text(max_size=10))


arguments = st.dictionaries(st.text(max_size=10), json_values, max_size=4)


def invocations(args: st.SearchStrategy[Any] = arguments) -> st.SearchStrategy[Any]:
    """An Invocation, well-formed (API-2): ``[name, arguments, callId]``."""
    return st.tuples(method_names, args, call_ids).map(list)


bad_invocations = st.one_of(json_values, st.lists(json_values, max_size=5))
"""Something in methodCalls that is not an Invocation (API-2: notRequest)."""


def call_lists(calls: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """Mostly well-formed method call lists; sometimes one entry is malformed."""
    good = st.lists(calls if calls is not None else invocations(), max_size=6)
    spoilt = st.tuples(good, bad_invocations, st.integers(0, 6)).map(
        lambda t: [*t[0][:t[2]], t[1], *t[0][t[2]:]])
    return weighted((3, good), (1, spoilt))


usings = st.one_of(
    st.just([CORE]), st.just([CORE, WEBSOCKET_CAPABILITY]),
    st.lists(st.sampled_from([CORE, WEBSOCKET_CAPABILITY, "urn:ietf:params:jmap:mail",
                              "https://example.com/apis/foobar"]), max_size=4),
    json_values)


def requests(calls: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """A Request object (API-3): sometimes a member is missing or of the wrong type."""
    method_calls = call_lists(calls)
    created_ids = st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                            max_size=3), json_values)
    good = st.fixed_dictionaries({"using": st.just([CORE]), "methodCalls": method_calls},
                                 optional={"createdIds": created_ids})
    odd = st.fixed_dictionaries(
        {"using": usings, "methodCalls": st.one_of(method_calls, json_values)},
        optional={"createdIds": created_ids, "extra": json_values})
    missing = st.tuples(odd, st.sampled_from(["using", "methodCalls"])).map(
        lambda t: {k: v for k, v in t[0].items() if k != t[1]})
    return weighted((4, good), (1, odd), (1, missing))
