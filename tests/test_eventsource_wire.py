"""Unit tests of the EventSource wire format, query parsing and CORS policy."""

from __future__ import annotations

import json

import pytest

from jmappushd.jmap.ijson import dumps
from jmappushd.transports.eventsource.resource import InvalidParameter, clamp_ping, parse_params
from jmappushd.transports.eventsource.sse import ping_event, state_change_json, state_event
from tests.sse_parser import EventParser
from tests.support import ODD_STATE_MAPS


def args(**values: str) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode()] for k, v in values.items()}


# -- wire format --------------------------------------------------------------------------


def test_state_event_block_has_event_id_and_one_data_line() -> None:
    """ES-8, ES-9, C-ES-4, SC-1: a state event names itself, carries its id in the same
    block and a compact StateChange on a single data line."""
    raw = state_event({"A": {"Email": "s42"}}, "ep-1a")
    assert raw == (b'event: state\nid: ep-1a\n'
                   b'data: {"@type":"StateChange","changed":{"A":{"Email":"s42"}}}\n\n')
    (event,) = EventParser().feed(raw)
    assert event.event == "state" and event.id == "ep-1a"
    assert json.loads(event.data) == {"@type": "StateChange", "changed": {"A": {"Email": "s42"}}}


def test_ping_event_has_no_id_line() -> None:
    """ES-5, ES-6: a ping carries {"interval": N} and no id: line."""
    raw = ping_event(30)
    assert b"id:" not in raw
    (event,) = EventParser().feed(raw)
    assert event.event == "ping" and event.id is None
    assert json.loads(event.data) == {"interval": 30}


def test_token_cannot_break_the_event_structure() -> None:
    """An id with a line break would end the field early; it is stripped."""
    (event,) = EventParser().feed(state_event({"A": {"T": "1"}}, "x\ny\rz"))
    assert event.id == "xyz" and event.event == "state"


def test_parser_handles_any_chunking_and_line_ends() -> None:
    """The test client's parser copes with split bytes, CR LF, CR, comments, multi-line data."""
    raw = b": hello\r\n\r\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\nevent: b\rdata: x\r\r"
    parser = EventParser()
    for i in range(len(raw)):
        parser.feed(raw[i : i + 1])
    assert [(e.event, e.data) for e in parser.events] == [("a", "1\n2"), ("b", "x")]
    assert parser.comments == ["hello"]


# -- query parameters ---------------------------------------------------------------------


def test_valid_parameters_are_parsed() -> None:
    """ES-2, ES-3: a type list, closeafter and ping are read as given."""
    p = parse_params(args(types="Email,Mailbox", closeafter="state", ping="60"), 30, 300)
    assert p.types == frozenset({"Email", "Mailbox"}) and p.close_after and p.ping == 60
    p = parse_params(args(types="*", closeafter="no", ping="0"), 30, 300)
    assert p.types is None and not p.close_after and p.ping == 0


@pytest.mark.parametrize(("requested", "expected"), [
    (0, 0), (1, 30), (29, 30), (30, 30), (31, 31), (300, 300), (301, 300), (100000, 300),
])
def test_ping_is_clamped(requested: int, expected: int) -> None:
    """ES-4, ES-7, C-ES-1: 0 means no pings; others are clamped to [30, 300]; 30 and 300
    are always kept."""
    assert clamp_ping(requested, 30, 300) == expected
    p = parse_params(args(types="*", closeafter="no", ping=str(requested)), 30, 300)
    assert p.ping == expected


@pytest.mark.parametrize(("query", "name"), [
    ({"closeafter": "no", "ping": "0"}, "types"),
    ({"types": "", "closeafter": "no", "ping": "0"}, "types"),
    ({"types": "Email,", "closeafter": "no", "ping": "0"}, "types"),
    ({"types": "Email,*", "closeafter": "no", "ping": "0"}, "types"),
    ({"types": "Em ail", "closeafter": "no", "ping": "0"}, "types"),
    ({"types": "*", "ping": "0"}, "closeafter"),
    ({"types": "*", "closeafter": "yes", "ping": "0"}, "closeafter"),
    ({"types": "*", "closeafter": "no"}, "ping"),
    ({"types": "*", "closeafter": "no", "ping": ""}, "ping"),
    ({"types": "*", "closeafter": "no", "ping": "-1"}, "ping"),
    ({"types": "*", "closeafter": "no", "ping": "1.5"}, "ping"),
    ({"types": "*", "closeafter": "no", "ping": "99999999999"}, "ping"),
])
def test_invalid_parameters_name_the_culprit(query: dict[str, str], name: str) -> None:
    """C-ES-2: a missing or malformed parameter is rejected, naming the parameter."""
    with pytest.raises(InvalidParameter) as info:
        parse_params(args(**query), 30, 300)
    assert info.value.name == name and name in str(info.value)


def test_duplicate_parameter_is_rejected() -> None:
    """C-ES-2: a parameter given twice is ambiguous and refused."""
    query = {b"types": [b"*", b"Email"], b"closeafter": [b"no"], b"ping": [b"0"]}
    with pytest.raises(InvalidParameter, match="types"):
        parse_params(query, 30, 300)


def test_unknown_type_names_are_accepted() -> None:
    """C-ES-2: unknown type names are valid (they simply never match)."""
    assert parse_params(args(types="Nope", closeafter="no", ping="0"), 30, 300).types == \
        frozenset({"Nope"})


@pytest.mark.parametrize("changed", ODD_STATE_MAPS)
def test_state_event_bytes_are_what_the_encoder_gives_the_whole_object(
        changed: dict[str, dict[str, str]]) -> None:
    """Study 17's fixed-member template: the data line is byte for byte the generic
    encoding of the whole StateChange, and the block the one built around it."""
    whole = dumps({"@type": "StateChange", "changed": changed})
    assert state_change_json(changed) == whole
    assert state_event(changed, "t\r\nk") == b"event: state\nid: tk\ndata: %b\n\n" % whole
