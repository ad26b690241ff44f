"""max-size-response and the bounds on result references (issue 11 defects 1 and 2;
API-12, API-16, API-17, API-21)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from jmappushd.jmap import ijson
from jmappushd.jmap.budget import STEP_COST, ResponseBudget
from jmappushd.jmap.core import register_core
from jmappushd.jmap.problems import QUOTED_MAX, RequestProblem, quoted
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import CORE_CAPABILITY, CallContext, MethodRegistry
from jmappushd.jmap.response import Response
from tests.abuse_requests import amplification, deepening, ref
from tests.test_jmap_processor import run

CORE = CORE_CAPABILITY


def registry() -> MethodRegistry:
    reg = MethodRegistry()
    register_core(reg)
    return reg


def respond(request: Any, limit: int, reg: MethodRegistry | None = None) -> Response:
    """Process ``request`` as the transports do: parsed from its encoding first."""
    processor = RequestProcessor(reg or registry(), 64, limit)
    body = ijson.loads(json.dumps(request).encode())
    response: Response = run(processor.process(body, "alice", "s1"))
    return response


def types(response: Response) -> list[str]:
    return [r[1]["type"] if r[0] == "error" else r[0]
            for r in response.to_json()["methodResponses"]]


def test_amplification_stops_at_the_limit_with_a_method_error() -> None:
    """Defect 1: 16 echoes each referencing the previous result twice would make
    ~40 MB from a 2 KB request; with max-size-response 100,000 the calls that fit keep
    their results, the one that would pass it gets invalidArguments naming the limit,
    the ones referencing it get invalidResultReference, and the whole Response stays
    within the limit plus the small error responses."""
    limit = 100_000
    started = time.perf_counter()
    response = respond(amplification(), limit)
    assert time.perf_counter() - started < 1.0
    got = types(response)
    first = got.index("invalidArguments")
    assert 5 <= first < 16 and got[:first] == ["Core/echo"] * first
    assert got[first + 1:] == ["invalidResultReference"] * (15 - first)
    error = response.to_json()["methodResponses"][first][1]
    assert "max-size-response" in error["description"] and str(limit) in error["description"]
    assert len(response.encode()) <= limit + 16 * 300


def test_response_size_is_exact_and_within_limit() -> None:
    """The budget counts the Response as encoded: a response just under the limit is
    sent whole, and its encoding is at most the limit."""
    base = len(respond({"using": [CORE], "methodCalls": [["Core/echo", {"a": ""}, "c"]]},
                       10_000).encode())
    fits = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": "x" * (10_000 - base)}, "c"]]}, 10_000)
    assert types(fits) == ["Core/echo"] and len(fits.encode()) == 10_000
    over = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": "x" * (10_001 - base)}, "c"]]}, 10_000)
    assert types(over) == ["invalidArguments"]


def test_get_and_set_over_the_limit_are_request_too_large() -> None:
    """RFC 8620 §5.1, §5.3: a /get or /set whose result would pass the limit gets
    requestTooLarge (API-16, API-17); the description names max-size-response."""
    reg = registry()

    def big(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"list": ["x" * 100] * 100, "notFound": []}

    reg.register("Foo/get", CORE, big)
    reg.register("Foo/set", CORE, big)
    reg.register("Foo/query", CORE, big)
    response = respond({"using": [CORE], "methodCalls": [
        ["Foo/get", {}, "a"], ["Foo/set", {}, "b"], ["Foo/query", {}, "c"]]}, 5_000, reg)
    assert types(response) == ["requestTooLarge", "requestTooLarge", "invalidArguments"]
    for _, error, _ in response.to_json()["methodResponses"]:
        assert "max-size-response (5000 octets)" in error["description"]


def test_too_large_reference_fails_before_the_method_runs() -> None:
    """A reference whose value would not fit in what is left fails the call before its
    handler runs; an earlier call keeps its result."""
    reg = registry()
    ran: list[dict[str, Any]] = []

    def sink(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        ran.append(args)
        return {}

    reg.register("X/sink", CORE, sink)
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": "x" * 3_000}, "c0"],
        ["X/sink", {"#a": ref("c0", "/a")}, "c1"]]}, 5_000, reg)
    assert types(response) == ["Core/echo", "invalidArguments"]
    assert ran == []
    assert "'#a'" in response.to_json()["methodResponses"][1][1]["description"]


def test_many_references_in_one_call_share_what_is_left() -> None:
    """The values of all references of one call must fit together: 40 references to a
    3 KB value do not each get the whole remaining budget."""
    args = {f"#r{i}": ref("c0", "/a") for i in range(40)}
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": "x" * 3_000}, "c0"], ["Core/echo", args, "c1"]]}, 50_000)
    assert types(response) == ["Core/echo", "invalidArguments"]


def test_path_steps_are_bounded_too() -> None:
    """A path that steps through many values to select almost nothing is work all the
    same: `/a/*`, `/a/*/*`, ... over 20,000 empty arrays select `[]`, but forty such
    references in one call cost 800,000 steps, more than a 1 MB budget allows
    (STEP_COST octets each). (The same path twice is evaluated once.)"""
    args = {f"#r{i}": ref("c0", "/a" + "/*" * (i + 1)) for i in range(40)}
    assert 40 * 20_000 * STEP_COST > 1_000_000
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": [[]] * 20_000}, "c0"], ["Core/echo", args, "c1"]]}, 1_000_000)
    assert types(response) == ["Core/echo", "invalidArguments"]
    assert "result references" in response.to_json()["methodResponses"][1][1]["description"]


def test_small_references_are_untouched_by_the_budget() -> None:
    """API-12: the RFC's /a/*/b example still resolves under the default limit."""
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": [{"b": [1, 2]}, {"b": [3]}]}, "c1"],
        ["Core/echo", {"#x": ref("c1", "/a/*/b")}, "c2"]]}, 10_000_000)
    assert response.to_json()["methodResponses"][1] == ["Core/echo", {"x": [1, 2, 3]}, "c2"]


