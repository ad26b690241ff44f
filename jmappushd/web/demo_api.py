"""The demo page's two endpoints: log in (get a token), publish a change to oneself.

Both exist only when ``[server] demo-page`` is on. ``POST /demo/login`` takes the
user's password (Basic) and answers a short-lived bearer token for the page's
``EventSource`` and ``WebSocket`` (:mod:`jmappushd.web.demo_tokens`).
``POST /demo/publish`` publishes a made-up new state of one type in the caller's
own primary account, through the hub exactly as the admin ``/publish`` does, so the
page can show a change arriving. Both are per-user rate limited. Neither answers
CORS: the page is served by the daemon itself, and other origins must not use them.
Both want ``Content-Type: application/json``, which a cross-site HTML form cannot
send, so a page elsewhere cannot ride on HTTP credentials the browser has cached.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from jmappushd.auth.authenticator import PASSWORD_CREDENTIAL, Principal
from jmappushd.context import App
from jmappushd.jmap.ijson import loads
from jmappushd.jmap.problems import RequestProblem
from jmappushd.web.admin import InvalidPublish, parse_state_change
from jmappushd.web.api import is_json_content_type
from jmappushd.web.base import AppResource
from jmappushd.web.demo_tokens import DemoTokens
from jmappushd.web.ratelimit import WindowLimit
from jmappushd.web.responses import serve_async, write_json, write_problem

LOGINS_PER_MINUTE = 10
PUBLISHES_PER_MINUTE = 30
MAX_BODY = 1024  # bytes of a publish request's JSON
DEFAULT_TYPE = "Email"


def is_json_request(request: Request) -> bool:
    """True for a JSON body; otherwise answer 415 (so no HTML form can post here)."""
    if is_json_content_type(request.getHeader(b"Content-Type")):
        return True
    write_problem(request, 415, "the Content-Type must be application/json")
    return False


def refuse_rate(request: Request, retry_after: int, what: str) -> None:
    request.setHeader(b"Retry-After", str(retry_after).encode("ascii"))
    write_problem(request, 429, f"too many {what}; retry in {retry_after} s")


class DemoLoginResource(AppResource):
    """``POST /demo/login`` (Basic credentials, a JSON body) → ``{"accessToken", ...}``."""

    def __init__(self, app: App, clock: IReactorTime, tokens: DemoTokens) -> None:
        super().__init__(app)
        self._tokens = tokens
        self._limit = WindowLimit(clock, LOGINS_PER_MINUTE, 60)

    def render_POST(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log)

    async def _handle(self, request: Request) -> None:
        if not is_json_request(request):
            return
        principal = await self.authenticated(request, "demo")
        if principal is None:
            return
        if not principal.credential_id.startswith(PASSWORD_CREDENTIAL):
            write_problem(request, 403, "log in with a user name and password")
            return
        wait = self._limit.check(principal.user_id)
        if wait is not None:
            refuse_rate(request, wait, "logins")
            return
        issued = await self._tokens.issue(principal)
        request.setHeader(b"Cache-Control", b"no-store")
        write_json(request, 200, {"accessToken": issued.token, "expiresIn": issued.expires_in,
                                  "username": principal.username})


class DemoPublishResource(AppResource):
    """``POST /demo/publish`` ``{"type": "Email"}`` → 202 with the published state."""

    def __init__(self, app: App, clock: IReactorTime) -> None:
        super().__init__(app)
        self._limit = WindowLimit(clock, PUBLISHES_PER_MINUTE, 60)

    def render_POST(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log,
                           503, "the change could not be recorded; retry")

    async def _handle(self, request: Request) -> None:
        if not is_json_request(request):
            return
        principal = await self.authenticated(request, "demo")
        if principal is None:
            return
        try:
            changed = self._change(principal, request)
        except (InvalidPublish, RequestProblem) as exc:
            detail = exc.detail if isinstance(exc, RequestProblem) else str(exc)
            write_problem(request, 400, detail)
            return
        wait = self._limit.check(principal.user_id)
        if wait is not None:
            refuse_rate(request, wait, "publishes")
            return
        app = self._app
        await app.hub.publish(changed)
        app.metrics.publishes.inc()
        app.metrics.state_changes.inc(1)
        ((account_id, states),) = changed.items()
        ((type_name, state),) = states.items()
        write_json(request, 202, {"accountId": account_id, "type": type_name, "state": state})

    def _change(self, principal: Principal, request: Request) -> dict[str, dict[str, str]]:
        """The StateChange to publish, validated as the admin endpoint validates one."""
        assert request.content is not None
        data = request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise InvalidPublish(f"the body must be at most {MAX_BODY} bytes")
        body = loads(data) if data.strip() else {}
        if not isinstance(body, dict):
            raise InvalidPublish('the body must be a JSON object like {"type": "Email"}')
        type_name = body.get("type", DEFAULT_TYPE)
        if not isinstance(type_name, str):
            raise InvalidPublish('"type" must be a type name such as "Email"')
        state = f"demo-{secrets.token_hex(4)}"
        return parse_state_change({"@type": "StateChange",
                                   "changed": {principal.primary_account_id: {type_name: state}}})
