"""What every benchmark shares in one run: sizes, time bounds, the state directory, users.

The state directory (SQLite database and admin token) is prepared once per run;
each benchmark then starts its own daemon on it with its own config, so one
benchmark's heap never shows in another's numbers.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, free_port
from benchmarks.server import BIN, bench_config

FULL_SIZES: dict[str, Any] = {
    "capacity": 9_600,  # per kind: 19,200 connections in all
    "fanout": [100, 1_000, 10_000],
    "fanout_rounds": {100: 40, 1_000: 25, 10_000: 12},
    "throughput_accounts": 10_000,
    "throughput_rounds": 3,  # per burst: 30,000 changes, 1.5-4 s
    "throughput_pairs": 10,  # per batch size
    "throughput_batches": [1000, 100, 10],
    "webpush_messages": 3_000,
    "webpush_deliveries": 3_000,
    "echo_seconds": 5.0,
    "gateway_seconds": 5.0,  # per request mode, in gateway_slices slices taken in turns
    "gateway_slices": 10,
    "gateway_change_rounds": 100,  # cyrus-notify deliveries
    "gateway_poll_rounds": 20,  # poll deliveries, and cyrus-notify at the default debounce
}
SMOKE_SIZES: dict[str, Any] = {
    "capacity": 20,
    "fanout": [10, 40],
    "fanout_rounds": {10: 3, 40: 3},
    "throughput_accounts": 40,
    "throughput_rounds": 2,
    "throughput_pairs": 1,
    "throughput_batches": [10],
    "webpush_messages": 30,
    "webpush_deliveries": 30,
    "echo_seconds": 0.3,
    "gateway_seconds": 0.3,
    "gateway_slices": 1,
    "gateway_change_rounds": 3,
    "gateway_poll_rounds": 2,
}
ECHO_USER, ECHO_PASSWORD = "echo", "bench-echo-password"
FAN_USER = "fan"


@dataclass
class Context:
    workdir: Path
    smoke: bool = False
    sizes: dict[str, Any] = field(default_factory=dict)
    client_procs: int = 2
    settle: float = 2.0
    idle_window: float = 10.0
    connect_timeout: float = 240.0
    max_seconds: float = 900.0
    profile: bool = False
    _users: list[dict[str, str]] = field(default_factory=list)
    fan_token: str = ""
    fan_account: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sizes:
            self.sizes = dict(SMOKE_SIZES if self.smoke else FULL_SIZES)
        if self.smoke:
            self.client_procs, self.settle, self.idle_window = 1, 0.2, 0.5
            self.connect_timeout, self.max_seconds = 30.0, 60.0
        self.state_dir = self.workdir / "state"

    def prepare(self, user_count: int) -> None:
        """Create the state directory, ``user_count`` token users, and the named users."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "setup.ini"
        config.write_text(bench_config(self.state_dir, free_port(), free_port()))
        out = self.workdir / "users.json"
        subprocess.run([PYTHON, "-m", "benchmarks.setup_users", "--config", str(config),
                        "--count", str(user_count), "--out", str(out)],
                       check=True, cwd=ROOT, timeout=600)
        self._users = json.loads(out.read_text())
        self._ctl(config, "user", "add", ECHO_USER, "--password-stdin", stdin=ECHO_PASSWORD)
        added = self._ctl(config, "user", "add", FAN_USER, "--password-stdin",
                          stdin=ECHO_PASSWORD)
        self.fan_account = added.split()[-1]  # "added user fan with account <id>"
        self.fan_token = self._ctl(config, "token", "create", FAN_USER).strip()

    def _ctl(self, config: Path, *args: str, stdin: str = "") -> str:
        """``jmappushctl`` as an operator would run it (production scrypt cost)."""
        result = subprocess.run([str(BIN / "jmappushctl"), "-c", str(config), *args],
                                input=stdin + "\n", capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"jmappushctl {args}: {result.stderr}")
        return result.stdout

    def users(self, n: int) -> list[dict[str, str]]:
        if n > len(self._users):
            raise RuntimeError(f"{n} users needed, {len(self._users)} prepared")
        return self._users[:n]

    @staticmethod
    def auth_lines(users: list[dict[str, str]]) -> list[str]:
        """The Authorization value each user's connections send."""
        return [f"Bearer {u['token']}" for u in users]

    def auth_file(self, users: list[dict[str, str]], name: str = "auth") -> str:
        path = self.workdir / f"{name}-{len(users)}.txt"
        path.write_text("".join(f"{line}\n" for line in self.auth_lines(users)))
        return str(path)

    def fan_auth_file(self) -> str:
        path = self.workdir / "fan-auth.txt"
        path.write_text(f"Bearer {self.fan_token}\n")
        return str(path)

    def note(self, text: str) -> None:
        self.notes.append(text)
