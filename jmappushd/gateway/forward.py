"""Forwarding a run of method calls to the upstream's ``apiUrl`` (RFC 8620 §3.3, §3.7).

The request processor answers ``PushSubscription/*`` (and ``Core/echo``) itself and hands
every maximal run of consecutive other calls to :class:`Forwarder` as one upstream request,
so the upstream sees its calls in order, with its own result references and creation ids
between them working as they would without the gateway. What crosses a run boundary the
daemon settles: a ``#arg`` whose ``resultOf`` names a call answered before the run (by the
daemon or by an earlier run) is resolved here and sent as a plain argument, and the
``createdIds`` gathered so far go up with every run and come back merged.

The upstream's answer is checked before it reaches the client: its method responses must
be ``[name, object, callId]`` with this run's call ids, in order; anything else is an
outage of the upstream, not a garbled reply passed on. A request-level problem from the
upstream (HTTP 4xx with problem details) is passed to the client unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from jmappushd.gateway.upstream import (
    UpstreamClient,
    UpstreamRejected,
    UpstreamResponse,
    UpstreamUnavailable,
)
from jmappushd.jmap import ijson
from jmappushd.jmap.budget import ResponseBudget
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.resultref import resolve_references

__all__ = ["Forwarder", "UpstreamDown", "UpstreamProblem", "cross_run_references"]

Call = tuple[str, dict[str, Any], str]
Invocation = list[Any]


class UpstreamProblem(RequestProblem):
    """The upstream refused the run as a request (RFC 8620 §3.6.1): its problem details
    reach the client unchanged (a body that is not problem details is summarised)."""

    def __init__(self, status: int, content_type: bytes, body: bytes) -> None:
        problem: dict[str, Any] | None = None
        try:
            value = ijson.loads(body)
            if isinstance(value, dict) and isinstance(value.get("type"), str):
                problem = value
        except RequestProblem:
            pass
        detail = str(problem.get("detail", "")) if problem else f"upstream answered {status}"
        super().__init__("upstream", detail, status=status)
        self._problem = problem or {"type": "about:blank", "status": status, "detail": detail}

    @property
    def type(self) -> str:
        return str(self._problem["type"])

    def to_json(self) -> dict[str, Any]:
        return dict(self._problem)


class UpstreamDown(RequestProblem):
    """The upstream could not answer the run: 503 naming it (never a hang, never a 500)."""

    def __init__(self, reason: str) -> None:
        super().__init__("upstream", reason, status=503)

    @property
    def type(self) -> str:
        return "about:blank"

    @property
    def title(self) -> str:
        return "The upstream JMAP server is unavailable"


def cross_run_references(args: dict[str, Any], answered_ids: Collection[str]) -> list[str]:
    """The ``#`` arguments of ``args`` whose ``resultOf`` is a call answered before the run.

    RFC 8620 §3.7: a reference names the *first* earlier response with that call id, so an
    id answered before the run is resolved here even if the run repeats it; a reference
    to nothing answered yet is the upstream's to resolve (or refuse).
    """
    keys = []
    for key, value in args.items():
        if (key.startswith("#") and isinstance(value, dict)
                and value.get("resultOf") in answered_ids):
            keys.append(key)
    return keys


@dataclass(frozen=True)
class RunRequest:
    """One upstream request: the run's calls with cross-run references settled."""

    body: bytes
    call_ids: tuple[str, ...]


def build_run(run: Sequence[Call], responses: Sequence[Invocation], using: Sequence[str],
              created_ids: dict[str, str], budget: ResponseBudget) -> RunRequest:
    """The upstream request for ``run``; references settled here are charged to ``budget``
    (MethodError/OverBudget when one fails: the run's calls then fail, as local ones do)."""
    answered = {r[2] for r in responses}
    calls: list[list[Any]] = []
    for name, args, call_id in run:
        outside = cross_run_references(args, answered)
        if outside:
            settled = resolve_references({k: args[k] for k in outside}, responses, budget)
            args = {k: v for k, v in args.items() if k not in outside} | settled
        calls.append([name, args, call_id])
    request: dict[str, Any] = {"using": list(using), "methodCalls": calls}
    if created_ids:
        request["createdIds"] = dict(created_ids)
    return RunRequest(ijson.dumps(request), tuple(c[2] for c in calls))


def parse_run_answer(answer: UpstreamResponse, call_ids: Sequence[str], upstream: str
                     ) -> tuple[list[Invocation], dict[str, str] | None]:
    """The run's method responses and the upstream's createdIds, checked."""
    if answer.status != 200:
        raise UpstreamProblem(answer.status, answer.content_type, answer.body)
    try:
        value = ijson.loads(answer.body)
    except RequestProblem as e:
        raise UpstreamUnavailable(f"{upstream} answered with invalid JSON ({e.detail})"
                                  ) from None
    responses = value.get("methodResponses") if isinstance(value, dict) else None
    if not isinstance(responses, list):
        raise UpstreamUnavailable(f"{upstream} answered without methodResponses")
    out: list[Invocation] = []
    for item in responses:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], dict) and isinstance(item[2], str)
                and item[2] in call_ids):
            raise UpstreamUnavailable(f"{upstream} answered a malformed method response")
        out.append(item)
    created = value.get("createdIds")
    if created is not None and not (isinstance(created, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in created.items())):
        raise UpstreamUnavailable(f"{upstream} answered malformed createdIds")
    return out, created


class Forwarder:
    """Sends runs of calls upstream with the client's own credentials."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def run(self, api_url: str, authorization: bytes, run: Sequence[Call],
                  responses: Sequence[Invocation], using: Collection[str],
                  upstream_capabilities: Collection[str],
                  created_ids: dict[str, str], budget: ResponseBudget) -> list[Invocation]:
        """Forward ``run``; updates ``created_ids`` in place with the upstream's.

        Only the capabilities the upstream's session lists go up in ``using`` (the
        daemon's own, such as WebSocket, would be an unknownCapability there)."""
        wanted = sorted(u for u in using if u in upstream_capabilities)
        built = build_run(run, responses, wanted, created_ids, budget)
        try:
            answer = await self._client.post_json(api_url, authorization, built.body)
            out, created = parse_run_answer(answer, built.call_ids, self._client.name)
        except UpstreamUnavailable as e:
            raise UpstreamDown(e.reason) from None
        except UpstreamRejected as e:
            # The session accepted these credentials a moment ago: revoked meanwhile.
            raise UpstreamDown(f"{self._client.name} refused the credentials ({e.status})"
                               ) from None
        if created:
            created_ids.update(created)
        return out
