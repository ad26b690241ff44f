"""The transport-independent Request processor (API-2..API-15, API-21, C-API-1)."""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from jmappushd.jmap.core import register_core
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import CORE_CAPABILITY, CallContext, MethodError, MethodRegistry
from jmappushd.jmap.response import Response

EXTRA = "https://jmappushd.example/apis/extra"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never truly waits; fail if it is left pending."""
    results: list[Any] = []
    defer.ensureDeferred(coro).addBoth(results.append)
    assert results, "coroutine did not finish synchronously"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def make_registry() -> MethodRegistry:
    registry = MethodRegistry()
    register_core(registry)
    registry.add_capability(EXTRA, {"x": 1})
    return registry


def process(
    request: Any, registry: MethodRegistry | None = None, max_calls: int = 16, **kw: Any
) -> dict[str, Any]:
    processor = RequestProcessor(registry or make_registry(), max_calls,
                                 kw.pop("max_size_response", 10_000_000))
    response: Response = run(
        processor.process(request, kw.pop("principal", "alice"), "s1", **kw)
    )
    return response.to_json()


def problem(request: Any, **kw: Any) -> RequestProblem:
    with pytest.raises(RequestProblem) as info:
        process(request, **kw)
    return info.value


def req(*calls: list[Any], using: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"using": [CORE_CAPABILITY] if using is None else using, "methodCalls": list(calls),
            **extra}


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


# --- request-level errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_value",
    [
        [],
        "x",
        {"using": [CORE_CAPABILITY]},
        {"methodCalls": []},
        {"using": CORE_CAPABILITY, "methodCalls": []},
        {"using": [CORE_CAPABILITY, 5], "methodCalls": []},
        {"using": [CORE_CAPABILITY], "methodCalls": {}},
        {"using": [CORE_CAPABILITY], "methodCalls": [], "createdIds": []},
        {"using": [CORE_CAPABILITY], "methodCalls": [], "createdIds": {"k": 1}},
    ],
)
def test_malformed_request_is_not_request(request_value: Any) -> None:
    """API-3: a value not shaped like a Request is rejected with notRequest (400)."""
    p = problem(request_value)
    assert p.type == "urn:ietf:params:jmap:error:notRequest"
    assert p.status == 400


@pytest.mark.parametrize(
    "call",
    [
        ["Core/echo", {}],
        ["Core/echo", {}, "c1", "extra"],
        ["Core/echo", [], "c1"],
        ["Core/echo", None, "c1"],
        ["Core/echo", {}, 1],
        [5, {}, "c1"],
        {"name": "Core/echo"},
    ],
)
def test_malformed_invocation_is_not_request(call: Any) -> None:
    """API-2: an Invocation that is not [String, Object, String] rejects the request."""
    assert problem(req(call)).kind == "notRequest"


def test_malformed_invocation_rejects_before_any_call_runs() -> None:
    """API-2: the whole request is checked first, so no earlier call has side effects."""
    seen: list[str] = []
    registry = make_registry()

    def run_it(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        seen.append("ran")
        return {}

    registry.register("X/run", CORE_CAPABILITY, run_it)
    with pytest.raises(RequestProblem):
        process(req(["X/run", {}, "a"], ["X/run", {}]), registry=registry)
    assert seen == []


def test_using_without_core_is_not_request() -> None:
    """API-4 / C-API-1: `using` lacking core is notRequest with a detail naming core."""
    p = problem(req(["Core/echo", {}, "a"], using=[]))
    assert p.kind == "notRequest"
    assert CORE_CAPABILITY in p.detail


def test_unknown_capability() -> None:
    """API-6: an unsupported `using` entry is unknownCapability."""
    p = problem(req(using=[CORE_CAPABILITY, "https://example.com/apis/foobar"]))
    assert p.type == "urn:ietf:params:jmap:error:unknownCapability"
    assert "https://example.com/apis/foobar" in p.detail


class _Upstream:
    """A gateway principal's upstream: its session's capabilities count as known."""

    class session:  # mirrors ``principal.upstream.session``
        capabilities = frozenset({"urn:upstream:mail"})


class _GatewayPrincipal:
    upstream = _Upstream()


@pytest.mark.parametrize(("principal", "named"), [
    ("alice", "urn:a:second"),
    (_GatewayPrincipal(), "urn:a:second"),
])
def test_unknown_capability_names_the_first_unknown_in_order(principal: Any,
                                                              named: str) -> None:
    """API-6: of several unknown capabilities (one repeated) the detail names the first
    in sorted order; a gateway's upstream capabilities are not unknown."""
    using = [CORE_CAPABILITY, "urn:upstream:mail", "urn:z:last", "urn:a:second", EXTRA,
             "urn:z:last", "urn:a:second"]
    p = problem(req(["Core/echo", {}, "a"], using=using), principal=principal)
    assert p.kind == "unknownCapability"
    assert named in p.detail and "urn:z:last" not in p.detail
    if principal == "alice":
        return
    only_upstream = req(["Core/echo", {}, "a"], using=[CORE_CAPABILITY, "urn:upstream:mail"])
    assert process(only_upstream, principal=principal)["methodResponses"] == [
        ["Core/echo", {}, "a"]]


