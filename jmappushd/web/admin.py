"""The admin listener: ``POST /publish``, ``GET /health``, ``GET /metrics``.

Publishing is how the mail store tells the daemon that account A's Email state
is now s42. The change is durable before 202 is sent (DESIGN: nothing lost).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.context import App
from jmappushd.jmap.ijson import has_forbidden_code_points, loads
from jmappushd.jmap.problems import RequestProblem
from jmappushd.store.records import StoreClosed, StoreUnavailable
from jmappushd.versions import daemon_version
from jmappushd.web.base import AppResource
from jmappushd.web.responses import serve_async, write_body, write_json, write_problem

ADMIN_MAX_BODY = 1_000_000
_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # fullmatch: "$" would allow a trailing newline
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]{0,127}")
MAX_STATE_LENGTH = 1024


class InvalidPublish(ValueError):
    """A publish body that is not a usable StateChange."""


def parse_state_change(value: Any) -> dict[str, dict[str, str]]:
    """Validate a StateChange object and return its ``changed`` map."""
    if not isinstance(value, dict):
        raise InvalidPublish("the body must be a JSON object")
    if value.get("@type") != "StateChange":
        raise InvalidPublish('"@type" must be "StateChange"')
    changed = value.get("changed")
    if not isinstance(changed, dict) or not changed:
        raise InvalidPublish('"changed" must be a non-empty object of account ids')
    for account_id, type_states in changed.items():
        if not _ID.fullmatch(account_id):
            raise InvalidPublish(f"invalid account id {account_id!r}")
        if not isinstance(type_states, dict) or not type_states:
            raise InvalidPublish(f"changed[{account_id!r}] must be a non-empty object")
        for type_name, state in type_states.items():
            if not _TYPE.fullmatch(type_name):
                raise InvalidPublish(f"invalid type name {type_name!r}")
            if not isinstance(state, str) or not state or len(state) > MAX_STATE_LENGTH:
                raise InvalidPublish(
                    f"state of {account_id}/{type_name} must be a string of 1 to "
                    f"{MAX_STATE_LENGTH} characters"
                )
    # The parser built these objects for this request alone: nothing else holds them.
    checked: dict[str, dict[str, str]] = changed
    return checked


def read_state_change(body: bytes) -> dict[str, dict[str, str]]:
    """``parse_state_change(loads(body))``, the same value or the same error, faster.

    The strict path calls back into Python for every object and every state (a
    thousand calls each for a publish of a thousand accounts, study 12).
    :func:`_quick_state_change` checks the common body in bulk; whatever it is not
    sure of, it leaves to the strict path, whose answer is then the one given.
    """
    changed = _quick_state_change(body)
    if changed is None:
        changed = parse_state_change(loads(body))
    return changed


# _ID and _TYPE over names joined by newlines (which neither admits).
_IDS = re.compile(rf"{_ID.pattern}(?:\n{_ID.pattern})*")
_TYPES = re.compile(rf"{_TYPE.pattern}(?:\n{_TYPE.pattern})*")
_STR = {str}
_DICT = {dict}


def _quick_state_change(body: bytes) -> dict[str, dict[str, str]] | None:
    """The ``changed`` map of a plain StateChange body, or None to take the strict path.

    Plain: no backslash, exactly ``@type`` and ``changed``, every account a non-empty
    object of string states. The C decoder builds it with no Python hook; the ids,
    type names and states are checked as whole lists (one regular expression over the
    joined names). Duplicate names, which the C decoder would silently drop, are
    found by counting: without escapes, every colon of the text is a member's or a
    character of a string, so the colons minus those in the decoded strings equal the
    members decoded exactly when no member was lost. A nesting too deep for the
    decoder, or one within its limit but beyond :data:`MAX_NESTING`, never has this
    shape and goes to the strict path, which refuses it by name.
    """
    if b"\\" in body:
        return None
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError
        return None
    if type(value) is not dict or len(value) != 2 or value.get("@type") != "StateChange":
        return None
    changed = value.get("changed")
    if type(changed) is not dict or not changed:
        return None
    inner = list(changed.values())
    if set(map(type, inner)) != _DICT or not all(inner):
        return None
    names = list(chain.from_iterable(inner))
    states = list(chain.from_iterable(map(dict.values, inner)))
    if (set(map(type, states)) != _STR or not all(states)
            or max(map(len, states)) > MAX_STATE_LENGTH):
        return None
    ids, types, text = "\n".join(changed), "\n".join(names), "".join(states)
    # A name holding the separator would pass as two: the counts rule that out.
    if (ids.count("\n") != len(changed) - 1 or types.count("\n") != len(names) - 1
            or not _IDS.fullmatch(ids) or not _TYPES.fullmatch(types)
            or has_forbidden_code_points(text)):
        return None
    members = 2 + len(changed) + len(names)
    if body.count(b":") - types.count(":") - text.count(":") != members:
        return None
    checked: dict[str, dict[str, str]] = changed
    return checked


def require_admin(request: Request, token: str) -> bool:
    """True for the admin bearer token; otherwise answer 401 and return False."""
    if check_admin_token(request, token):
        return True
    request.setHeader(b"WWW-Authenticate", b'Bearer realm="jmappushd-admin"')
    write_problem(request, 401, "the admin bearer token is required")
    return False


def check_admin_token(request: Request, token: str) -> bool:
    header = request.getHeader(b"Authorization") or b""
    scheme, _, presented = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return False
    return hmac.compare_digest(presented.strip(), token.encode("utf-8"))


class PublishResource(AppResource):
    """``POST /publish`` with the admin bearer token and a StateChange body → 202."""

    def render_POST(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log,
                           503, "the change could not be recorded; retry")

    async def _handle(self, request: Request) -> None:
        app = self._app
        if not require_admin(request, app.admin_token):
            return
        assert request.content is not None
        try:
            changed = read_state_change(request.content.read())
        except RequestProblem as problem:
            write_problem(request, 400, f"malformed JSON: {problem.detail}")
            return
        except InvalidPublish as exc:
            write_problem(request, 400, str(exc))
            return
        change = await app.hub.publish(changed)
        app.metrics.publishes.inc()
        app.metrics.state_changes.inc(sum(len(t) for t in changed.values()))
        # No resumption token: those are sealed per user (core/position.py).
        write_json(request, 202, {"seq": change.seq})


class KeyRotation(Protocol):
    """What the admin listener needs of Web Push (its runtime provides it)."""

    async def wait_started(self) -> None: ...

    async def rotate_key(self) -> list[str]: ...

    def application_server_key(self) -> str: ...


class RotateVapidKeyResource(AppResource):
    """``POST /vapid/rotate``: a new VAPID key (SES-16, VAPID-13).

    The session state changes, and subscriptions tied to the old key are destroyed
    at once or when ``vapid-rotation-transition`` ends (C-V-2); clients re-subscribe
    with the new key.
    """

    def __init__(self, app: App, push: KeyRotation | None) -> None:
        super().__init__(app)
        self._push = push

    def render_POST(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log)

    async def _handle(self, request: Request) -> None:
        if not require_admin(request, self._app.admin_token):
            return
        runtime = self._push
        if runtime is None:
            write_problem(request, 503, "push delivery is not running")
            return
        await runtime.wait_started()
        destroyed = await runtime.rotate_key()
        self.log.info("VAPID key rotated; {count} subscriptions destroyed", count=len(destroyed))
        write_json(request, 200, {
            "applicationServerKey": runtime.application_server_key(),
            "destroyed": len(destroyed),
        })


class HealthResource(AppResource):
    """``GET /health``: 200 when the store answers, 503 otherwise; with the daemon's version,
    so a monitor sees which release answers, and in cluster mode this node's name and
    push buckets (``cluster``)."""

    def __init__(self, app: App, cluster: Callable[[], Mapping[str, object]] | None = None
                 ) -> None:
        super().__init__(app)
        self._cluster = cluster

    def render_GET(self, request: Request) -> Any:
        return serve_async(request, self._check(request), self.log, 503, "store unavailable")

    async def _check(self, request: Request) -> None:
        try:
            _, seq = await self._app.store.position()
        except StoreClosed:  # the core still waits for the database (it logs why)
            write_problem(request, 503, "not ready: the store is not open yet")
            return
        except StoreUnavailable as exc:
            write_problem(request, 503, f"store unavailable: {exc}")
            return
        body: dict[str, object] = {
            "status": "ok", "version": daemon_version(), "seq": seq,
            "listeners": self._app.hub.listener_count,
        }
        if self._cluster is not None:
            body["cluster"] = dict(self._cluster())
        write_json(request, 200, body)


class MetricsResource(AppResource):
    """``GET /metrics``: Prometheus text format."""

    def render_GET(self, request: Request) -> Any:
        write_body(request, 200, self._app.metrics.render(),
                   b"text/plain; version=0.0.4; charset=utf-8")
        return NOT_DONE_YET


def build_admin_root(app: App, push: KeyRotation | None,
                     cluster: Callable[[], Mapping[str, object]] | None = None) -> Resource:
    """The admin tree; ``push`` is None when the daemon runs without Web Push, ``cluster``
    what /health says of the node in cluster mode."""
    root = Resource()
    root.putChild(b"publish", PublishResource(app))
    root.putChild(b"health", HealthResource(app, cluster))
    root.putChild(b"metrics", MetricsResource(app))
    vapid = Resource()
    vapid.putChild(b"rotate", RotateVapidKeyResource(app, push))
    root.putChild(b"vapid", vapid)
    return root
