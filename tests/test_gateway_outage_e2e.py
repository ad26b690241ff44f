"""An upstream that is down when the gateway starts: not fatal, answered clearly, logged once.

The daemon starts in front of a stopped Cyrus and says "jmappushd ready"; the session and
the API answer 503 with problem details naming the upstream (never a hang, a 500 or a
traceback); the outage is one log line however many requests meet it. Once Cyrus runs,
the same requests succeed and the recovery is one log line too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

from tests.cyrus_server import CyrusServer
from tests.gateway_support import MAIL, api, cyrus_with_users, gateway, get_json
from tests.support import log_into

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from cyrus_with_users()


def lines_with(events: list[Any], text: str) -> list[str]:
    return [line for line in map(formatEvent, events) if text in line]


@pytest_twisted.ensureDeferred
async def test_an_unreachable_upstream_at_start_is_not_fatal(cyrus: CyrusServer, tmp_path: Path
                                                             ) -> None:
    """Started with Cyrus stopped: ready, 503 problem details naming the upstream on the
    session and the API, one outage line; after Cyrus starts: 200s and one recovery line."""
    events: list[Any] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    await threads.deferToThread(cyrus.stop)
    try:
        async with gateway(cyrus, tmp_path) as d:
            assert lines_with(events, "jmappushd ready")
            for _ in range(3):
                code, headers, problem = await get_json(d.base + "/jmap/session", "alice",
                                                        "alice-pw")
                assert code == 503, problem
                assert headers.getRawHeaders("content-type") == [PROBLEM]
                assert headers.getRawHeaders("retry-after")
                assert cyrus.base in problem["detail"], problem
                assert problem["status"] == 503
                code, problem = await api(d, "alice", [["Mailbox/get", {
                    "accountId": "alice", "ids": None}, "m"]])
                assert code == 503, problem
                assert cyrus.base in problem["detail"], problem
            outage = lines_with(events, "is unavailable")
            assert len(outage) == 1, outage
            assert cyrus.base in outage[0]

            await threads.deferToThread(cyrus.start)
            code, _, session = await get_json(d.base + "/jmap/session", "alice", "alice-pw")
            assert code == 200, session
            assert session["primaryAccounts"][MAIL] == "alice"
            code, answer = await api(d, "alice", [["Mailbox/get", {
                "accountId": "alice", "ids": None}, "m"]])
            assert code == 200, answer
            assert answer["methodResponses"][0][0] == "Mailbox/get"
            code, _, _ = await get_json(d.base + "/jmap/session", "bob", "bob-pw")
            assert code == 200
            recovered = lines_with(events, "answers again")
            assert len(recovered) == 1, recovered
            assert len(lines_with(events, "is unavailable")) == 1
        assert not [e for e in events if e.get("log_failure") is not None], \
            [formatEvent(e) for e in events if e.get("log_failure") is not None]
    finally:
        globalLogPublisher.removeObserver(observer)
        if cyrus.master_pid() is None:
            await threads.deferToThread(cyrus.start)
