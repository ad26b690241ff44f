"""Fuzzing WebSocket messages through the transport-neutral Conversation (WS-9..WS-20,
C-WS-3, C-WS-4, C-WS-6, C-WS-7): each text message is answered by a Response, a
RequestError (a 4xx problem) or, after a push enable, StateChanges; the socket stays
open; nothing is logged as a failure."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz_support import (
    CORE,
    World,
    check_ws_messages,
    json_values,
    no_failures_logged,
    requests,
    weighted,
)

push_states = st.one_of(st.none(), st.text(max_size=30), json_values,
                        st.sampled_from(["e0-1", "-1", "x" * 300]))
messages = weighted(
    (1, json_values),
    (4, requests().map(lambda r: {"@type": "Request", **r})),
    (1, st.fixed_dictionaries({"@type": st.just("Request"), "id": st.text(max_size=10),
                               "using": st.just([CORE]),
                               "methodCalls": st.just([["Core/echo", {}, "0"]])})),
    (1, st.fixed_dictionaries({"@type": st.just("Request")}, optional={
        "id": st.one_of(st.text(max_size=10), json_values),
        "using": json_values, "methodCalls": json_values})),
    (2, st.fixed_dictionaries({"@type": st.just("WebSocketPushEnable")}, optional={
        "dataTypes": st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=4),
                               json_values),
        "pushState": push_states, "id": json_values})),
    (1, st.fixed_dictionaries({"@type": st.sampled_from(["WebSocketPushDisable", "Response",
                                                         "StateChange", "", None])},
                              optional={"id": json_values})),
)


@given(st.lists(messages, min_size=1, max_size=5))
def test_message_sequences(sequence: list[Any]) -> None:
    """A sequence of messages on one connection: every answer is well-formed, a Request
    or a bad message gets exactly one answer, and the connection is never closed."""
    world = World()
    conversation, sink = world.conversation()
    with no_failures_logged():
        for message in sequence:
            conversation.message(json.dumps(message).encode())
            world.publish({"A": {"Email": f"e{len(sink.frames)}"}, "B": {"Email": "b"}})
        world.clock.advance(5)
        got = sink.messages()
        for m in got:
            event(f"{m.get('@type')} {m.get('type', '')}")
            if m.get("@type") == "StateChange":
                # SC-1: never bob's account; empty only as the fresh-token resync (C-WS-8)
                assert set(m["changed"]) <= {"A"}, m
        check_ws_messages(got)
        conversation.stop_push()
    replies = [m for m in got if m.get("@type") in ("Response", "RequestError")]
    pushes = sum(1 for m in sequence if isinstance(m, dict) and m.get("@type") in (
        "WebSocketPushEnable", "WebSocketPushDisable"))
    # Every Request and every bad message is answered once (no hang); a push enable or
    # disable is answered only when it is malformed.
    assert len(sequence) - pushes <= len(replies) <= len(sequence), (sequence, replies)
    assert sink.closed == []
    assert world.app.hub.listener_count == 0


@given(st.text(max_size=200))
def test_any_text(text: str) -> None:
    """C-WS-3: any text (Autobahn has checked it is UTF-8) gets a RequestError or a
    Response, never a close."""
    world = World()
    conversation, sink = world.conversation()
    with no_failures_logged():
        conversation.message(text.encode("utf-8", "surrogatepass"))
        check_ws_messages(sink.messages())
    assert sink.closed == []
