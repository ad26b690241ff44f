"""The Response object (RFC 8620 §3.4, API-14), kept as its encoded method responses.

The processor encodes each method response as soon as the method returns: that gives
its exact size for ``max-size-response`` (``jmap.budget``) at the cost of the one
encoding the transport needs anyway, and freezes what is sent (a later handler cannot
change an earlier response). The transports only wrap the pieces: HTTP as they are,
the WebSocket with ``@type`` and ``requestId`` in front (RFC 8887 §4.3.3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from jmappushd.jmap.ijson import dumps, encode_string

_METHOD_RESPONSES = b'"methodResponses":['
_SESSION_STATE = b'],"sessionState":'
_CREATED_IDS = b',"createdIds":'
_ENVELOPE = 1 + len(_METHOD_RESPONSES) + len(_SESSION_STATE)


def encode_invocation(name: str, arguments: dict[str, Any], call_id: str) -> bytes:
    """``[name, arguments, methodCallId]`` as compact UTF-8 JSON (API-2)."""
    return dumps([name, arguments, call_id])


def envelope_size(session_state: str, created_ids: dict[str, str] | None) -> int:
    """Octets of a Response without its method responses, less one: each method response
    is counted with a comma after it, and there is one comma fewer than responses."""
    size = _ENVELOPE + len(encode_string(session_state))
    if created_ids is not None:
        size += len(_CREATED_IDS) + len(dumps(created_ids))
    return size


class Response(NamedTuple):
    """What :meth:`~jmappushd.jmap.processor.RequestProcessor.process` returns.

    ``method_responses`` are encoded Invocations, in order; ``created_ids`` is present
    only when the Request had ``createdIds`` (API-13). (A tuple: built once per
    request on the API fast path, where a frozen dataclass costs three times as much.)
    """

    method_responses: Sequence[bytes]
    session_state: str
    created_ids: dict[str, str] | None = None

    def encode(self, head: bytes = b"") -> bytes:
        """The Response as JSON; ``head`` is members (each followed by ``,``) put first."""
        responses = self.method_responses
        body = responses[0] if len(responses) == 1 else b",".join(responses)
        state = encode_string(self.session_state)
        if self.created_ids is None:
            return b"{%b%b%b%b%b}" % (head, _METHOD_RESPONSES, body, _SESSION_STATE, state)
        return b"{%b%b%b%b%b%b%b}" % (head, _METHOD_RESPONSES, body, _SESSION_STATE, state,
                                      _CREATED_IDS, dumps(self.created_ids))

    def to_json(self) -> dict[str, Any]:
        """The Response decoded again (for tests and tools; the transports send bytes)."""
        value: dict[str, Any] = json.loads(self.encode())
        return value
