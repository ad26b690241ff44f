"""Fuzzing result references (RFC 8620 §3.7, API-12): ``#``-prefixed arguments with every
combination of resultOf, name and path, checked against an independent evaluation of the
pointer; and the two ways a reference can cost without limit (deep values, issue 11 #2;
amplification, issue 11 #1), over HTTP and WebSocket."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from tests.fuzz_support import (
    CORE,
    MAX_SIZE_RESPONSE,
    World,
    check_http,
    check_ws_messages,
    ijson_chars,
    ijson_values,
    no_failures_logged,
    one_in,
    weighted,
)


class NoValue(Exception):
    """The reference selects nothing (an independent reading of RFC 8620 §3.7)."""


def unescape(token: str) -> str:
    if "~" in token.replace("~0", "").replace("~1", ""):
        raise NoValue("bad escape")
    return token.replace("~1", "/").replace("~0", "~")


def select(value: Any, tokens: list[str]) -> Any:
    """RFC 6901 plus the JMAP ``*``: over an array, map the rest and flatten arrays."""
    if not tokens:
        return value
    token, rest = tokens[0], tokens[1:]
    if isinstance(value, list):
        if token == "*":
            out: list[Any] = []
            for item in value:
                got = select(item, rest)
                out.extend(got) if isinstance(got, list) else out.append(got)
            return out
        if not token.isascii() or not token.isdigit() or (token != "0" and token[0] == "0"):
            raise NoValue("not an index")
        if int(token) >= len(value):
            raise NoValue("past the end")
        return select(value[int(token)], rest)
    if isinstance(value, dict):
        if token not in value:
            raise NoValue("no member")
        return select(value[token], rest)
    raise NoValue("scalar")


def expected(path: str, document: Any) -> Any:
    if path == "":
        return document
    if not path.startswith("/"):
        raise NoValue("relative")
    return select(document, [unescape(t) for t in path[1:].split("/")])


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


@st.composite
def paths_into(draw: st.DrawFn, document: Any) -> str:
    """A pointer that usually walks the document's real structure (with ``*`` over
    arrays), sometimes strays: a missing member, an index past the end, ``-``, a leading
    zero, a bad escape, no leading slash."""
    tokens: list[str] = []
    value = document
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(value, dict) and value and not draw(one_in(5)):
            key = draw(st.sampled_from(sorted(value)))
            tokens.append(escape(key))
            value = value[key]
        elif isinstance(value, list) and value and not draw(one_in(5)):
            if draw(st.booleans()):
                tokens.append("*")
                value = value[0]
            else:
                index = draw(st.integers(0, len(value) - 1))
                tokens.append(str(index))
                value = value[index]
        else:
            tokens.append(draw(st.sampled_from(["*", "-", "00", "01", "9", "~", "~2", "",
                                                "a", "~01", "x/y"])))
    path = "".join("/" + t for t in tokens)
    return draw(weighted((8, st.just(path)), (1, st.just(path.lstrip("/"))),
                         (1, st.text(ijson_chars, max_size=12))))


documents = st.dictionaries(
    st.sampled_from(["a", "b", "~", "/", "*", "0", ""]),
    st.recursive(st.one_of(st.integers(0, 9), st.text(ijson_chars, max_size=3)),
                 lambda inner: st.one_of(
                     st.lists(inner, max_size=3),
                     st.dictionaries(st.sampled_from(["a", "b", "x/y", "m~n", "*", "1"]),
                                     inner, max_size=3)),
                 max_leaves=12),
    max_size=4)


@st.composite
def referencing_requests(draw: st.DrawFn) -> tuple[dict[str, Any], Any, str, Any]:
    """``c0`` echoes a document; ``c1`` echoes ``#x``, a reference to ``c0`` (or to
    something that is not it), possibly malformed, possibly next to a plain ``x``."""
    document = draw(documents)
    path = draw(paths_into(document))
    reference: Any = {
        "resultOf": draw(weighted((6, st.just("c0")),
                                  (1, st.sampled_from(["c1", "c9", "", "C0"])),
                                  (1, ijson_values))),
        "name": draw(weighted((6, st.just("Core/echo")),
                              (1, st.sampled_from(["error", "core/echo", "Core/echo "])),
                              (1, ijson_values))),
        "path": draw(weighted((8, st.just(path)), (1, ijson_values))),
    }
    for member in ("resultOf", "name", "path"):
        if draw(one_in(21)):
            del reference[member]
    if draw(one_in(21)):
        reference["extra"] = draw(ijson_values)
    if draw(one_in(21)):
        reference = draw(ijson_values)
    args: dict[str, Any] = {"#x": reference}
    if draw(one_in(11)):
        args["x"] = 1
    c0 = draw(weighted((8, st.just(["Core/echo", document, "c0"])),
                       (1, st.just(["Unknown/method", document, "c0"]))))
    calls = [c0, ["Core/echo", args, "c1"]]
    return {"using": [CORE], "methodCalls": calls}, document, path, reference


@given(referencing_requests())
def test_references_resolve_as_the_rfc_says(case: tuple[dict[str, Any], Any, str, Any]
                                            ) -> None:
    """API-12: a reference resolves to exactly what the pointer selects in the first
    earlier response with that call id and name; anything else is
    invalidResultReference (or invalidArguments for ``x`` with ``#x``), never a crash."""
    request, document, path, reference = case
    world = World()
    with no_failures_logged():
        responses = check_http(world.api(request))["methodResponses"]
    name, args, call_id = responses[1]
    assert call_id == "c1"
    event(f"{name} {args.get('type', '')}")
    if "x" in request["methodCalls"][1][1]:
        assert (name, args["type"]) == ("error", "invalidArguments")
        return
    try:
        if not (isinstance(reference, dict) and reference.get("resultOf") == "c0"
                and reference.get("name") == responses[0][0] and reference.get("path") == path
                and all(isinstance(reference.get(k), str) for k in ("resultOf", "name"))):
            raise NoValue("not a reference to c0")
        want = expected(path, responses[0][1])
    except NoValue:
        assert (name, args["type"]) == ("error", "invalidResultReference"), (path, args)
    else:
        assert (name, args) == ("Core/echo", {"x": want}), (path, document)


@given(referencing_requests())
def test_references_over_websocket(case: tuple[dict[str, Any], Any, str, Any]) -> None:
    """WS-9: the same requests over a WebSocket give one well-formed Response each."""
    request = case[0]
    world = World()
    conversation, sink = world.conversation()
    with no_failures_logged():
        conversation.message(json.dumps({"@type": "Request", "id": "r", **request}).encode())
        (message,) = sink.messages()
        check_ws_messages([message])
    assert message["@type"] == "Response"


KNOWN_DEFECT = settings(max_examples=20, phases=(Phase.explicit, Phase.generate))
"""For the properties that pinned issue 11's defects #1 and #2 (fixed since): a few
examples each, no shrinking (every example is a large request)."""


def nested(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@KNOWN_DEFECT
@given(depth=st.integers(400, 980), kind=st.sampled_from(["array", "object"]),
       path=st.sampled_from(["", "/a"]))
def test_deep_values_behind_references(depth: int, kind: str, path: str) -> None:
    """A value up to the parser's nesting limit, copied by a reference, gives its echo or a
    clear method error: never serverFail, never a traceback in the log."""
    world = World()
    body = (f'{{"using":["{CORE}"],"methodCalls":[["Core/echo",{{"a":{nested(depth, kind)}}},'
            '"c0"],["Core/echo",{"#a":{"resultOf":"c0","name":"Core/echo","path":"'
            f'{path}"}}}},"c1"]]}}').encode()
    with no_failures_logged():
        check_http(world.post_api(body))


@KNOWN_DEFECT
@given(depth=st.integers(400, 980))
def test_deep_values_behind_references_over_websocket(depth: int) -> None:
    """The same over a WebSocket conversation."""
    world = World()
    conversation, sink = world.conversation()
    message = (f'{{"@type":"Request","id":"r","using":["{CORE}"],"methodCalls":[["Core/echo",'
               f'{{"a":{nested(depth, "array")}}},"c0"],["Core/echo",{{"#a":{{"resultOf":"c0",'
               '"name":"Core/echo","path":"/a"}},"c1"]]}').encode()
    with no_failures_logged():
        conversation.message(message)
        check_ws_messages(sink.messages())


def calls_to_pass(base: int, fan: int) -> int:
    """Enough calls for the unbounded response to reach 4 x max-size-response, and no
    more: a test of today's code must fail fast, not exhaust memory."""
    calls, size = 1, base
    while size <= 4 * MAX_SIZE_RESPONSE:
        calls, size = calls + 1, size * fan
    return calls


def amplifying_request(base: int, fan: int) -> tuple[dict[str, Any], int]:
    """c0 echoes ``base`` bytes; each later call references the whole previous result
    ``fan`` times, so the response would grow as fan^calls (issue 11 #1)."""
    calls = calls_to_pass(base, fan)
    method_calls: list[Any] = [["Core/echo", {"v": "x" * base}, "c0"]]
    for i in range(1, calls):
        ref = {"resultOf": f"c{i - 1}", "name": "Core/echo", "path": ""}
        method_calls.append(["Core/echo", {f"#r{k}": ref for k in range(fan)}, f"c{i}"])
    return {"using": [CORE], "methodCalls": method_calls}, calls


def bounded(size: int, calls: int) -> bool:
    """Within max-size-response, plus room for one error entry per call."""
    return size <= MAX_SIZE_RESPONSE + 300 * calls + 200


@KNOWN_DEFECT
@given(base=st.integers(10, 2000), fan=st.integers(2, 4))
def test_amplification_is_bounded(base: int, fan: int) -> None:
    """A request whose references would multiply the response gets at most
    max-size-response (plus its errors): the calls past the budget fail alone with a
    method error (not serverFail), the calls before keep their results."""
    world = World()
    with no_failures_logged():
        request, calls = amplifying_request(base, fan)
        answer = world.api(request)
        responses = check_http(answer)["methodResponses"]
    assert bounded(len(answer.body), calls), len(answer.body)
    assert responses[0] == ["Core/echo", {"v": "x" * base}, "c0"]
    assert any(r[0] == "error" for r in responses)


@KNOWN_DEFECT
@given(base=st.integers(10, 2000), fan=st.integers(2, 4))
def test_amplification_is_bounded_over_websocket(base: int, fan: int) -> None:
    """The same bound for one WebSocket Response frame."""
    world = World()
    conversation, sink = world.conversation()
    body, calls = amplifying_request(base, fan)
    request = {"@type": "Request", "id": "r", **body}
    with no_failures_logged():
        conversation.message(json.dumps(request).encode())
        size = sum(len(f) for f in sink.frames)
        check_ws_messages(sink.messages())
    assert bounded(size, calls), size


@given(size=st.integers(MAX_SIZE_RESPONSE // 2, MAX_SIZE_RESPONSE * 3))
def test_large_echo_within_request_limit(size: int) -> None:
    """A plain large echo (no reference) is answered, or refused by the response limit
    with a method error; never a crash."""
    world = World()
    with no_failures_logged():
        check_http(world.api({"using": [CORE], "methodCalls": [
            ["Core/echo", {"v": "x" * size}, "c0"]]}))
