"""The RFC 8887 §4.3 message shapes: classifying client messages, encoding replies.

Pure functions, so the rules (C-WS-3, C-WS-7, WS-13, WS-16, WS-18, WS-19) are
testable without a socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jmappushd.jmap.ijson import dumps, encode_string, loads
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.response import Response

WEBSOCKET_CAPABILITY = "urn:ietf:params:jmap:websocket"
SUBPROTOCOL = "jmap"

REQUEST = "Request"
PUSH_ENABLE = "WebSocketPushEnable"
PUSH_DISABLE = "WebSocketPushDisable"
_KINDS = frozenset((REQUEST, PUSH_ENABLE, PUSH_DISABLE))


class BadMessage(Exception):
    """A client message that gets a RequestError instead of being processed."""

    def __init__(self, problem: RequestProblem, request_id: str | None) -> None:
        super().__init__(problem, request_id)
        self.problem = problem
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class PushEnable:
    """A validated WebSocketPushEnable: ``types`` None means every type (C-WS-7)."""

    types: frozenset[str] | None
    push_state: str | None


def parse_message(payload: bytes, max_size: int) -> tuple[str, dict[str, Any], str | None]:
    """Decode one text message into ``(@type, object, id)`` or raise :class:`BadMessage`.

    Over ``max_size`` → ``limit``/``maxSizeRequest`` (C-WS-4, below the hard cap);
    not I-JSON → ``notJSON``; not an object, a non-String ``id``, or a missing or
    unknown ``@type`` → ``notRequest`` (C-WS-3). ``requestId`` is the message's
    String ``id`` when it had one, else None.
    """
    if len(payload) > max_size:
        raise BadMessage(RequestProblem(
            "limit", f"the message exceeds maxSizeRequest ({max_size} octets)",
            limit="maxSizeRequest"), None)
    try:
        obj = loads(payload)
    except RequestProblem as problem:
        raise BadMessage(problem, None) from None
    if not isinstance(obj, dict):
        raise BadMessage(RequestProblem("notRequest", "the message must be a JSON object"), None)
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadMessage(RequestProblem("notRequest", "'id' must be a String"), None)
    kind = obj.get("@type")
    if kind not in _KINDS:
        detail = ("the message has no '@type'" if kind is None
                  else "'@type' must be Request, WebSocketPushEnable or WebSocketPushDisable")
        raise BadMessage(RequestProblem("notRequest", detail), request_id)
    return kind, obj, request_id


def parse_push_enable(obj: Mapping[str, Any], request_id: str | None) -> PushEnable:
    """Validate ``dataTypes`` (String[]|null, missing = null) and ``pushState`` (WS-18)."""
    types = obj.get("dataTypes")
    if types is not None and not (
        isinstance(types, list) and all(isinstance(t, str) for t in types)
    ):
        raise BadMessage(RequestProblem(
            "notRequest", "'dataTypes' must be null or an array of Strings"), request_id)
    push_state = obj.get("pushState")
    if push_state is not None and not isinstance(push_state, str):
        raise BadMessage(RequestProblem("notRequest", "'pushState' must be a String"),
                         request_id)
    return PushEnable(None if types is None else frozenset(types), push_state)


_RESPONSE_HEAD = b'"@type":"Response",'


def response_head(request_id: str | None) -> bytes:
    """The members a WebSocket puts before a Response's own: ``@type``, then
    ``requestId`` only when the request had an ``id`` (WS-16)."""
    if request_id is None:
        return _RESPONSE_HEAD
    return b'%b"requestId":%b,' % (_RESPONSE_HEAD, encode_string(request_id))


def encode_response(response: Response, request_id: str | None) -> bytes:
    """A Response message (WS-16): the processor's method responses, already encoded."""
    return response.encode(response_head(request_id))


def encode_request_error(problem: Mapping[str, Any], request_id: str | None) -> bytes:
    """A RequestError: problem details plus ``@type`` and ``requestId`` (null if none)."""
    return dumps({"@type": "RequestError", "requestId": request_id, **problem})


def encode_state_change(changed: Mapping[str, Mapping[str, str]], token: str) -> bytes:
    """A StateChange carrying the resumption token as ``pushState`` (WS-19, SC-4).

    The bytes ``dumps`` gives the whole object, with the constant members written
    once here: fan-out encodes one per listener, and the encoder's walk over the
    outer object and its fixed names was a quarter of the cost (study 17).
    """
    return b'{"@type":"StateChange","changed":%b,"pushState":%b}' % (
        dumps(changed), encode_string(token))
