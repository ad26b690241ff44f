"""serve_async: a store outage is a 503 with Retry-After and one log line, not a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.logger import Logger
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.store.records import StoreClosed, StoreUnavailable
from jmappushd.web.responses import serve_async
from tests.support import log_into


def run(error: Exception) -> tuple[int, dict[str, str], Any, list[dict[str, Any]]]:
    channel = DummyChannel()
    request = Request(channel)
    request.method, request.path, request.clientproto = b"GET", b"/jmap/session", b"HTTP/1.1"

    async def work() -> None:
        raise error

    events: list[dict[str, Any]] = []
    serve_async(request, work(), Logger(observer=log_into(events)))
    head, _, body = channel.transport.written.getvalue().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body), events


@pytest.mark.parametrize("error", [StoreUnavailable("connection refused"),
                                   StoreClosed("the store is not open")])
def test_store_outage_is_503_with_retry_after(error: Exception) -> None:
    status, headers, body, events = run(error)
    assert status == 503 and headers["Retry-After"] == "5"
    assert body["status"] == 503 and body["retryAfter"] == 5
    assert len(events) == 1 and "log_failure" not in events[0]  # one line, no traceback


def test_a_bug_is_still_500_with_its_traceback() -> None:
    status, _, _, events = run(KeyError("bug"))
    assert status == 500
    assert any("log_failure" in e for e in events)
