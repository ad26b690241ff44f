"""The server-sent events wire format (WHATWG HTML), as RFC 8620 §7.3 uses it.

Events are blocks of ``field: value`` lines ended by an empty line. JMAP sends two
kinds: ``state`` (a StateChange, with an ``id:`` line carrying the resumption
token, C-ES-4) and ``ping`` (``{"interval": N}``, never an ``id:`` line, ES-5).
The JSON is compact, so one ``data:`` line always suffices.

:class:`EventParser` is the inverse, incremental and tolerant of CR LF and CR
line ends; the tests read streams with it, and a CLI client could too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jmappushd.jmap.ijson import dumps

#: Written once when a stream opens, so the headers and a first body chunk go out
#: at once (ES-1) and buffering proxies see traffic; parsers ignore comments.
OPEN_COMMENT = b": jmap event stream\n\n"

_PINGS: dict[int, bytes] = {}


def state_change_json(changed: Mapping[str, Mapping[str, str]]) -> bytes:
    """The StateChange object (SC-1) as compact JSON."""
    return dumps({"@type": "StateChange", "changed": changed})


def state_event(changed: Mapping[str, Mapping[str, str]], token: str) -> bytes:
    """A ``state`` event with its id in the same block (ES-8, ES-9, C-ES-4)."""
    return b"event: state\nid: %s\ndata: %s\n\n" % (
        _line_safe(token).encode("utf-8"),
        state_change_json(changed),
    )


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


@dataclass(frozen=True)
class Event:
    """One parsed event; ``id`` is None when the block had no ``id:`` line."""

    event: str
    data: str
    id: str | None


class EventParser:
    """Feed bytes in any chunking; complete events accumulate in ``events``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.comments: list[str] = []
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_fields = False
        self._skip_lf = False

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completed."""
        self._buffer += data
        done: list[Event] = []
        while True:
            line, found = self._next_line()
            if not found:
                break
            event = self._line(line)
            if event is not None:
                done.append(event)
        self.events.extend(done)
        return done

    def _next_line(self) -> tuple[str, bool]:
        buffer = self._buffer
        if not buffer:
            return "", False
        if self._skip_lf and buffer[:1] == b"\n":
            buffer = buffer[1:]  # the LF of a CR LF split across chunks
        self._skip_lf = False
        for index, byte in enumerate(buffer):
            if byte in (0x0A, 0x0D):
                end = index + 1
                if byte == 0x0D:
                    if buffer[end : end + 1] == b"\n":
                        end += 1
                    elif end == len(buffer):
                        self._skip_lf = True
                self._buffer = buffer[end:]
                return buffer[:index].decode("utf-8", "replace"), True
        self._buffer = buffer
        return "", False

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._has_fields = True
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._has_fields:
            return None
        event = Event(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._id, self._has_fields = "", [], None, False
        return event
