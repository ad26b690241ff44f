"""The RFC 8887 message rules as pure functions (WS-13, WS-16, WS-18, WS-19, C-WS-3,
C-WS-4, C-WS-7)."""

from __future__ import annotations

import json

import pytest

from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.response import Response
from jmappushd.transports.websocket.messages import (
    BadMessage,
    encode_request_error,
    encode_response,
    encode_state_change,
    parse_message,
    parse_push_enable,
)
from tests.support import ODD_STATE_MAPS


def bad(payload: bytes, max_size: int = 1000) -> tuple[str, str | None, str | None]:
    with pytest.raises(BadMessage) as caught:
        parse_message(payload, max_size)
    return caught.value.problem.kind, caught.value.problem.limit, caught.value.request_id


def test_request_is_classified_with_its_id() -> None:
    """WS-13: a Request object with a String id is accepted as (Request, object, id)."""
    kind, obj, rid = parse_message(b'{"@type":"Request","id":"R1","using":[]}', 1000)
    assert (kind, rid, obj["using"]) == ("Request", "R1", [])
    assert parse_message(b'{"@type":"WebSocketPushDisable"}', 1000)[2] is None


@pytest.mark.parametrize(("payload", "expected"), [
    (b"The quick brown fox", ("notJSON", None, None)),
    (b'{"a":1,"a":2}', ("notJSON", None, None)),
    (b'"text"', ("notRequest", None, None)),
    (b'{"id":5,"@type":"Request"}', ("notRequest", None, None)),
    (b'{"id":"X"}', ("notRequest", None, "X")),
    (b'{"@type":"StateChange","id":"Y"}', ("notRequest", None, "Y")),
    (b'{"@type":7}', ("notRequest", None, None)),
])
def test_bad_messages(payload: bytes, expected: tuple[str, str | None, str | None]) -> None:
    """C-WS-3: unparseable → notJSON; non-objects, non-String ids and missing or unknown
    @type → notRequest; requestId is the String id when there was one, else None."""
    assert bad(payload) == expected


def test_size_limit_is_checked_before_parsing() -> None:
    """C-WS-4: a message over maxSizeRequest (but under the hard cap, which Autobahn
    enforces) gets limit/maxSizeRequest without being parsed."""
    payload = json.dumps({"@type": "Request", "id": "big", "x": "y" * 100}).encode()
    assert bad(payload, max_size=len(payload) - 1) == ("limit", "maxSizeRequest", None)
    assert parse_message(payload, len(payload))[0] == "Request"


def test_push_enable_parsing() -> None:
    """WS-18, C-WS-7: dataTypes null or missing = all types, a list = those; pushState is
    optional; wrong types are notRequest with the message's id."""
    assert parse_push_enable({}, None).types is None
    assert parse_push_enable({"dataTypes": None}, None).types is None
    enable = parse_push_enable({"dataTypes": ["Email", "Mailbox"], "pushState": "p"}, None)
    assert enable.types == frozenset({"Email", "Mailbox"}) and enable.push_state == "p"
    for obj in ({"dataTypes": "Email"}, {"dataTypes": [1]}, {"pushState": 3}):
        with pytest.raises(BadMessage) as caught:
            parse_push_enable(obj, "E1")
        assert caught.value.problem.kind == "notRequest" and caught.value.request_id == "E1"


def test_encodings() -> None:
    """WS-16, WS-19, WS-24: Response has requestId only with an id; RequestError always
    has requestId (null without id) plus the problem details; StateChange carries changed
    and pushState and is valid JSON (the RFC example's missing comma is not copied)."""
    empty = Response([], "s0")
    assert json.loads(encode_response(empty, None)) == {
        "@type": "Response", "methodResponses": [], "sessionState": "s0"}
    assert json.loads(encode_response(empty, "R\"")) == {
        "@type": "Response", "requestId": "R\"", "methodResponses": [], "sessionState": "s0"}
    error = json.loads(encode_request_error({"type": "t", "status": 400}, None))
    assert error == {"@type": "RequestError", "requestId": None, "type": "t", "status": 400}
    assert json.loads(encode_state_change({"A": {"Email": "s"}}, "tok")) == {
        "@type": "StateChange", "changed": {"A": {"Email": "s"}}, "pushState": "tok"}


@pytest.mark.parametrize("changed", ODD_STATE_MAPS)
@pytest.mark.parametrize("token", ["tok", "", 'q"uote\\', "é\u2028\n", "A" * 43])
def test_state_change_bytes_are_what_the_encoder_gives_the_whole_object(
        changed: dict[str, dict[str, str]], token: str) -> None:
    """Study 17's fixed-member template: byte for byte the generic encoding of the
    whole StateChange, whatever the names, states and token hold (escapes, quotes,
    line separators, non-ASCII, empty maps)."""
    whole = dumps({"@type": "StateChange", "changed": changed, "pushState": token})
    assert encode_state_change(changed, token) == whole
