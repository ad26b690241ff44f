"""The admin listener: publish, health and metrics over real HTTP."""

from __future__ import annotations

import pytest
import pytest_twisted
import treq

from jmappushd.transports.webpush.service import WebPushService
from jmappushd.web.admin import InvalidPublish, parse_state_change
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
