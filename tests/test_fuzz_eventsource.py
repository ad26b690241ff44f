"""Fuzzing the EventSource query and headers (ES-1..ES-10, C-ES-2, C-ES-3): any query
and any Last-Event-ID give either a 200 text/event-stream or a 4xx problem naming the
parameter; an accepted stream pings and ends cleanly, leaving nothing subscribed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from hypothesis import event, example, given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.fuzz_support import World, check_problem, no_failures_logged, weighted
from tests.sse_parser import EventParser

_TYPES = [b"*", b"%2A", b"Email", b"Email,Mailbox", b"", b",", b"Email,", b"*,Email",
          b"Email\n", b"E mail", b"1Email", b"\xff", b"Email," * 200, b"a" * 200]
_CLOSEAFTER = [b"state", b"no", b"", b"STATE", b"yes", b"state\n", b"\xc3\xa9"]
_PING = [b"0", b"1", b"30", b"300", b"100000", b"-1", b"1.5", b"", b" 30", b"30\n",
         b"\xd9\xa3", b"9" * 11, b"9" * 10, b"0x10", b"+5"]


def values(valid: list[bytes], samples: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Usually one valid value; else none, two, or odd ones."""
    one = st.one_of(st.sampled_from(samples), st.binary(max_size=20))
    good = st.sampled_from(valid).map(lambda v: [v])
    return weighted((5, good), (1, st.lists(one, min_size=0, max_size=2)))


ALTERATIONS: dict[str, Callable[[bytes], bytes]] = {
    "as given": lambda t: t, "longer": lambda t: t + b"x", "shorter": lambda t: t[:-1],
    "shifted": lambda t: t[1:], "upper": lambda t: t.upper(), "padded": lambda t: b" " + t + b" ",
    "last changed": lambda t: t[:-1] + (b"A" if t[-1:] != b"A" else b"B"),
    "doubled": lambda t: t + t,
}


def last_event_ids() -> st.SearchStrategy[bytes | Callable[[bytes], bytes] | None]:
    """None, the daemon's own token for alice (a function of it: as given or altered),
    old-style ``<epoch>-<seq>`` ones, or junk without CR/LF."""
    old_style = st.builds(lambda epoch, seq: f"{epoch}-{seq:x}".encode(),
                          st.sampled_from(["e0", "zz", ""]), st.integers(0, 10**6))
    own = st.sampled_from(sorted(ALTERATIONS)).map(ALTERATIONS.__getitem__)
    junk = st.binary(max_size=250).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    return weighted((3, st.none()), (4, own), (1, old_style), (2, junk),
                    (1, st.sampled_from([b"", b" ", b"x" * 201])))


TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]{0,127}")


def assert_grammar(args: dict[bytes, list[bytes]]) -> None:
    """What an accepted stream was asked for follows the grammar exactly (ES-2..ES-4,
    C-ES-2): ``*`` or type names, ``state`` or ``no``, ASCII digits."""
    (types,), (closeafter,), (ping,) = args[b"types"], args[b"closeafter"], args[b"ping"]
    assert types == b"*" or all(TYPE_NAME.fullmatch(n.decode()) for n in types.split(b",")), types
    assert closeafter in (b"state", b"no"), closeafter
    assert re.fullmatch(rb"[0-9]{1,10}", ping), ping


@example(types=[b"Email\n"], closeafter=[b"no"], ping=[b"0"], extra={}, last_event_id=None)
@example(types=[b"*"], closeafter=[b"no"], ping=[b"30\n"], extra={}, last_event_id=None)
@given(types=values([b"*", b"Email", b"Mailbox,Email", b"Thread"], _TYPES),
       closeafter=values([b"no", b"state"], _CLOSEAFTER),
       ping=values([b"0", b"1", b"30", b"100000"], _PING),
       extra=st.dictionaries(st.binary(max_size=8), st.lists(st.binary(max_size=8),
                                                              max_size=2), max_size=2),
       last_event_id=last_event_ids())
def test_query_and_last_event_id(types: list[bytes], closeafter: list[bytes],
                                 ping: list[bytes], extra: dict[bytes, list[bytes]],
                                 last_event_id: bytes | Callable[[bytes], bytes] | None
                                 ) -> None:
    """C-ES-2: a missing, repeated or malformed parameter is a 400 problem naming it; an
    accepted stream is text/event-stream, its pings carry a clamped interval (ES-6, ES-7),
    and when the client goes away nothing stays subscribed."""
    world = World()
    args = {k: v for k, v in extra.items() if k not in (b"types", b"closeafter", b"ping",
                                                        b"access_token")}
    for name, given_values in ((b"types", types), (b"closeafter", closeafter),
                               (b"ping", ping)):
        if given_values:
            args[name] = given_values
    headers = {}
    if callable(last_event_id):
        last_event_id = last_event_id(world.observed_token().encode())
    if last_event_id is not None:
        headers[b"Last-Event-ID"] = last_event_id
    with no_failures_logged():
        request, channel = world.get_eventsource(args, headers)
        world.clock.advance(301)
        world.publish({"A": {"Email": "e2"}, "B": {"Email": "b2"}})
        world.clock.advance(2)
        answer = world.answer_of(request, channel)
        event(f"status {answer.status}")
        if answer.status == 200:
            assert answer.header("content-type") == "text/event-stream", answer.headers
            assert_grammar(args)
            for sse in EventParser().feed(answer.body):
                assert sse.event in ("ping", "state"), sse
                if sse.event == "ping":
                    assert sse.id is None  # ES-5
                    assert json.loads(sse.data)["interval"] in range(30, 301)  # ES-6, ES-7
                else:
                    assert sse.id  # ES-9
                    changed = json.loads(sse.data)["changed"]
                    assert set(changed) == {"A"}, changed  # ES-12: never bob's account
            if not request.finished:
                request.connectionLost(Failure(ConnectionDone()))
        else:
            assert answer.finished
            problem = json.loads(answer.body)
            check_problem(problem, answer.status)
            if answer.status == 400:
                assert problem.get("parameter") in ("types", "closeafter", "ping"), problem
        world.clock.advance(301)
    assert world.app.hub.listener_count == 0
    assert world.streams.count_for(world.alice.user_id) == 0



def test_a_trailing_newline_is_not_part_of_the_grammar() -> None:
    """C-ES-2: found by the fuzzer; ``$`` matched before a final newline, so
    ``types=Email%0A`` and ``ping=30%0A`` were accepted."""
    from jmappushd.transports.eventsource.resource import InvalidParameter, parse_params

    good = {b"types": [b"Email"], b"closeafter": [b"no"], b"ping": [b"30"]}
    assert parse_params(good, 30, 300).ping == 30
    for name, bad in ((b"types", b"Email\n"), (b"ping", b"30\n"), (b"types", b"*\n")):
        try:
            parse_params({**good, name: [bad]}, 30, 300)
        except InvalidParameter as exc:
            assert exc.name == name.decode()
        else:
            raise AssertionError(f"{name!r}={bad!r} was accepted")
