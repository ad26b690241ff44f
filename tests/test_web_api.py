"""The session resource and API endpoint over real HTTP on 127.0.0.1 (SES-*, API-*)."""

from __future__ import annotations

import pytest_twisted
import treq

from tests.support import LiveDaemon, RequestHeaders, basic, bearer

CORE = "urn:ietf:params:jmap:core"
ERR = "urn:ietf:params:jmap:error:"


@pytest_twisted.ensureDeferred
async def test_session_has_required_properties(live: LiveDaemon) -> None:
    """SES-4, SES-5, SES-6, SES-9, SES-10, SES-13: a complete, uncached Session object."""
    account = await live.add_user("alice")
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    assert r.code == 200
    assert r.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert "no-store" in r.headers.getRawHeaders("Cache-Control")[0]
    s = await r.json()
    assert set(s) == {"capabilities", "accounts", "primaryAccounts", "username", "apiUrl",
                      "downloadUrl", "uploadUrl", "eventSourceUrl", "state"}
    core = s["capabilities"][CORE]
    for key in ("maxSizeUpload", "maxConcurrentUpload", "maxSizeRequest",
                "maxConcurrentRequests", "maxCallsInRequest", "maxObjectsInGet",
                "maxObjectsInSet"):
        assert isinstance(core[key], int)
    assert core["collationAlgorithms"] == []
    assert core["maxCallsInRequest"] == live.config.jmap.max_calls_in_request
    assert s["accounts"] == {account: {"name": "alice", "isPersonal": True, "isReadOnly": False,
                                       "accountCapabilities": {}}}
    assert CORE not in s["primaryAccounts"]
    assert s["username"] == "alice"
    assert s["apiUrl"] == live.base + "/jmap/api/"
    for var in ("{accountId}", "{blobId}", "{type}", "{name}"):
        assert var in s["downloadUrl"]
    assert "{accountId}" in s["uploadUrl"]
    assert s["eventSourceUrl"] == (
        live.base + "/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}")
    assert isinstance(s["state"], str) and s["state"]


