"""The admin listener: publish, health and metrics over real HTTP."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from hypothesis import given, settings
from hypothesis import strategies as st

from jmappushd.jmap.ijson import loads
from jmappushd.jmap.problems import RequestProblem
from jmappushd.transports.webpush.service import WebPushService
from jmappushd.web.admin import (
    InvalidPublish,
    _quick_state_change,
    parse_state_change,
    read_state_change,
)
from tests.support import LiveDaemon, bearer


def test_parse_state_change_accepts_a_state_change() -> None:
    """A well-formed StateChange yields its changed map."""
    body = {"@type": "StateChange", "changed": {"A1": {"Email": "s42", "Mailbox": "m1"}}}
    assert parse_state_change(body) == {"A1": {"Email": "s42", "Mailbox": "m1"}}


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"),
    ({"changed": {"A": {"Email": "1"}}}, "@type"),
    ({"@type": "StateChange", "changed": {}}, "non-empty"),
    ({"@type": "StateChange", "changed": {"bad id!": {"Email": "1"}}}, "account id"),
    ({"@type": "StateChange", "changed": {"A": {}}}, "non-empty"),
    ({"@type": "StateChange", "changed": {"A": {"": "1"}}}, "type name"),
    ({"@type": "StateChange", "changed": {"A": {"Email": 5}}}, "must be a string"),
    ({"@type": "StateChange", "changed": {"A": {"Email": ""}}}, "must be a string"),
    ({"@type": "StateChange", "changed": {"A": {"Email": "x" * 2000}}}, "must be a string"),
    # "$" in a pattern also matches before a final newline: both are whole-string matches.
    ({"@type": "StateChange", "changed": {"A\n": {"Email": "1"}}}, "account id"),
    ({"@type": "StateChange", "changed": {"A": {"Email\n": "1"}}}, "type name"),
])
def test_parse_state_change_names_the_problem(body: object, fragment: str) -> None:
    """Each malformed publish is refused with a reason naming what is wrong."""
    with pytest.raises(InvalidPublish, match=fragment):
        parse_state_change(body)


def _strictly(body: bytes) -> tuple[str, object]:
    """The answer of the strict path the counting one must always match."""
    try:
        return "value", parse_state_change(loads(body))
    except (RequestProblem, InvalidPublish) as e:
        return type(e).__name__, str(e)


def _counted(body: bytes) -> tuple[str, object]:
    try:
        return "value", read_state_change(body)
    except (RequestProblem, InvalidPublish) as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("body", [
    b'{"@type":"StateChange","changed":{"A":{"Email":"s1","Mailbox":"m1"},"B":{"Email":"2"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"},"A":{"Email":"2"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"1","Email":"2"}}}',
    b'{"@type":"StateChange","@type":"StateChange","changed":{"A":{"Email":"1"}}}',
    b'{"@type":"x","@type":"StateChange","changed":{"A":{"Email":"1"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"}},"changed":{"B":{"Email":"1"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"}},"x":{"k":1,"k":2}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"}},"x":{"k":1,"j":[{"a":1}]}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"a:b\\\":c"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"\\\\"},"A":{"Email":":"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":"\\u00e9:"}}}',
    '{"@type":"StateChange","changed":{"A":{"Email":"\u00e9\u2028"}}}'.encode(),
    b'{"@type":"StateChange","changed":{"A":{"Email":"\\ud800"}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":1e400}}}',
    b'{"@type":"StateChange","changed":{"A":{"Email":NaN}}}',
    b'{"@type":"StateChange","changed":{}}', b'{"@type":"StateChange"', b"[]", b"",
    b'\xef\xbb\xbf{"@type":"StateChange","changed":{"A":{"Email":"1"}}}', b"\xff",
    b'{"@type":"StateChange","changed":{"A":{"x:y":"a:b","x:y":"c"}}}',
    b'{"@type":"StateChange","changed":{"A":{"x:y":"a:b"},"B":{"Email":"::"}}}',
    '{"@type":"StateChange","changed":{"A":{"Email":"\ufdd0"}}}'.encode(),
    b'{"@type":"StateChange","changed":{"A":{"Email":"%s"}}}' % (b"x" * 1025),
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"}},"x":' + b"[" * 200 + b"]" * 200
    + b"}",
    b'{"@type":"StateChange","changed":{"A":{"Email":"1"}},"x":' + b"[" * 5000 + b"]" * 5000
    + b"}",
    b'{"@type":"StateChange","changed":' + b'{"A":' * 300 + b"1" + b"}" * 301,
])
def test_reading_a_publish_quickly_answers_as_the_strict_decoder(body: bytes) -> None:
    """The quick path gives the strict path's value or its very error (duplicates at
    every level, members it does not walk, colons and quotes inside strings, nesting
    beyond the limit and beyond the C decoder's, forbidden code points, long states)."""
    assert _counted(body) == _strictly(body)

