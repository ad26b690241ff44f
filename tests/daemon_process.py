"""Run the real daemon (``twistd -n jmappushd``) and ``jmappushctl`` as subprocesses.

Used by end-to-end tests: a temporary config on free 127.0.0.1 ports; readiness is
the daemon's own "jmappushd ready" log line, read from its stdout by a thread (an
event, not a sleep).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import config_text, free_port

BIN = Path(sys.executable).parent
# The checkout these tests belong to: the subprocesses must run its code, not whatever
# checkout the virtualenv's editable install points at.
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class DaemonProcess:
    """One twistd process with its config; ``start``/``stop``/``kill`` may be repeated."""

    tmp_path: Path
    extra: str = ""
    sections: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        text = config_text(self.tmp_path / "state", self.port, self.admin_port, self.extra)
        for name, body in self.sections.items():
            text += f"\n[{name}]\n{body}\n"
        self.config_path = self.tmp_path / "jmappushd.ini"
        self.config_path.write_text(text)
        self.log_path = self.tmp_path / "twistd.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def ctl(self, *args: str, stdin: str = "", check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "jmappushctl"), "-c", str(self.config_path), *args],
            input=stdin, capture_output=True, text=True, env=_env(), timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"jmappushctl {args} failed: {result.stderr}")
        return result

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "jmappushd",
             "--config", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), cwd=self.tmp_path,
        )
        ready = threading.Event()
        self._ready_seen = False
        threading.Thread(target=self._drain, args=(self.process, ready), daemon=True).start()
        if not ready.wait(timeout) or not self._ready_seen:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"twistd did not become ready:\n{self.log()}")

    def _drain(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if b"jmappushd ready" in line:
                    self._ready_seen = True
                    ready.set()
        ready.set()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
