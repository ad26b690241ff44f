"""HTTP authentication for every JMAP endpoint: Basic, Bearer, and ``access_token``.

Credentials are turned into twisted.cred credentials here and checked by the
:class:`~jmappushd.auth.authenticator.Authenticator` on behalf of the request's client
address (``App.clients``: the peer, or the client behind a trusted proxy); a failure
answers 401 with a ``WWW-Authenticate`` challenge for both schemes (SES-1, RFC 9110
§11.6.1). A login the daemon would not check now answers 429 (that address failed too
often) or 503 (every KDF slot and the queue are full), both with ``Retry-After``
(RFC 9110 §10.2.3, RFC 6585 §4) and a problem-details body. Every endpoint (session, API,
EventSource, the WebSocket handshake before its upgrade) comes through here.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Sequence

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.web.server import Request

from jmappushd.auth.authenticator import BearerToken, Principal
from jmappushd.auth.refusals import LoginRefused
from jmappushd.context import App
from jmappushd.web.responses import close_connection_after, write_problem, write_retry_later


class MalformedCredentials(ValueError):
    """The Authorization header could not be understood."""


def credentials_from_request(request: Request, allow_query_token: bool) -> ICredentials | None:
    """Extract credentials; None when the client sent none at all."""
    header = request.getHeader(b"Authorization")
    if header is not None:
        return parse_authorization(header)
    if allow_query_token:
        values = request.args.get(b"access_token")
        if values:
            return BearerToken(values[0].decode("utf-8", "replace"))
    return None


def parse_authorization(header: bytes | str) -> ICredentials:
    """Parse ``Basic <b64>`` or ``Bearer <token>``; raise MalformedCredentials otherwise."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        raise MalformedCredentials("empty credentials")
    scheme = scheme.lower()
    if scheme == "bearer":
        return BearerToken(value)
    if scheme == "basic":
        try:
            decoded = b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise MalformedCredentials("Basic credentials are not base64 UTF-8") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise MalformedCredentials("Basic credentials lack a colon")
        return UsernamePassword(username.encode("utf-8"), password.encode("utf-8"))
    raise MalformedCredentials(f"unsupported authorization scheme {scheme!r}")


def challenge_headers(realm: str) -> list[bytes]:
    return [
        f'Basic realm="{realm}", charset="UTF-8"'.encode(),
        f'Bearer realm="{realm}"'.encode(),
    ]


def write_unauthorized(request: Request, realm: str, detail: str,
                       challenges: Sequence[bytes] = (), status: int = 401) -> None:
    """401 with our challenges, or (gateway mode) the upstream's status and challenges."""
    request.responseHeaders.setRawHeaders(
        b"WWW-Authenticate", list(challenges) or challenge_headers(realm))
    write_problem(request, status, detail)


async def authenticate(
    app: App, request: Request, allow_query_token: bool = False
) -> Principal | None:
    """Return the Principal, or answer 401, 429 or 503 and return None."""
    realm = app.config.auth.realm
    try:
        credentials = credentials_from_request(request, allow_query_token)
    except MalformedCredentials as exc:
        write_unauthorized(request, realm, str(exc))
        return None
    if credentials is None:
        write_unauthorized(request, realm, "authentication required")
        return None
    try:
        return await app.auth.login(credentials, app.clients.of(request))
    except UnauthorizedLogin as failed:
        # Gateway mode: the upstream's own 401/403 and WWW-Authenticate reach the client.
        challenges = getattr(failed, "challenges", ())
        write_unauthorized(request, realm, "invalid credentials", challenges,
                           getattr(failed, "status", 401))
    except LoginRefused as refused:
        app.metrics.logins_refused.labels(refused.reason).inc()
        if refused.status == 429:
            # A throttled address pays for its next attempt with a new connection: a
            # kept-alive flood of refusals would otherwise cost the reactor the most.
            close_connection_after(request)
        write_retry_later(request, refused.status, refused.detail, refused.retry_after)
    return None