def test_a_plain_publish_takes_the_quick_path() -> None:
    """The bulk check does answer the common body (else the tests above would only
    compare the strict path with itself)."""
    body = json.dumps({"@type": "StateChange", "changed": {
        f"a{i}": {"Email": f"s:{i}", "Mail:box": "m"} for i in range(50)}}).encode()
    assert _quick_state_change(body) == parse_state_change(loads(body))
    assert _quick_state_change(body.replace(b'"a1"', b'"a2"')) is None  # a duplicate


_names = st.sampled_from(["A", "B", "Email", "@type", "changed", "x:y", 'q"', "\\"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, st.lists(st.tuples(_names, _names), max_size=3)),
                max_size=4), st.booleans())
def test_reading_a_publish_quickly_matches_on_generated_bodies(
        accounts: list[tuple[str, list[tuple[str, str]]]], extra: bool) -> None:
    """Generated bodies with repeated names anywhere give the same answer both ways."""
    def obj(pairs: list[tuple[str, str]]) -> str:
        return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"
    changed = obj([(a, obj([(t, json.dumps(s)) for t, s in types])) for a, types in accounts])
    top = [("@type", '"StateChange"'), ("changed", changed)]
    if extra:
        top.append(("changed", changed) if accounts else ("@type", '"StateChange"'))
    body = obj(top).encode()
    assert _counted(body) == _strictly(body)


@pytest_twisted.ensureDeferred
async def test_publish_requires_the_admin_token(live: LiveDaemon) -> None:
    """No token or a wrong one → 401; the right one → 202 with the seq, and no resumption
    token (those are sealed per user; a store-wide one would tell how often changes come)."""
    body = {"@type": "StateChange", "changed": {"A": {"Email": "s1"}}}
    r = await treq.post(live.admin + "/publish", json=body)
    assert r.code == 401
    r = await treq.post(live.admin + "/publish", json=body,
                        headers=bearer("nope"))
    assert r.code == 401
    out = await live.publish({"A": {"Email": "s1"}})
    assert out == {"seq": 1}
    states = await live.app.store.current_states(["A"])
    assert states == {"A": {"Email": "s1"}}


@pytest_twisted.ensureDeferred
async def test_malformed_publish_is_400(live: LiveDaemon) -> None:
    """Invalid JSON and invalid StateChange bodies get 400 with a detail; nothing recorded."""
    headers = bearer(live.app.admin_token)
    r = await treq.post(live.admin + "/publish", data=b"{nope", headers=headers)
    assert r.code == 400 and "JSON" in (await r.json())["detail"]
    r = await treq.post(live.admin + "/publish", json={"@type": "Nope"}, headers=headers)
    assert r.code == 400 and "@type" in (await r.json())["detail"]
    assert (await live.app.store.position())[1] == 0


@pytest_twisted.ensureDeferred
async def test_health_and_metrics(live: LiveDaemon) -> None:
    """/health reports the store position; /metrics is Prometheus text with our counters."""
    await live.publish({"A": {"Email": "s1", "Mailbox": "m"}})
    r = await treq.get(live.admin + "/health")
    assert r.code == 200 and (await r.json())["seq"] == 1
    r = await treq.get(live.admin + "/metrics")
    text = await r.text()
    assert r.code == 200
    assert "jmappushd_publishes_total 1.0" in text
    assert "jmappushd_state_changes_total 2.0" in text
    assert 'jmappushd_listeners{kind="all"}' in text


@pytest_twisted.ensureDeferred
async def test_vapid_rotation_changes_key_and_session_state(live: LiveDaemon) -> None:
    """SES-16, VAPID-13: rotating the key changes applicationServerKey and the session
    state; the admin token is required."""
    from tests.support import basic

    vapid = "urn:ietf:params:jmap:webpush-vapid"
    await live.add_user("alice")
    await live.service.transport(WebPushService).runtime.wait_started()
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    before = await r.json()
    r = await treq.post(live.admin + "/vapid/rotate")
    assert r.code == 401
    r = await treq.post(live.admin + "/vapid/rotate",
                        headers=bearer(live.app.admin_token))
    assert r.code == 200
    reply = await r.json()
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    after = await r.json()
    assert after["capabilities"][vapid]["applicationServerKey"] == reply["applicationServerKey"]
    assert reply["applicationServerKey"] != before["capabilities"][vapid]["applicationServerKey"]
    assert after["state"] != before["state"]
