"""The servers under test: the real daemon (``twistd -n jmappushd``) and the bare baseline.

Both run as subprocesses on loopback; readiness is a line on their stdout (the
daemon's own "jmappushd ready"), read by a thread. :class:`Publisher` posts
StateChanges over one keep-alive connection and timestamps the send.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, Child, free_port, now_ns

BIN = Path(PYTHON).parent
BACKLOG = 1024


def bench_config(state_dir: Path, port: int, admin_port: int,
                 sections: Mapping[str, str] | None = None) -> str:
    """The benchmark config: production defaults except where a benchmark says otherwise.

    Always: a listen backlog of 1024 for both the daemon and the baseline (thousands
    of clients connect at once), no access log (one log line per request or stream
    is measured separately, not in every figure), no per-address connection limit
    (every load client is 127.0.0.1).
    """
    base: dict[str, str] = {
        "server": f"listen = tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}\n"
                  f"public-url = http://127.0.0.1:{port}\nstate-dir = {state_dir}\n"
                  "max-connections-per-address = 0",
        "admin": f"listen = tcp:{admin_port}:interface=127.0.0.1:backlog={BACKLOG}",
        "log": "access-log = false",
    }
    for name, body in (sections or {}).items():
        base[name] = (base[name] + "\n" + body) if name in base else body
    return "\n".join(f"[{name}]\n{body}\n" for name, body in base.items())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Measure this checkout (a git worktree, say), not the one the venv's editable
    # install points at.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class ServerProcess:
    """A server subprocess whose stdout goes to a log file; ready on a marker line."""

    argv: list[str]
    log_path: Path
    marker: bytes
    process: subprocess.Popen[bytes] | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _seen: bool = False

    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(timeout) or not self._seen:
            self.kill()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.argv[2:5]} did not become ready:\n{tail}")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self.process.stdout:
                log.write(line)
                if self.marker in line:
                    self._seen = True
                    self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Server:
    """What a benchmark needs from either server: ports, paths, pid, publishing."""

    name = "server"
    es_path = ""
    ws_path = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.admin_token = ""
        self.proc: ServerProcess

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()

    def publisher(self) -> Publisher:
        return Publisher(self.admin_port, self.admin_token)


class Daemon(Server):
    """``twistd -n jmappushd --config <bench config>`` on a prepared state directory."""

    name = "jmappushd"
    es_path = "/jmap/eventsource/?types=*&closeafter=no&ping={ping}"
    ws_path = "/jmap/ws"

    def __init__(self, workdir: Path, state_dir: Path,
                 sections: Mapping[str, str] | None = None, tag: str = "daemon") -> None:
        super().__init__(workdir)
        self.config_path = workdir / f"{tag}.ini"
        self.config_path.write_text(bench_config(state_dir, self.port, self.admin_port,
                                                 sections))
        self.proc = ServerProcess(
            [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "jmappushd",
             "--config", str(self.config_path)],
            workdir / f"{tag}.log", b"jmappushd ready")
        self.state_dir = state_dir

    def start(self) -> None:
        super().start()
        self.admin_token = (self.state_dir / "admin.token").read_text().strip()

    def ctl(self, *args: str, stdin: str = "") -> str:
        """Run ``jmappushctl`` against this daemon's config."""
        result = subprocess.run(
            [str(BIN / "jmappushctl"), "-c", str(self.config_path), *args], input=stdin,
            capture_output=True, text=True, env=_env(), timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"jmappushctl {args}: {result.stderr}")
        return result.stdout


class Baseline(Server):
    """``python -m benchmarks.baseline_server``: bare twisted.web SSE + bare Autobahn."""

    name = "baseline"
    es_path = "/events"
    ws_path = "/ws"

    def __init__(self, workdir: Path, tag: str = "baseline", routes: Path | None = None) -> None:
        super().__init__(workdir)
        argv = [PYTHON, "-m", "benchmarks.baseline_server", "--port", str(self.port),
                "--admin-port", str(self.admin_port), "--backlog", str(BACKLOG)]
        if routes is not None:
            argv += ["--routes", str(routes)]
        self.proc = ServerProcess(argv, workdir / f"{tag}.log", b"baseline ready")


class Publisher:
    """POST /publish over one keep-alive connection; returns the mark and the send time."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def publish(self, changed: Mapping[str, Mapping[str, str]]) -> tuple[str, int, int]:
        """Returns ``(mark, t_sent_ns, t_acknowledged_ns)``: the mark, the first state in
        ``changed``, is what clients file the event under (tokens are per user)."""
        body = json.dumps({"@type": "StateChange", "changed": changed}).encode()
        t0 = now_ns()
        self.connection.request("POST", "/publish", body, self.headers)
        response = self.connection.getresponse()
        data = response.read()
        t1 = now_ns()
        if response.status != 202:
            raise RuntimeError(f"publish answered {response.status}: {data[:300]!r}")
        mark = next(iter(next(iter(changed.values())).values()))
        return mark, t0, t1

    def close(self) -> None:
        self.connection.close()


def client_processes(server: Server, kind: str, counts: list[int], *, auth_file: str = "",
                     auth_offset: int = 0, src_base: int = 2, ping: int = 30,
                     announce: bool = False, max_seconds: float = 900.0,
                     concurrency: int = 64) -> list[Child]:
    """Start one load_clients process per entry of ``counts`` (each its own source address)."""
    path = server.es_path.format(ping=ping) if kind == "es" else server.ws_path
    children, offset = [], auth_offset
    for i, count in enumerate(counts):
        args = ["benchmarks.load_clients", "--kind", kind, "--port", str(server.port),
                "--path", path, "--count", str(count), "--src", f"127.0.0.{src_base + i}",
                "--max-seconds", str(max_seconds), "--concurrency", str(concurrency)]
        if auth_file:
            args += ["--auth-file", auth_file, "--auth-offset", str(offset)]
        if kind == "ws":
            args.append("--push-enable")
        if announce:
            args.append("--announce")
        children.append(Child(args, name=f"{server.name}-{kind}{i}"))
        offset += count
    return children


def wait_ready(children: list[Child], timeout: float) -> dict[str, Any]:
    """Wait until every client process has opened (or failed) all its connections."""
    from benchmarks.common import expect_all

    reports = expect_all(children, "ready", timeout)
    failed: dict[str, int] = {}
    for r in reports:
        for reason, n in r["failed"].items():
            failed[reason] = failed.get(reason, 0) + n
    return {"opened": sum(r["opened"] for r in reports), "failed": failed}
