"""What ``benchmarks.attacks`` shares between its attacks: the users it creates, the
environment each attack gets, its outcome, the measuring helpers and the report.

    python -m benchmarks.attack_support CONFIG OUT   # create the users (before the daemon)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.attack_clients import api, echo_request
from benchmarks.common import PYTHON, ROOT, pause
from benchmarks.server import Daemon

PASSWORD = "attack-password-1"
TIMING_USERS = 12
MAIN_SECTIONS = {"auth": "cache-ttl = 0"}
LOW_FD_LIMIT = 256
LOW_FD_SECTIONS = {"auth": "cache-ttl = 0", "server": f"max-open-files = {LOW_FD_LIMIT}"}


@dataclass
class Users:
    """The store's users: bearer tokens for alice and bob, everyone's password."""

    tokens: dict[str, str]
    accounts: dict[str, str]

    def bearer(self, name: str) -> str:
        return f"Bearer {self.tokens[name]}"


@dataclass
class Env:
    """What every attack gets: the daemon, its users, a scratch directory."""

    daemon: Daemon
    users: Users
    workdir: Path
    low_fd: Callable[[], Daemon]


@dataclass
class Outcome:
    """One row of the table."""

    name: str
    sent: str
    observed: str
    requirement: str
    met: bool | None
    data: dict[str, Any] = field(default_factory=dict)


# -- set-up -------------------------------------------------------------------------

async def _create_users(reactor: Any, config_path: str, out: str) -> None:
    """Users with the production scrypt cost (the timing attacks measure it)."""
    from jmappushd.auth.passwords import hash_password, new_bearer_token, token_digest
    from jmappushd.config import load_config
    from jmappushd.daemon.service import prepare_state
    from jmappushd.store.backends import create_store

    config = load_config(config_path)
    prepare_state(config)
    store = create_store(config.storage, reactor)
    await store.open()
    tokens, accounts = {}, {}
    try:
        for name in ["alice", "bob", "legit", *(f"t{i}" for i in range(TIMING_USERS))]:
            user = await store.add_user(name, hash_password(PASSWORD), None)
            accounts[name] = user.primary_account_id
            token = new_bearer_token()
            await store.create_token(name, token_digest(token), "attacks")
            tokens[name] = token
    finally:
        await store.close()
    Path(out).write_text(json.dumps({"tokens": tokens, "accounts": accounts}))


def setup_users(daemon: Daemon) -> Users:
    out = daemon.workdir / "users.json"
    subprocess.run([PYTHON, "-m", "benchmarks.attack_support",
                    str(daemon.config_path), str(out)], cwd=ROOT, check=True, timeout=120)
    data = json.loads(out.read_text())
    return Users(data["tokens"], data["accounts"])


# -- measuring helpers --------------------------------------------------------------

def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def log_size(daemon: Daemon, settle: float = 0.5, deadline: float = 5.0) -> int:
    """The daemon log's size once it has stopped growing for ``settle`` seconds."""
    path, end = daemon.proc.log_path, time.monotonic() + deadline
    size = path.stat().st_size
    while time.monotonic() < end:
        pause(settle)
        now = path.stat().st_size
        if now == size:
            return now
        size = now
    return size


class Bystander:
    """Another user's Core/echo over HTTP, one after the other, while an attack runs."""

    def __init__(self, port: int, authorization: str, source: str = "127.0.0.9") -> None:
        self.port, self.authorization, self.source = port, authorization, source
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        body = echo_request([["Core/echo", {"ping": 1}, "0"]])
        while not self._stop.is_set():
            try:
                reply = api(self.port, body, self.authorization, self.source, timeout=30)
                if reply.status == 200:
                    self.latencies.append(reply.seconds)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            self._stop.wait(0.02)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {"requests": len(lat), "failures": self.failures,
                "median_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                "max_ms": round(max(lat) * 1000, 1) if lat else None}


def mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} B"


def counts(values: dict[str, int]) -> str:
    """``{"serverFail": 15}`` as ``15 serverFail``."""
    return ", ".join(f"{n} {name}" for name, n in values.items()) or "none"


def error_types(responses: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, args, _ in responses:
        if name == "error":
            out[args.get("type", "?")] = out.get(args.get("type", "?"), 0) + 1
    return out


# -- report -------------------------------------------------------------------------

def rst_table(outcomes: list[Outcome], results: dict[str, Any]) -> str:
    """A list-table (cells wrap in any width), titled with when, what and where."""
    m = results["machine"]
    title = (f"Attacks and their measured results ({results['when'][:10]}, commit "
             f"{results['commit']}, {m['cores']} cores, Python {m['python']})")
    lines = [f".. list-table:: {title}",
             "   :header-rows: 1", "   :widths: 14 24 36 18 8", "",
             "   * - Attack", "     - Sent", "     - Measured", "     - Requirement",
             "     - Met"]
    for o in outcomes:
        met = "yes" if o.met else ("no" if o.met is not None else "n/a")
        lines += [f"   * - {o.name}", f"     - {o.sent}", f"     - {o.observed}",
                  f"     - {o.requirement}", f"     - {met}"]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=ROOT, capture_output=True, text=True, check=False).stdout
    return result.stdout.strip() + ("+dirty" if dirty.strip() else "")


def main() -> None:
    from twisted.internet import defer, task

    config_path, out = sys.argv[1:3]
    task.react(lambda reactor: defer.ensureDeferred(_create_users(reactor, config_path, out)))


if __name__ == "__main__":
    main()
