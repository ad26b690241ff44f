"""Running a JMAP Request object to a Response object (RFC 8620 §3.3 to §3.7).

Transport-independent: the HTTP API and the WebSocket both hand an already-parsed JSON
value to :meth:`RequestProcessor.process` and send what comes back (a
:class:`~jmappushd.jmap.response.Response` of encoded method responses, or a
:class:`~jmappushd.jmap.problems.RequestProblem` raised before any call ran).

Every Response is bounded by ``[jmap] max-size-response`` (``jmap.budget``): each
method response is encoded when its method returns and counted; one that would pass
the limit, or result references selecting more than is left, fail that call alone
(``requestTooLarge`` for /get and /set, ``invalidArguments`` otherwise, RFC 8620
§3.6.2, §5.1, §5.3), and the calls before it keep their results. Error responses
(a few hundred octets each: client text is quoted briefly) and the createdIds of
records that exist are always sent, so a Response may pass the limit by those. A
call failing unexpectedly is ``serverFail``; a request logs at most one bounded
entry for all of its serverFails.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, NamedTuple

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger

from jmappushd.jmap.budget import OverBudget, ResponseBudget, over_budget_error
from jmappushd.jmap.crashlog import summarise
from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.problems import RequestProblem, quoted
from jmappushd.jmap.registry import (
    CORE_CAPABILITY,
    CallContext,
    Fallback,
    Handler,
    MethodError,
    MethodRegistry,
)
from jmappushd.jmap.response import Response, encode_invocation, envelope_size
from jmappushd.jmap.resultref import resolve_references

Invocation = list[Any]
"""``[name, arguments, methodCallId]`` as it appears in JSON."""


def _not_request(detail: str) -> RequestProblem:
    return RequestProblem("notRequest", detail)


def _check_string_list(value: Any, member: str) -> list[str]:
    if isinstance(value, list):
        for item in value:  # a loop, not all() over a generator: once per request
            if not isinstance(item, str):
                break
        else:
            return value
    raise _not_request(f"'{member}' must be an array of strings.")


def _check_invocation(call: Any, index: int) -> tuple[str, dict[str, Any], str]:
    """Validate one Invocation's shape (API-2)."""
    if not (
        isinstance(call, list)
        and len(call) == 3
        and isinstance(call[0], str)
        and isinstance(call[1], dict)
        and isinstance(call[2], str)
    ):
        raise _not_request(
            f"methodCalls[{index}] must be [name: String, arguments: Object, callId: String]."
        )
    return call[0], call[1], call[2]