def test_too_many_calls_is_limit() -> None:
    """API-21 / API-8: more calls than maxCallsInRequest → limit with `limit` member."""
    calls = [["Core/echo", {}, str(i)] for i in range(3)]
    p = problem(req(*calls), max_calls=2)
    assert p.kind == "limit"
    assert p.limit == "maxCallsInRequest"
    assert p.to_json()["limit"] == "maxCallsInRequest"


def test_exactly_max_calls_is_allowed() -> None:
    """API-21: the limit is inclusive."""
    calls = [["Core/echo", {}, str(i)] for i in range(2)]
    assert len(process(req(*calls), max_calls=2)["methodResponses"]) == 2


# --- successful processing ------------------------------------------------------------


def test_echo_returns_identical_triple() -> None:
    """API-15: Core/echo returns its arguments unchanged with the same name and id."""
    response = process(req(["Core/echo", {"hello": True, "high": 5}, "b3ff"]))
    assert response == {
        "methodResponses": [["Core/echo", {"hello": True, "high": 5}, "b3ff"]],
        "sessionState": "s1",
    }


def test_calls_run_in_order() -> None:
    """API-7: calls run one after another; responses keep order and call ids."""
    order: list[str] = []
    registry = make_registry()

    def record(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        order.append(args["n"])
        return {"seen": list(order)}

    registry.register("X/record", CORE_CAPABILITY, record)
    calls = [["X/record", {"n": n}, f"c{n}"] for n in ("1", "2", "3")]
    response = process(req(*calls), registry=registry)
    assert order == ["1", "2", "3"]
    assert response["methodResponses"] == [
        ["X/record", {"seen": ["1"]}, "c1"],
        ["X/record", {"seen": ["1", "2"]}, "c2"],
        ["X/record", {"seen": ["1", "2", "3"]}, "c3"],
    ]


def test_unknown_members_ignored() -> None:
    """API-5: unknown Request members (e.g. WebSocket `@type`, `id`) are ignored."""
    request = req(["Core/echo", {"x": 1}, "a"], foo=1)
    request.update({"@type": "Request", "id": "r"})
    response = process(request)
    assert response["methodResponses"] == [["Core/echo", {"x": 1}, "a"]]


def test_unknown_method_then_echo_runs() -> None:
    """API-9: an unknown method gives an error response and later calls still run."""
    response = process(req(["Unknown/method", {}, "a"], ["Core/echo", {"x": 1}, "b"]))
    assert response["methodResponses"] == [
        ["error", {"type": "unknownMethod"}, "a"],
        ["Core/echo", {"x": 1}, "b"],
    ]


def test_method_outside_using_is_unknown_method() -> None:
    """RFC 8620 §1.8 / API-6: a method whose capability was not opted into does not exist."""
    registry = make_registry()
    registry.register("Extra/get", EXTRA, lambda ctx, args: {"ok": True})
    response = process(req(["Extra/get", {}, "a"]), registry=registry)
    assert response["methodResponses"] == [["error", {"type": "unknownMethod"}, "a"]]
    opted_in = process(req(["Extra/get", {}, "a"], using=[CORE_CAPABILITY, EXTRA]),
                       registry=registry)
    assert opted_in["methodResponses"] == [["Extra/get", {"ok": True}, "a"]]


def test_method_error_is_rendered() -> None:
    """API-9 / API-10: a MethodError becomes ["error", {type, description, ...}, id]."""
    registry = make_registry()

    def fail(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise MethodError("invalidArguments", "bad ids", arguments=["ids"])

    registry.register("X/fail", CORE_CAPABILITY, fail)
    response = process(req(["X/fail", {}, "a"], ["Core/echo", {}, "b"]), registry=registry)
    assert response["methodResponses"] == [
        ["error", {"type": "invalidArguments", "description": "bad ids", "arguments": ["ids"]},
         "a"],
        ["Core/echo", {}, "b"],
    ]


def _errors_logged(logged: EventLoggingObserver) -> list[dict[str, Any]]:
    return [e for e in logged if e.get("log_level") is not None
            and e["log_level"].name in ("error", "critical")]


def test_exception_becomes_logged_server_fail(logged: EventLoggingObserver) -> None:
    """API-9: an unexpected exception is serverFail without its text, is logged once
    (a bounded line naming the method, call and exception, no traceback), and the next
    call still runs."""
    registry = make_registry()

    def crash(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")

    registry.register("X/crash", CORE_CAPABILITY, crash)
    response = process(req(["X/crash", {}, "a"], ["Core/echo", {"y": 2}, "b"]), registry=registry)
    error, echo = response["methodResponses"]
    assert error[0] == "error" and error[2] == "a"
    assert error[1]["type"] == "serverFail"
    assert "secret" not in repr(error[1])
    assert echo == ["Core/echo", {"y": 2}, "b"]
    (entry,) = _errors_logged(logged)
    assert entry["method"] == "X/crash" and entry["call_id"] == "a" and entry["count"] == 1
    assert entry["error"].startswith("RuntimeError: secret internal detail at ")
    assert "log_failure" not in entry


def test_many_server_fails_log_one_bounded_entry(logged: EventLoggingObserver) -> None:
    """Issue 11: however many calls of one request fail, and however long the exception
    message (here client data), the request logs one entry of bounded size."""
    registry = make_registry()

    def crash(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(args["blob"])

    registry.register("X/crash", CORE_CAPABILITY, crash)
    blob = "x" * 100_000
    response = process(req(*[["X/crash", {"blob": blob}, f"c{i}"] for i in range(16)]),
                       registry=registry)
    assert [r[1]["type"] for r in response["methodResponses"]] == ["serverFail"] * 16
    (entry,) = _errors_logged(logged)
    assert entry["count"] == 16
    assert len(formatEvent(entry)) < 1500


def test_malformed_handler_result_is_server_fail(logged: EventLoggingObserver) -> None:
    """A handler returning something that is not a response is a logged serverFail."""
    registry = make_registry()
    registry.register("X/bad", CORE_CAPABILITY, lambda ctx, args: "nope")
    response = process(req(["X/bad", {}, "a"]), registry=registry)
    assert response["methodResponses"] == [
        ["error", {"type": "serverFail", "description": "Internal server error."}, "a"]
    ]
    assert len(_errors_logged(logged)) == 1


def test_async_handler_and_multiple_responses() -> None:
    """A handler may be async and may return several (name, args) responses for one call."""
    registry = make_registry()

    async def both(ctx: CallContext, args: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        value = await defer.succeed(7)
        return [("X/copy", {"v": value}), ("X/set", {"v": value + 1})]

    registry.register("X/copy", CORE_CAPABILITY, both)
    response = process(req(["X/copy", {}, "a"]), registry=registry)
    assert response["methodResponses"] == [["X/copy", {"v": 7}, "a"], ["X/set", {"v": 8}, "a"]]


def test_async_handler_returning_one_response_and_a_dict_subclass() -> None:
    """A coroutine handler's single dict is awaited and sent; a dict subclass is one
    response too (only a plain dict skips the awaitable check)."""
    registry = make_registry()

    async def later(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"v": await defer.succeed(3)}

    class Ordered(dict[str, Any]):
        pass

    registry.register("X/later", CORE_CAPABILITY, later)
    registry.register("X/sub", CORE_CAPABILITY, lambda ctx, args: Ordered(w=1))
    response = process(req(["X/later", {}, "a"], ["X/sub", {}, "b"]), registry=registry)
    assert response["methodResponses"] == [["X/later", {"v": 3}, "a"], ["X/sub", {"w": 1}, "b"]]


def test_async_handler_failures_are_answered_like_sync_ones(
        logged: EventLoggingObserver) -> None:
    """A coroutine handler failing after it waited gets the answers a plain one gets: its
    MethodError rendered, anything else a logged serverFail; later calls still run."""
    registry = make_registry()

    async def refuse(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        await defer.succeed(None)
        raise MethodError("forbidden", "not yours")

    async def crash(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        await defer.succeed(None)
        raise KeyError("boom")

    registry.register("X/refuse", CORE_CAPABILITY, refuse)
    registry.register("X/crash", CORE_CAPABILITY, crash)
    response = process(req(["X/refuse", {}, "a"], ["X/crash", {}, "b"], ["Core/echo", {}, "c"]),
                       registry=registry)
    assert response["methodResponses"] == [
        ["error", {"type": "forbidden", "description": "not yours"}, "a"],
        ["error", {"type": "serverFail", "description": "Internal server error."}, "b"],
        ["Core/echo", {}, "c"],
    ]
    assert len(_errors_logged(logged)) == 1


def test_process_now_answers_at_once_unless_a_call_waits(
        logged: EventLoggingObserver) -> None:
    """Without a call that waits, ``process_now`` returns the Response itself (the
    WebSocket sends it with no Deferred); a waiting call makes it a Deferred that the
    later calls complete in order, with the same answers and one crash log either way."""
    registry = make_registry()
    gate: defer.Deferred[int] = defer.Deferred()

    async def waits(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"v": await gate}

    def crash(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("boom")

    registry.register("X/waits", CORE_CAPABILITY, waits)
    registry.register("X/crash", CORE_CAPABILITY, crash)
    processor = RequestProcessor(registry, 16)
    at_once = processor.process_now(req(["Core/echo", {"a": 1}, "a"], ["X/crash", {}, "b"]),
                                    "alice", "s1")
    assert isinstance(at_once, Response)
    assert at_once.to_json()["methodResponses"] == [
        ["Core/echo", {"a": 1}, "a"],
        ["error", {"type": "serverFail", "description": "Internal server error."}, "b"]]
    assert len(_errors_logged(logged)) == 1
    later = processor.process_now(req(["Core/echo", {}, "a"], ["X/waits", {}, "b"],
                                      ["X/crash", {}, "c"], ["Core/echo", {"z": 2}, "d"]),
                                  "alice", "s1")
    assert isinstance(later, defer.Deferred)
    assert len(_errors_logged(logged)) == 1  # nothing logged while the request waits
    gate.callback(5)
    response = run(_awaited(later))
    assert response.to_json()["methodResponses"] == [
        ["Core/echo", {}, "a"], ["X/waits", {"v": 5}, "b"],
        ["error", {"type": "serverFail", "description": "Internal server error."}, "c"],
        ["Core/echo", {"z": 2}, "d"]]
    assert len(_errors_logged(logged)) == 2


async def _awaited(d: defer.Deferred[Response]) -> Response:
    return await d


def test_cancellation_propagates() -> None:
    """A cancelled handler (connection gone) aborts the request instead of serverFail."""
    registry = make_registry()

    async def cancelled(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise defer.CancelledError()

    registry.register("X/slow", CORE_CAPABILITY, cancelled)
    with pytest.raises(defer.CancelledError):
        process(req(["X/slow", {}, "a"]), registry=registry)


def test_result_reference_between_calls() -> None:
    """API-12: the RFC example resolves through the processor to {"x": [1, 2, 3]}."""
    response = process(req(
        ["Core/echo", {"a": [{"b": [1, 2]}, {"b": [3]}]}, "c1"],
        ["Core/echo", {"#x": {"resultOf": "c1", "name": "Core/echo", "path": "/a/*/b"}}, "c2"],
        ["Core/echo", {"#x": {"resultOf": "c1", "name": "Core/get", "path": "/a"}}, "c3"],
        ["Core/echo", {"x": 1, "#x": {"resultOf": "c1", "name": "Core/echo", "path": "/a"}}, "c4"],
    ))
    assert response["methodResponses"][1:] == [
        ["Core/echo", {"x": [1, 2, 3]}, "c2"],
        ["error", response["methodResponses"][2][1], "c3"],
        ["error", response["methodResponses"][3][1], "c4"],
    ]
    assert response["methodResponses"][2][1]["type"] == "invalidResultReference"
    assert response["methodResponses"][3][1]["type"] == "invalidArguments"


def test_reference_to_unknown_method_call_is_unknown_method_first() -> None:
    """An unknown method is reported as unknownMethod even if its references are bad."""
    response = process(req(["Nope/x", {"#a": {"resultOf": "z", "name": "n", "path": ""}}, "a"]))
    assert response["methodResponses"] == [["error", {"type": "unknownMethod"}, "a"]]


# --- createdIds (API-13) and the context ----------------------------------------------


def _creator() -> MethodRegistry:
    registry = make_registry()

    def create(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        ctx.created_ids[args["cid"]] = "S" + args["cid"]
        return {"resolved": ctx.resolve_id("#" + args["cid"])}

    registry.register("X/set", CORE_CAPABILITY, create)
    return registry


def test_created_ids_echoed_when_given() -> None:
    """API-13: with `createdIds` in the request the response has input plus new ids."""
    response = process(req(["X/set", {"cid": "n1"}, "a"], createdIds={"k": "X1"}),
                       registry=_creator())
    assert response["createdIds"] == {"k": "X1", "n1": "Sn1"}
    assert response["methodResponses"] == [["X/set", {"resolved": "Sn1"}, "a"]]


def test_created_ids_absent_when_not_given() -> None:
    """API-13: without `createdIds` in the request the response has none."""
    response = process(req(["X/set", {"cid": "n1"}, "a"]), registry=_creator())
    assert "createdIds" not in response


def test_context_carries_principal_state_and_using() -> None:
    """Handlers see the authenticated principal, session state and `using`."""
    registry = make_registry()
    seen: dict[str, Any] = {}

    def peek(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        seen.update(principal=ctx.principal, state=ctx.session_state,
                    using=ctx.using,
                    known=ctx.resolve_id("abc"), missing=ctx.resolve_id("#zz"))
        ctx.session_state = "s2"
        return {}

    registry.register("X/peek", CORE_CAPABILITY, peek)
    response = process(req(["X/peek", {}, "a"]), registry=registry, principal="bob")
    assert seen == {"principal": "bob", "state": "s1",
                    "using": frozenset({CORE_CAPABILITY}), "known": "abc", "missing": None}
    assert response["sessionState"] == "s2"


# --- registry -------------------------------------------------------------------------


def test_fallback_receives_unregistered_methods() -> None:
    """The registry stays open: a fallback answers methods nobody registered."""
    registry = make_registry()
    calls: list[tuple[str, dict[str, Any]]] = []

    async def forward(ctx: CallContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
        calls.append((name, args))
        return {"forwarded": name}

    registry.set_fallback(forward)
    response = process(req(["Core/echo", {"v": [1]}, "a"], ["Mail/get", {
        "#ids": {"resultOf": "a", "name": "Core/echo", "path": "/v"}}, "b"]), registry=registry)
    assert response["methodResponses"][1] == ["Mail/get", {"forwarded": "Mail/get"}, "b"]
    assert calls == [("Mail/get", {"ids": [1]})]
    registry.set_fallback(None)
    response = process(req(["Mail/get", {}, "c"]), registry=registry)
    assert response["methodResponses"] == [["error", {"type": "unknownMethod"}, "c"]]


def test_register_requires_known_capability_and_unique_name() -> None:
    """Registering under an undeclared capability, or twice, is a programming error."""
    registry = make_registry()
    with pytest.raises(ValueError):
        registry.register("Y/get", "urn:unknown", lambda ctx, args: {})
    with pytest.raises(ValueError):
        registry.register("Core/echo", CORE_CAPABILITY, lambda ctx, args: {})


def test_capability_session_values() -> None:
    """add_capability keeps a value; a later value for the same URI replaces it."""
    registry = make_registry()
    assert registry.capabilities() == {CORE_CAPABILITY, EXTRA}
    registry.add_capability(CORE_CAPABILITY, {"maxCallsInRequest": 16})
    registry.add_capability(CORE_CAPABILITY)
    assert registry.session_capabilities() == {
        CORE_CAPABILITY: {"maxCallsInRequest": 16}, EXTRA: {"x": 1}}
    found = registry.lookup("Core/echo")
    assert found is not None and found[0] == CORE_CAPABILITY
    assert registry.lookup("Nope/x") is None
