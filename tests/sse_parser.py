"""The client side of the server-sent events format (WHATWG HTML §9.2.6), for tests.

:class:`EventParser` is incremental and tolerant of CR LF and CR line ends, so
tests can read a stream in whatever chunks the transport wrote.
"""

from __future__ import annotations

from dataclasses import dataclass


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