@pytest_twisted.ensureDeferred
async def test_session_state_changes_with_a_grant(live: LiveDaemon) -> None:
    """SES-8, SES-11: a granted account appears and the session state moves with it,
    and sessionState in API responses equals it."""
    await live.add_user("alice")
    other = await live.add_user("bob")
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    before = (await r.json())["state"]
    await live.app.store.grant("alice", other)
    live.app.auth.invalidate()
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    after = await r.json()
    assert other in after["accounts"] and after["accounts"][other]["isPersonal"] is False
    assert after["state"] != before
    r = await live.api({"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]},
                       basic("alice", "secret"))
    assert (await r.json())["sessionState"] == after["state"]


@pytest_twisted.ensureDeferred
async def test_well_known_redirects_to_session(live: LiveDaemon) -> None:
    """SES-2, C-SES-1: /.well-known/jmap answers 307 to the session, without auth."""
    r = await treq.get(live.base + "/.well-known/jmap", allow_redirects=False)
    assert r.code == 307
    assert r.headers.getRawHeaders("Location") == [live.base + "/jmap/session"]


@pytest_twisted.ensureDeferred
async def test_every_jmap_endpoint_requires_auth(live: LiveDaemon) -> None:
    """SES-1: session, API, upload and download answer 401 with WWW-Authenticate."""
    await live.add_user("alice")
    for method, path in (("GET", "/jmap/session"), ("POST", "/jmap/api/"),
                         ("POST", "/jmap/upload/a/"), ("GET", "/jmap/download/a/b/c")):
        r = await treq.request(method, live.base + path)
        assert r.code == 401, path
        challenges = r.headers.getRawHeaders("WWW-Authenticate")
        assert any(c.startswith("Basic ") for c in challenges)
        assert any(c.startswith("Bearer ") for c in challenges)
    refused: tuple[RequestHeaders, ...] = (
        basic("alice", "wrong"), basic("nobody", "secret"), bearer("jmp_nope"),
        {"Authorization": "Basic !!!"}, {"Authorization": "Digest x"})
    for headers in refused:
        r = await treq.get(live.base + "/jmap/session", headers=headers)
        assert r.code == 401, headers


@pytest_twisted.ensureDeferred
async def test_bearer_token_authenticates(live: LiveDaemon) -> None:
    """A bearer token created for a user opens that user's session."""
    await live.add_user("alice")
    token = await live.add_token("alice")
    r = await treq.get(live.base + "/jmap/session", headers=bearer(token))
    assert r.code == 200
    assert (await r.json())["username"] == "alice"


@pytest_twisted.ensureDeferred
async def test_blob_endpoints_say_not_supported(live: LiveDaemon) -> None:
    """Upload and download exist but answer 501 with a problem body once authenticated."""
    await live.add_user("alice")
    r = await treq.post(live.base + "/jmap/upload/x/", headers=basic("alice", "secret"))
    assert r.code == 501
    assert "not supported" in (await r.json())["detail"]


@pytest_twisted.ensureDeferred
async def test_echo_and_result_references(live: LiveDaemon) -> None:
    """API-1, API-7, API-12, API-14, API-15: Core/echo, in order, with a `*` result
    reference; the Response has methodResponses and sessionState, no createdIds."""
    await live.add_user("alice")
    body = {"using": [CORE], "methodCalls": [
        ["Core/echo", {"a": [{"b": [1, 2]}, {"b": [3]}]}, "c1"],
        ["Core/echo", {"#x": {"resultOf": "c1", "name": "Core/echo", "path": "/a/*/b"}}, "c2"],
        ["Core/echo", {"#x": {"resultOf": "c1", "name": "Other/x", "path": "/a"}}, "c3"],
    ]}
    r = await live.api(body, basic("alice", "secret"))
    assert r.code == 200
    assert r.headers.getRawHeaders("Content-Type") == ["application/json"]
    out = await r.json()
    assert out["methodResponses"][0] == ["Core/echo", {"a": [{"b": [1, 2]}, {"b": [3]}]}, "c1"]
    assert out["methodResponses"][1] == ["Core/echo", {"x": [1, 2, 3]}, "c2"]
    assert out["methodResponses"][2][0] == "error"
    assert out["methodResponses"][2][1]["type"] == "invalidResultReference"
    assert "createdIds" not in out


@pytest_twisted.ensureDeferred
async def test_created_ids_are_echoed(live: LiveDaemon) -> None:
    """API-13: createdIds given in the request come back in the response."""
    await live.add_user("alice")
    body = {"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]], "createdIds": {"k": "X1"}}
    out = await (await live.api(body, basic("alice", "secret"))).json()
    assert out["createdIds"] == {"k": "X1"}


@pytest_twisted.ensureDeferred
async def test_method_errors_do_not_stop_the_request(live: LiveDaemon) -> None:
    """API-9: an unknown method gives an error response and later calls still run."""
    await live.add_user("alice")
    body = {"using": [CORE], "methodCalls": [["Unknown/method", {}, "a"],
                                             ["Core/echo", {"x": 1}, "b"]]}
    out = await (await live.api(body, basic("alice", "secret"))).json()
    assert out["methodResponses"] == [["error", {"type": "unknownMethod"}, "a"],
                                      ["Core/echo", {"x": 1}, "b"]]


async def _problem(live: LiveDaemon, data: bytes, content_type: str = "application/json"
                   ) -> tuple[int, dict[str, object], list[str]]:
    r = await treq.post(live.base + "/jmap/api/", data=data,
                        headers={"Content-Type": content_type, **basic("alice", "secret")})
    return r.code, await r.json(), r.headers.getRawHeaders("Content-Type")


@pytest_twisted.ensureDeferred
async def test_request_level_errors(live: LiveDaemon) -> None:
    """API-8, API-6, API-4/C-API-1, C-API-2, C-API-3: each problem type, status 400,
    application/problem+json."""
    await live.add_user("alice")
    cases = [
        (b"The quick brown fox", "application/json", "notJSON"),
        (b'{"using":["' + CORE.encode() + b'"],"methodCalls":[]}', "text/plain", "notJSON"),
        (b'{"using":[],"using":[],"methodCalls":[]}', "application/json", "notJSON"),
        (b'{"methodCalls":[]}', "application/json", "notRequest"),
        (b'{"using":[],"methodCalls":[["Core/echo",{},"0"]]}', "application/json",
         "notRequest"),
        (b'{"using":["' + CORE.encode() + b'","https://example.com/apis/foobar"],'
         b'"methodCalls":[]}', "application/json", "unknownCapability"),
        (b'{"using":["' + CORE.encode() + b'"],"methodCalls":[["Core/echo",{}]]}',
         "application/json", "notRequest"),
    ]
    for data, ctype, kind in cases:
        status, body, header = await _problem(live, data, ctype)
        assert status == 400, (data, body)
        assert body["type"] == ERR + kind, (data, body)
        assert body["status"] == 400
        assert header == ["application/problem+json"]


@pytest_twisted.ensureDeferred
async def test_content_type_with_charset_is_accepted(live: LiveDaemon) -> None:
    """C-API-2: application/json with parameters is accepted."""
    await live.add_user("alice")
    data = b'{"using":["' + CORE.encode() + b'"],"methodCalls":[["Core/echo",{},"0"]]}'
    status, body, _ = await _problem(live, data, "application/json; charset=utf-8")
    assert status == 200 and body["methodResponses"] == [["Core/echo", {}, "0"]]


@pytest_twisted.ensureDeferred
async def test_too_many_calls_is_a_limit_problem(live: LiveDaemon) -> None:
    """API-21: more calls than maxCallsInRequest → limit / maxCallsInRequest."""
    await live.add_user("alice")
    calls = [["Core/echo", {}, str(i)] for i in range(live.config.jmap.max_calls_in_request + 1)]
    r = await live.api({"using": [CORE], "methodCalls": calls}, basic("alice", "secret"))
    body = await r.json()
    assert r.code == 400
    assert body["type"] == ERR + "limit" and body["limit"] == "maxCallsInRequest"


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_refused_before_buffering(live: LiveDaemon) -> None:
    """API-21: a body over maxSizeRequest → 400 limit / maxSizeRequest, by Content-Length."""
    await live.add_user("alice")
    size = live.config.jmap.max_size_request + 1
    r = await treq.post(live.base + "/jmap/api/", data=b" " * size,
                        headers={"Content-Type": "application/json", **basic("alice", "secret")})
    body = await r.json()
    assert r.code == 400
    assert body["type"] == ERR + "limit" and body["limit"] == "maxSizeRequest"


@pytest_twisted.ensureDeferred
async def test_get_on_api_is_method_not_allowed(live: LiveDaemon) -> None:
    """C-API-2: non-POST methods on apiUrl → 405 with Allow: POST."""
    r = await treq.get(live.base + "/jmap/api/")
    assert r.code == 405
    assert r.headers.getRawHeaders("Allow") == ["POST"]


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_json_404(live: LiveDaemon) -> None:
    """Unknown paths answer a problem-details 404, not an HTML page."""
    r = await treq.get(live.base + "/nothing/here")
    assert r.code == 404
    assert (await r.json())["status"] == 404


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_over_the_limit(live: LiveDaemon) -> None:
    """API-21: requests beyond maxConcurrentRequests (per user) → limit /
    maxConcurrentRequests; the slots free up when the slow requests finish."""
    from twisted.internet import defer

    await live.add_user("alice")
    gate: defer.Deferred[None] = defer.Deferred()

    async def slow(ctx: object, args: dict[str, object]) -> dict[str, object]:
        await gate
        return {}

    live.app.registry.register("Test/slow", CORE, slow)
    limit = live.config.jmap.max_concurrent_requests
    body = {"using": [CORE], "methodCalls": [["Test/slow", {}, "0"]]}
    pending = [defer.ensureDeferred(live.api(body, basic("alice", "secret")))
               for _ in range(limit)]
    # Probe with Core/echo until all slow requests hold their slots (bounded; no sleeps).
    echo = {"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]}
    for _ in range(500):
        r = await live.api(echo, basic("alice", "secret"))
        if r.code == 400:
            break
        await r.text()
    problem = await r.json()
    assert problem["type"] == ERR + "limit" and problem["limit"] == "maxConcurrentRequests"
    gate.callback(None)
    for d in pending:
        assert (await d).code == 200
    r = await live.api({"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]},
                       basic("alice", "secret"))
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_session_state_memo_follows_capability_changes(live: LiveDaemon) -> None:
    """SES-11: the memoized session state changes when a capability is added, and
    sessionState in API responses follows it."""
    await live.add_user("alice")
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    before = (await r.json())["state"]
    generation = live.app.registry.generation
    live.app.registry.add_capability("https://example.org/test-cap", {"x": 1})
    assert live.app.registry.generation == generation + 1
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    after = await r.json()
    assert "https://example.org/test-cap" in after["capabilities"]
    assert after["state"] != before
    r = await live.api({"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]},
                       basic("alice", "secret"))
    assert (await r.json())["sessionState"] == after["state"]
