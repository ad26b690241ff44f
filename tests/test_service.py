"""The service owns its timers: after stopService none of ours is left on the reactor."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
import treq
from twisted.internet.base import DelayedCall

from tests.support import basic, make_config, start_daemon, stop_daemon


def _ours() -> list[str]:
    from twisted.internet import reactor

    found = []
    for call in reactor.getDelayedCalls():
        assert isinstance(call, DelayedCall)
        func = call.func
        module = getattr(func, "__module__", "") or ""
        owner = getattr(getattr(func, "__self__", None), "__class__", None)
        if owner is not None:
            module = owner.__module__
        if module.startswith("jmappushd"):
            found.append(f"{module}:{func!r}")
    return found


@pytest_twisted.ensureDeferred
async def test_no_timer_of_ours_survives_stop(tmp_path: Path) -> None:
    """Start the whole daemon, open an EventSource stream with pings, publish, stop:
    the reactor holds no delayed call created by jmappushd any more."""
    daemon = await start_daemon(make_config(tmp_path))
    account = await daemon.add_user("alice")
    response = await treq.get(
        daemon.base + "/jmap/eventsource/?types=*&closeafter=no&ping=30",
        headers=basic("alice", "secret"), unbuffered=True)
    assert response.code == 200
    await daemon.publish({account: {"Email": "s1"}})
    assert _ours(), "the stream's ping timer and the auth watcher should be running"
    await stop_daemon(daemon)
    assert _ours() == []