def _check_created_ids(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _not_request("'createdIds' must be an object mapping creation ids to ids.")
    return dict(value)


class RequestProcessor:
    """Validates a Request and runs its method calls in order against a registry."""

    log = Logger()

    _forwarder: Forwarder | None = None

    def __init__(self, registry: MethodRegistry, max_calls_in_request: int,
                 max_size_response: int = 10_000_000) -> None:
        self._registry = registry
        self._max_calls = max_calls_in_request
        self._max_size_response = max_size_response

    def _validate(
        self, request: Any, extra_capabilities: Collection[str] = ()
    ) -> tuple[list[str], list[tuple[str, dict[str, Any], str]], dict[str, str] | None]:
        """Check the whole Request before any call runs, so a rejected request does nothing.

        Covers API-3 (shape), API-4/C-API-1 (core required), API-6 (unknown capability),
        API-21 (maxCallsInRequest) and API-2 (each Invocation). Unknown members are
        ignored (API-5).
        """
        if not isinstance(request, dict):
            raise _not_request("The request must be a JSON object.")
        if "using" not in request or "methodCalls" not in request:
            raise _not_request("The request must have 'using' and 'methodCalls'.")
        using = _check_string_list(request["using"], "using")
        calls = request["methodCalls"]
        if not isinstance(calls, list):
            raise _not_request("'methodCalls' must be an array of Invocations.")
        created_ids = None
        if "createdIds" in request:
            created_ids = _check_created_ids(request["createdIds"])
        if CORE_CAPABILITY not in using:
            raise _not_request(f"'using' must contain {CORE_CAPABILITY!r}.")
        unknown = self._registry.unknown(using)
        if unknown and extra_capabilities:
            unknown = [uri for uri in unknown if uri not in extra_capabilities]
        if unknown:
            raise RequestProblem(
                "unknownCapability", f"The server does not support {quoted(min(unknown))}."
            )
        if len(calls) > self._max_calls:
            raise RequestProblem(
                "limit",
                f"The request has {len(calls)} method calls; at most {self._max_calls} "
                "are allowed.",
                limit="maxCallsInRequest",
            )
        checked = []
        for index, call in enumerate(calls):  # a loop: no comprehension frame per request
            checked.append(_check_invocation(call, index))
        return using, checked, created_ids

    async def process(
        self,
        request: Any,
        principal: Any,
        session_state: str,
        reserve: int = 0,
    ) -> Response:
        """Run ``request`` and return the Response (API-7, API-14).

        Raises :class:`RequestProblem` for request-level errors; method failures become
        ``error`` responses and later calls still run (API-9). ``reserve`` is octets the
        transport adds around the Response (the WebSocket's ``@type`` and
        ``requestId``), counted against ``max-size-response`` first.
        """
        result = self.process_now(request, principal, session_state, reserve)
        if isinstance(result, Response):
            return result
        return await result

    def process_now(self, request: Any, principal: Any, session_state: str, reserve: int = 0
                    ) -> Response | Deferred[Response]:
        """:meth:`process`, with the Response returned at once when no call had to wait
        (``Core/echo``, most local methods), else a Deferred of it.

        A coroutine per request, stepped and finished, cost more than a WebSocket
        ``Core/echo``'s method call itself; here calls run in a plain loop until one
        returns something to wait for, and only then does a coroutine take over.
        """
        # Gateway mode: the upstream's capabilities are known too (API-6).
        upstream = getattr(principal, "upstream", None)
        extra = upstream.session.capabilities if upstream is not None else ()
        using, calls, created_ids = self._validate(request, extra)
        ctx = CallContext(
            principal=principal,
            session_state=session_state,
            created_ids=dict(created_ids or {}),
            using=frozenset(using),
        )
        budget = ResponseBudget(self._max_size_response,
                                reserve + envelope_size(session_state, created_ids))
        run = _Run(ctx, calls, created_ids, budget)
        try:
            waiting = self._advance(run)
        except BaseException:
            self._end(run)
            raise
        if waiting is None:
            self._end(run)
            return run.response()
        return ensureDeferred(self._resume(run, waiting))

    def _advance(self, run: _Run) -> _Waiting | None:
        """Run calls from ``run.index`` while they answer at once; stop at the first
        one with something to wait for (an async handler, a forwarded run)."""
        calls, ctx, budget = run.calls, run.ctx, run.budget
        while run.index < len(calls):
            name, args, call_id = calls[run.index]
            if self._forwarder is not None and self._registry.lookup(name) is None:
                # Gateway mode: the run of consecutive non-local calls goes upstream
                # as one request.
                end = run.index
                while end < len(calls) and self._registry.lookup(calls[end][0]) is None:
                    end += 1
                return _Waiting(self._forward(ctx, calls[run.index:end], run.responses, budget),
                                end, None)
            try:
                result = self._start_call(ctx, name, args, run.responses, budget)
                if type(result) is not dict and inspect.isawaitable(result):
                    return _Waiting(self._finish_call(name, result, call_id, budget),
                                    run.index + 1, (name, call_id))
                local = self._encode_result(name, result, call_id, budget)
            except CancelledError:
                raise
            except Exception as e:
                local = self._call_error(name, call_id, e, budget, run.crashes)
            run.index += 1
            run.add_local(local, call_id)
        return None

    async def _resume(self, run: _Run, waiting: _Waiting | None) -> Response:
        """Wait for what stopped :meth:`_advance`, then go on with the calls after it."""
        try:
            while waiting is not None:
                if waiting.call is None:
                    for out_name, out_args, out, out_id in await waiting.result:
                        run.add(out_name, out_args, out, out_id)
                    run.track_created()
                else:
                    name, call_id = waiting.call
                    try:
                        local = await waiting.result
                    except CancelledError:
                        raise
                    except Exception as e:
                        local = self._call_error(name, call_id, e, run.budget, run.crashes)
                    run.add_local(local, call_id)
                run.index = waiting.end
                waiting = self._advance(run)
        finally:
            self._end(run)
        return run.response()

    def _end(self, run: _Run) -> None:
        if run.crashes:
            self._log_crashes(run.crashes)

    def _log_crashes(self, crashes: list[tuple[str, str, Exception]]) -> None:
        """One bounded entry per request, however many of its calls failed."""
        method, call_id, exc = crashes[0]
        self.log.error(
            "{count} method call(s) failed with serverFail; first {method} (call "
            "{call_id}): {error}", count=len(crashes), method=method[:100],
            call_id=call_id[:100], error=summarise(exc))

    def set_forwarder(self, forwarder: Forwarder | None) -> None:
        """Gateway mode: runs of calls no local handler knows go to ``forwarder``."""
        self._forwarder = forwarder

    async def _forward(self, ctx: CallContext, run: list[tuple[str, dict[str, Any], str]],
                       responses: list[Invocation], budget: ResponseBudget
                       ) -> list[tuple[str, dict[str, Any], bytes, str]]:
        """The upstream's answers to ``run``, encoded and charged like local results; a
        run whose answers would pass max-size-response fails call by call instead."""
        assert self._forwarder is not None
        try:
            answers = await self._forwarder(ctx.principal, run, responses, ctx.using,
                                            ctx.created_ids, budget)
            out = [(str(n), a, encode_invocation(n, a, i), str(i)) for n, a, i in answers]
            budget.take(sum(len(e) + 1 for _, _, e, _ in out), "The upstream's answers")
            return out
        except OverBudget as e:
            errors = [(call_id, over_budget_error(name, self._max_size_response, e.what)
                       .to_json()) for name, _, call_id in run]
        except MethodError as e:
            errors = [(call_id, e.to_json()) for _, _, call_id in run]
        out_errors = [("error", error, encode_invocation("error", error, call_id), call_id)
                      for call_id, error in errors]
        budget.charge(sum(len(e) + 1 for _, _, e, _ in out_errors))
        return out_errors

    def _target(self, ctx: CallContext, name: str) -> Handler | None:
        """The callable for ``name``: its handler, else the gateway fallback, else ``None``."""
        found = self._registry.lookup(name)
        if found is not None:
            # Not opted into: behave as if the method did not exist (RFC 8620 §1.8).
            return found[1] if found[0] in ctx.using else None
        fallback = self._registry.fallback
        if fallback is None:
            return None
        return functools.partial(_with_name, fallback, name)

    def _start_call(self, ctx: CallContext, name: str, args: dict[str, Any],
                    responses: list[Invocation], budget: ResponseBudget) -> Any:
        """Resolve the call's references and call its handler: what the handler returned
        (an awaitable for an async one)."""
        target = self._target(ctx, name)
        if target is None:
            raise MethodError("unknownMethod")
        return target(ctx, resolve_references(args, responses, budget))

    async def _finish_call(self, name: str, result: Awaitable[Any], call_id: str,
                           budget: ResponseBudget) -> list[tuple[str, dict[str, Any], bytes]]:
        """Await an async handler's result, then encode it (:meth:`_encode_result`)."""
        return self._encode_result(name, await result, call_id, budget)

    @staticmethod
    def _encode_result(name: str, result: Any, call_id: str, budget: ResponseBudget
                       ) -> list[tuple[str, dict[str, Any], bytes]]:
        """Encode a handler's responses within ``budget``."""
        if type(result) is dict:
            out = [(name, result, encode_invocation(name, result, call_id))]
        else:
            out = [(n, a, encode_invocation(n, a, call_id)) for n, a in _normalise(name, result)]
        size = len(out[0][2]) + 1 if len(out) == 1 else sum(len(e) + 1 for _, _, e in out)
        budget.take(size, "The result of this call")
        return out

    def _call_error(self, name: str, call_id: str, exc: Exception, budget: ResponseBudget,
                    crashes: list[tuple[str, str, Exception]]
                    ) -> list[tuple[str, dict[str, Any], bytes]]:
        """The single ``error`` response of a failed call, charged whether or not it fits
        (a call always gets an answer); an unexpected failure is ``serverFail``."""
        if isinstance(exc, OverBudget):
            error = over_budget_error(name, self._max_size_response, exc.what).to_json()
        elif isinstance(exc, MethodError):
            error = exc.to_json()
        else:
            crashes.append((name, call_id, exc))
            error = {"type": "serverFail", "description": "Internal server error."}
        out_error = encode_invocation("error", error, call_id)
        budget.charge(len(out_error) + 1)
        return [("error", error, out_error)]


Encoded = list[tuple[str, dict[str, Any], bytes]]
"""A call's responses: ``(name, arguments, encoded Invocation)``."""


class _Waiting(NamedTuple):
    """What stopped a request's plain loop: ``result`` to await, the index of the next
    call, and ``(name, callId)`` of a local call (None: a forwarded run's answers)."""

    result: Awaitable[Any]
    end: int
    call: tuple[str, str] | None


class _Run:
    """One request's calls and what they produced so far."""

    __slots__ = ("budget", "calls", "crashes", "created_ids", "ctx", "encoded", "index",
                 "responses")

    def __init__(self, ctx: CallContext, calls: list[tuple[str, dict[str, Any], str]],
                 created_ids: dict[str, str] | None, budget: ResponseBudget) -> None:
        self.ctx = ctx
        self.calls = calls
        self.created_ids = created_ids
        self.budget = budget
        self.index = 0
        self.responses: list[Invocation] = []  # decoded, for result references
        self.encoded: list[bytes] = []
        self.crashes: list[tuple[str, str, Exception]] = []

    def add(self, name: str, args: dict[str, Any], encoded: bytes, call_id: str) -> None:
        self.responses.append([name, args, call_id])
        self.encoded.append(encoded)

    def add_local(self, local: Encoded, call_id: str) -> None:
        for name, args, encoded in local:
            self.add(name, args, encoded, call_id)
        if self.created_ids is not None:
            self.track_created()

    def track_created(self) -> None:
        """New creation ids appear in the response's createdIds too (API-13)."""
        created_ids, now = self.created_ids, self.ctx.created_ids
        if created_ids is not None and len(now) != len(created_ids):
            self.budget.charge(len(dumps(now)) - len(dumps(created_ids)))
            self.created_ids = dict(now)

    def response(self) -> Response:
        return Response(self.encoded, self.ctx.session_state,
                        None if self.created_ids is None else dict(self.ctx.created_ids))


Forwarder = Callable[[Any, Sequence[tuple[str, dict[str, Any], str]], Sequence[Invocation],
                      Collection[str], dict[str, str], ResponseBudget],
                     Awaitable[list[Invocation]]]
"""``(principal, run, responses so far, using, createdIds, budget) -> the run's responses``
(references into earlier responses are charged to ``budget``)."""


def _with_name(fallback: Fallback, name: str, ctx: CallContext, args: dict[str, Any]) -> Any:
    """Adapt the fallback's ``(ctx, name, args)`` signature to a plain handler."""
    return fallback(ctx, name, args)


def _normalise(name: str, result: Any) -> list[tuple[str, dict[str, Any]]]:
    """Turn a handler's return value into ``(name, arguments)`` pairs.

    Anything else is a programming error; raising here turns it into ``serverFail``.
    """
    if isinstance(result, dict):
        return [(name, result)]
    if isinstance(result, list) and result:
        pairs: list[tuple[str, dict[str, Any]]] = []
        for item in result:
            if not (
                isinstance(item, tuple | list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], dict)
            ):
                raise TypeError(f"handler for {name} returned a malformed response item")
            pairs.append((item[0], item[1]))
        return pairs
    raise TypeError(f"handler for {name} returned {type(result).__name__}, not a response")
