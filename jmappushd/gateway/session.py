"""The upstream's JMAP Session, read and checked, and the session clients get from the gateway.

:func:`parse_session` turns the upstream's answer into an :class:`UpstreamSession` (URLs made
absolute against the session URL: Cyrus sends ``"apiUrl": "/jmap/"``); anything that is not a
usable Session is an :class:`~jmappushd.gateway.upstream.UpstreamUnavailable`, never a
traceback. :func:`merge_session` builds what the client sees: the upstream's capabilities,
accounts, ``primaryAccounts`` and ``username``, with ``apiUrl`` and ``eventSourceUrl``
pointing at the daemon and the daemon's own capabilities (WebSocket with push, VAPID) added.
Download and upload stay with the upstream, as absolute URLs: blobs can be large and the
daemon adds nothing to them, so proxying them would only cost memory and a hop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from jmappushd.gateway.upstream import UpstreamUnavailable
from jmappushd.jmap import ijson
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.registry import CORE_CAPABILITY

# The data types whose state a capability's methods expose (RFC 8621, RFC 8620 §7.2 types
# are "changed" keys); read with Foo/get ids:[] after a change event. Types of capabilities
# not listed here are not pushed (the gateway cannot read a state it does not know of).
TYPES_BY_CAPABILITY: Mapping[str, tuple[str, ...]] = {
    "urn:ietf:params:jmap:mail": ("Mailbox", "Email", "Thread"),
    "urn:ietf:params:jmap:submission": ("Identity", "EmailSubmission"),
    "urn:ietf:params:jmap:vacationresponse": ("VacationResponse",),
}

# Limits of the core capability the daemon enforces itself before forwarding.
_CLAMPED = ("maxSizeRequest", "maxConcurrentRequests", "maxCallsInRequest")


@dataclass(frozen=True)
class UpstreamSession:
    """What the gateway needs of one user's upstream Session object."""

    username: str
    state: str
    api_url: str
    event_source_url: str
    download_url: str
    upload_url: str
    capabilities: Mapping[str, Any]
    accounts: Mapping[str, Mapping[str, Any]]
    primary_accounts: Mapping[str, str]

    def account_types(self, account_id: str) -> tuple[str, ...]:
        """The data types whose states the gateway reads and pushes for ``account_id``."""
        account = self.accounts.get(account_id)
        if account is None:
            return ()
        caps = account.get("accountCapabilities")
        names = caps.keys() if isinstance(caps, Mapping) else ()
        types: list[str] = []
        for capability, found in TYPES_BY_CAPABILITY.items():
            if capability in names:
                types.extend(t for t in found if t not in types)
        return tuple(types)


def parse_session(body: bytes, session_url: str, upstream: str) -> UpstreamSession:
    """The upstream's Session from its answer; UpstreamUnavailable naming what is wrong."""
    try:
        value = ijson.loads(body)
    except RequestProblem as e:
        raise UpstreamUnavailable(f"{upstream} sent a session that is not JSON ({e.detail})"
                                  ) from None
    if not isinstance(value, dict):
        raise UpstreamUnavailable(f"{upstream} sent a session that is not an object")

    def text(name: str) -> str:
        found = value.get(name)
        if not isinstance(found, str) or not found:
            raise UpstreamUnavailable(f"{upstream} sent a session without {name}")
        return found

    def url(name: str) -> str:
        absolute = urljoin(session_url, text(name))
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise UpstreamUnavailable(f"{upstream} sent a session whose {name} is not http(s)")
        return absolute

    capabilities = value.get("capabilities")
    accounts = value.get("accounts")
    primary = value.get("primaryAccounts", {})
    if not isinstance(capabilities, dict) or CORE_CAPABILITY not in capabilities:
        raise UpstreamUnavailable(f"{upstream} sent a session without the core capability")
    if not isinstance(accounts, dict) or not all(
            isinstance(a, dict) for a in accounts.values()):
        raise UpstreamUnavailable(f"{upstream} sent a session without valid accounts")
    if not isinstance(primary, dict) or not all(
            isinstance(v, str) and v in accounts for v in primary.values()):
        raise UpstreamUnavailable(f"{upstream} sent a session with bad primaryAccounts")
    return UpstreamSession(
        username=text("username"),
        state=text("state"),
        api_url=url("apiUrl"),
        event_source_url=url("eventSourceUrl") if value.get("eventSourceUrl") else "",
        download_url=url("downloadUrl"),
        upload_url=url("uploadUrl"),
        capabilities=capabilities,
        accounts=accounts,
        primary_accounts=primary,
    )


def merge_session(upstream: UpstreamSession, local_capabilities: Mapping[str, Any],
                  local_core: Mapping[str, Any], api_url: str, event_source_url: str
                  ) -> dict[str, Any]:
    """The Session a gateway client gets (SES-11: ``state`` moves when either side's does).

    ``local_capabilities`` are the daemon's own (WebSocket, VAPID), added to the
    upstream's; ``local_core`` holds the daemon's core limits, which cap the upstream's
    where the daemon enforces them before forwarding.
    """
    capabilities: dict[str, Any] = dict(upstream.capabilities)
    core = dict(capabilities[CORE_CAPABILITY])
    for key in _CLAMPED:
        theirs, ours = core.get(key), local_core.get(key)
        if isinstance(ours, int) and (not isinstance(theirs, int) or ours < theirs):
            core[key] = ours
    capabilities[CORE_CAPABILITY] = core
    for uri, value in local_capabilities.items():
        if uri != CORE_CAPABILITY:
            capabilities[uri] = value
    session: dict[str, Any] = {
        "capabilities": capabilities,
        "accounts": dict(upstream.accounts),
        "primaryAccounts": dict(upstream.primary_accounts),
        "username": upstream.username,
        "apiUrl": api_url,
        "downloadUrl": upstream.download_url,
        "uploadUrl": upstream.upload_url,
        "eventSourceUrl": event_source_url,
    }
    digest = hashlib.sha256(ijson.dumps(session) + b"\0" + upstream.state.encode())
    session["state"] = digest.hexdigest()[:16]
    return session
