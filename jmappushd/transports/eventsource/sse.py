"""The server-sent events wire format (WHATWG HTML), as RFC 8620 §7.3 uses it.

Events are blocks of ``field: value`` lines ended by an empty line. JMAP sends two
kinds: ``state`` (a StateChange, with an ``id:`` line carrying the resumption
token, C-ES-4) and ``ping`` (``{"interval": N}``, never an ``id:`` line, ES-5).
The JSON is compact, so one ``data:`` line always suffices.
The parsing side (a client's) lives with the tests.
"""

from __future__ import annotations

from collections.abc import Mapping

from jmappushd.jmap.ijson import dumps

#: Written once when a stream opens, so the headers and a first body chunk go out
#: at once (ES-1) and buffering proxies see traffic; parsers ignore comments.
OPEN_COMMENT = b": jmap event stream\n\n"

_PINGS: dict[int, bytes] = {}


def state_change_json(changed: Mapping[str, Mapping[str, str]]) -> bytes:
    """The StateChange object (SC-1) as compact JSON: the bytes ``dumps`` gives the
    whole object, with its constant members written once (study 17)."""
    return b'{"@type":"StateChange","changed":%b}' % dumps(changed)


def state_event(changed: Mapping[str, Mapping[str, str]], token: str) -> bytes:
    """A ``state`` event with its id in the same block (ES-8, ES-9, C-ES-4)."""
    return b"event: state\nid: %b\ndata: %b\n\n" % (
        _line_safe(token).encode("utf-8"), state_change_json(changed))


def ping_event(interval: int) -> bytes:
    """A ``ping`` event reporting the interval in use, without ``id:`` (ES-5, ES-6)."""
    event = _PINGS.get(interval)
    if event is None:
        event = b'event: ping\ndata: {"interval":%d}\n\n' % interval
        if len(_PINGS) < 1024:
            _PINGS[interval] = event
    return event


def _line_safe(value: str) -> str:
    """Tokens are opaque but must never break the line structure."""
    return value.replace("\r", "").replace("\n", "")
