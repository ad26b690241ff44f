"""Building the JMAP Session object (RFC 8620 §2) for one principal."""

from __future__ import annotations

import hashlib
from typing import Any

from jmappushd.auth.authenticator import Principal
from jmappushd.config import Config
from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.registry import CORE_CAPABILITY, MethodRegistry

SESSION_PATH = "/jmap/session"
API_PATH = "/jmap/api/"
EVENTSOURCE_PATH = "/jmap/eventsource/"
UPLOAD_PATH = "/jmap/upload/"
DOWNLOAD_PATH = "/jmap/download/"
WEBSOCKET_PATH = "/jmap/ws"


class SessionURLs:
    """Every URL the session advertises, derived once from ``public-url``."""

    def __init__(self, public_url: str) -> None:
        base = public_url.rstrip("/")
        self.base = base
        self.session = base + SESSION_PATH
        self.api = base + API_PATH
        self.download = base + DOWNLOAD_PATH + "{accountId}/{blobId}/{name}?type={type}"
        self.upload = base + UPLOAD_PATH + "{accountId}/"
        self.event_source = (
            base + EVENTSOURCE_PATH + "?types={types}&closeafter={closeafter}&ping={ping}"
        )
        if base.startswith("https://"):
            self.websocket = "wss://" + base[len("https://") :] + WEBSOCKET_PATH
        else:
            self.websocket = "ws://" + base[len("http://") :] + WEBSOCKET_PATH


def core_capability(config: Config) -> dict[str, Any]:
    """The ``urn:ietf:params:jmap:core`` value (SES-6; C-SES-2: no collations)."""
    limits = config.jmap
    return {
        "maxSizeUpload": 0,
        "maxConcurrentUpload": 0,
        "maxSizeRequest": limits.max_size_request,
        "maxConcurrentRequests": limits.max_concurrent_requests,
        "maxCallsInRequest": limits.max_calls_in_request,
        "maxObjectsInGet": limits.max_objects_in_get,
        "maxObjectsInSet": limits.max_objects_in_set,
        "collationAlgorithms": [],
    }


def build_session(
    config: Config, registry: MethodRegistry, urls: SessionURLs, principal: Principal
) -> dict[str, Any]:
    """The Session object, with ``state`` a digest of everything else (SES-11)."""
    capabilities = {CORE_CAPABILITY: core_capability(config)}
    for uri, value in sorted(registry.session_capabilities().items()):
        if uri != CORE_CAPABILITY:
            capabilities[uri] = value
    accounts = {
        account.id: {
            "name": account.name,
            "isPersonal": account.is_personal,
            "isReadOnly": False,
            "accountCapabilities": {},
        }
        for account in principal.accounts
    }
    session: dict[str, Any] = {
        "capabilities": capabilities,
        "accounts": accounts,
        "primaryAccounts": {},
        "username": principal.username,
        "apiUrl": urls.api,
        "downloadUrl": urls.download,
        "uploadUrl": urls.upload,
        "eventSourceUrl": urls.event_source,
    }
    session["state"] = hashlib.sha256(dumps(session)).hexdigest()[:16]
    return session
