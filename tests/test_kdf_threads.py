"""Password KDFs run on a thread pool of their own, sized by [auth] max-concurrent-kdf."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest_twisted
import treq

from jmappushd.daemon.service import kdf_thread_pool
from tests.support import basic, make_config, start_daemon, stop_daemon


def test_pool_size_follows_the_limit(tmp_path: Path) -> None:
    assert kdf_thread_pool(make_config(tmp_path, sections={"auth": "max-concurrent-kdf = 12"})
                           ).max == 12  # beyond the reactor pool's 10
    assert kdf_thread_pool(make_config(tmp_path)).max == (os.cpu_count() or 1)


@pytest_twisted.ensureDeferred
async def test_logins_hash_on_the_kdf_threads_not_the_reactor_pool(tmp_path: Path) -> None:
    daemon = await start_daemon(make_config(tmp_path))
    try:
        await daemon.add_user("alice", "right")
        seen: set[str] = set()
        kdf = daemon.app.auth.kdf
        original = kdf._verify

        def spy(password: str, encoded: str) -> bool:
            seen.add(threading.current_thread().name)
            return original(password, encoded)

        kdf._verify = spy
        response = await treq.get(daemon.base + "/jmap/session", headers=basic("alice", "right"),
                                  persistent=False)
        assert response.code == 200
        await response.content()
        assert seen and all("jmappushd-kdf" in name for name in seen), seen
    finally:
        await stop_daemon(daemon)
    assert not any("jmappushd-kdf" in t.name for t in threading.enumerate())