def test_sent_responses_do_not_change_when_a_handler_mutates_its_arguments() -> None:
    """References share values instead of copying them; what was encoded for an earlier
    call is what is sent, even if a later handler (wrongly) mutates its arguments."""
    reg = registry()

    def mutate(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args["x"].append(99)
        return {}

    reg.register("X/mutate", CORE, mutate)
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": [1]}, "c0"], ["X/mutate", {"#x": ref("c0", "/a")}, "c1"]]},
        10_000, reg)
    assert response.to_json()["methodResponses"][0] == ["Core/echo", {"a": [1]}, "c0"]


def test_reference_deeper_than_the_bound_is_a_method_error() -> None:
    """Defect 2: a reference chain that would take a method's arguments deeper than
    MAX_NESTING levels fails with invalidArguments saying so (never serverFail), and
    the calls referencing the failed one get invalidResultReference."""
    bound = ijson.MAX_NESTING
    response = respond(deepening(bound - 8, 12), 10_000_000)
    got = types(response)
    assert got[:8] == ["Core/echo"] * 8
    assert got[8:] == ["invalidArguments"] + ["invalidResultReference"] * 3
    description = response.to_json()["methodResponses"][8][1]["description"]
    assert f"deeper than {bound - 1} levels" in description


def test_created_ids_growth_is_counted() -> None:
    """API-13: ids a call adds to createdIds are counted, so later calls see less room
    (each result alone is tiny: without the count all ten would fit)."""
    reg = registry()

    def create(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        for i in range(50):
            ctx.created_ids[f"k{args['n']}-{i}"] = "S" * 40
        return {}

    reg.register("X/set", CORE, create)
    calls = [["X/set", {"n": n}, f"c{n}"] for n in range(10)]
    response = respond({"using": [CORE], "methodCalls": calls, "createdIds": {}}, 20_000, reg)
    got = types(response)
    first = got.index("requestTooLarge")
    assert 3 <= first < 10 and got[:first] == ["X/set"] * first


def test_budget_take_and_charge() -> None:
    """take refuses what does not fit and counts nothing then; charge always counts."""
    budget = ResponseBudget(10)
    budget.take(6, "a")
    try:
        budget.take(5, "b")
    except Exception as e:
        assert getattr(e, "what", None) == "b"
    else:
        raise AssertionError("take did not refuse")
    assert budget.remaining == 4
    budget.charge(20)
    assert budget.remaining == 0


def test_a_long_path_is_refused_before_it_is_split() -> None:
    """A path of a million tokens costs its steps up front: refused at once, not walked
    token by token (nor parsed with a regular expression per token)."""
    path = "/a" * 1_000_000
    started = time.perf_counter()
    response = respond({"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": 1}, "c0"], ["Core/echo", {"#x": ref("c0", path)}, "c1"]]},
        10_000_000)
    assert types(response) == ["Core/echo", "invalidArguments"]
    assert time.perf_counter() - started < 1.0


def test_errors_quote_client_text_briefly() -> None:
    """Error descriptions quote at most QUOTED_MAX characters of client text, so sixteen
    failing calls with megabyte-long names cannot make a large response or log line."""
    long = "x" * 1_000_000
    calls = [["Core/echo", {"#v": ref(long)}, "a"],
             ["Core/echo", {"v": 2}, "b"], ["Core/echo", {"#v": ref("b", "/" + long)}, "c"],
             ["Core/echo", {long: 1, "#" + long: ref("b")}, "d"]]
    response = respond({"using": [CORE], "methodCalls": calls}, 10_000_000)
    assert len(response.encode()) < 1_000
    with pytest.raises(RequestProblem) as info:
        ijson.loads(b'{"%s":1,"%s":2}' % (long.encode(), long.encode()))
    assert len(info.value.detail) < 200
    assert len(quoted(long)) <= QUOTED_MAX + 1 and quoted("a'b") == repr("a'b")
