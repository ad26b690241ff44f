"""Fuzzing the HTTP API body (API-1..API-14, API-21): whatever the body, the answer is a
JMAP Response or an RFC 7807 problem, never a 500, a serverFail or a logged traceback."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz_support import (
    CORE,
    ERR,
    World,
    check_http,
    json_values,
    no_failures_logged,
    requests,
)


@given(st.binary(max_size=300))
def test_any_bytes(body: bytes) -> None:
    """API-8: arbitrary bytes get 200 (if they happen to be a Request) or a problem."""
    world = World()
    with no_failures_logged():
        check_http(world.post_api(body))


@given(json_values)
def test_any_json_value(value: Any) -> None:
    """API-3, API-8: any JSON value that is not a Request is notRequest."""
    world = World()
    with no_failures_logged():
        body = check_http(world.api(value))
    if not isinstance(value, dict):
        assert body["type"] == ERR + "notRequest"


@given(requests())
def test_request_shaped_values(value: Any) -> None:
    """API-2..API-7, API-9, API-13: requests with good and bad members; a Response
    answers exactly the calls it got, in order, with their ids (API-7)."""
    world = World()
    with no_failures_logged():
        answer = world.api(value)
        body = check_http(answer)
    event(f"status {answer.status} {body.get('type', '')}")
    if answer.status == 200:
        ids = [r[2] for r in body["methodResponses"]]
        sent = [c[2] for c in value["methodCalls"]]
        assert ids == sent  # every method here answers with exactly one response


@st.composite
def mangled_json(draw: st.DrawFn) -> bytes:
    """A valid request's text with a few bytes changed, dropped or repeated: the parser's
    edge cases (truncation, duplicate names, lone surrogates, huge numbers)."""
    text = json.dumps(draw(requests()), ensure_ascii=draw(st.booleans())).encode()
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["replace", "drop", "repeat", "insert"]))
        piece = draw(st.sampled_from([b'"', b",", b"{", b"}", b"[", b"]", b"\\ud800", b"1e400",
                                      b"9" * 5000, b"NaN", b'"a":1,"a":2', b"\xff", b"\x00",
                                      b"\\uffff", b"\xef\xbf\xbe"]))
        if op == "replace":
            text = text[:at] + piece + text[at + 1:]
        elif op == "drop":
            text = text[:at] + text[at + 1:]
        elif op == "repeat":
            text = text[:at] + text[at:] * 2
        else:
            text = text[:at] + piece + text[at:]
    return text


@given(mangled_json())
def test_mangled_json(body: bytes) -> None:
    """API-8, API-19, C-API-3: broken I-JSON is notJSON (or, if still valid, answered)."""
    world = World()
    with no_failures_logged():
        check_http(world.post_api(body))


@given(st.one_of(st.none(), st.binary(max_size=40),
                 st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                  b"APPLICATION/JSON", b"text/plain", b"application/json;",
                                  b";", b"", b"application/problem+json"])),
       st.one_of(st.none(), st.binary(max_size=60),
                 st.sampled_from([b"Basic !!!", b"Basic YWxpY2U6c2VjcmV0", b"Bearer ",
                                  b"Bearer jmp_nope", b"Basic Ym9iOndyb25n", b"Digest x",
                                  b"Basic " + b"A" * 400, b"bearer jmp_fuzz-token-alice"])))
def test_content_type_and_authorization(content_type: bytes | None,
                                        authorization: bytes | None) -> None:
    """SES-1, API-1, C-API-2: any Content-Type and Authorization header gets 200, 401 with
    a challenge, or a problem."""
    world = World()
    body = json.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"a": 1}, "0"]]}).encode()
    with no_failures_logged():
        answer = world.post_api(body, content_type, authorization)
        check_http(answer)
    if answer.status == 401:
        assert answer.headers.get("www-authenticate"), answer.headers
