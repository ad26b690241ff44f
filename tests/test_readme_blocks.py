"""README.rst's "See it work" blocks run as written, each in a fresh shell.

The test mirrors a checkout in a temporary folder (``etc/dev.ini`` with free ports in place
of 8080/8081, ``.venv/bin`` pointing at this interpreter's), starts the daemon as
``make run`` does, and runs every block after the first with ``bash -c`` in that folder:
no variable crosses from one block to the next, as with a new terminal. The streaming
``curl -N`` block runs in the background and must print the changes the later blocks
publish.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()
BIN = Path(sys.executable).parent


def see_it_work_blocks() -> list[str]:
    """The literal blocks of the section, dedented, in order."""
    section = README.split("See it work\n-----------\n", 1)[1].split("\n----", 1)[0]
    blocks = []
    for match in re.finditer(r"::\n\n((?:    .*\n|\n)+)", section):
        lines = [line[4:] for line in match.group(1).rstrip("\n").split("\n")]
        blocks.append("\n".join(lines))
    return blocks


def require_curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing (.ci/run installs it)")
        pytest.skip("curl is not installed; the README's blocks use it")
    return curl


class Shell:
    """Runs README blocks in the mirrored checkout with the daemon's real ports."""

    def __init__(self, root: Path, port: int, admin_port: int) -> None:
        self.root, self.port, self.admin_port = root, port, admin_port
        self.env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}

    def text(self, block: str) -> str:
        block = block.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
        return block.replace("127.0.0.1:8081", f"127.0.0.1:{self.admin_port}")

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "set -e -o pipefail\n" + self.text(block)],
                              cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=60)

    def background(self, block: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["bash", "-c", self.text(block)], cwd=self.root, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


class Collector:
    """Reads a process's output on a thread, so the test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        assert process.stdout is not None
        self._stdout = process.stdout
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} never came:\n{''.join(self.lines)}")
                self.changed.wait(left)
            return "".join(self.lines)


def test_blocks_are_what_the_test_runs() -> None:
    """The section has the daemon block and the three others, and says how many terminals."""
    blocks = see_it_work_blocks()
    assert blocks[0] == "make run"
    assert len(blocks) == 4, blocks
    assert "curl -N" in blocks[1] and "publish" in blocks[2] and "/publish" in blocks[3]
    assert "Three terminals" in README


def test_see_it_work_blocks_run_in_fresh_shells(tmp_path: Path) -> None:
    require_curl()
    daemon = DaemonProcess(tmp_path)
    (tmp_path / "etc").mkdir()
    dev = (ROOT / "etc" / "dev.ini").read_text()
    assert "tcp:8080:" in dev and "127.0.0.1:8080" in dev and "tcp:8081:" in dev
    dev = dev.replace("8080", str(daemon.port)).replace("8081", str(daemon.admin_port))
    daemon.config_path = tmp_path / "etc" / "dev.ini"
    daemon.config_path.write_text(dev)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(BIN)
    # What `make run` does before starting twistd (its first recipe line).
    daemon.ctl("user", "add", "demo", "--password-stdin", "--exist-ok", stdin="demo\n")
    daemon.start()
    shell = Shell(tmp_path, daemon.port, daemon.admin_port)
    blocks = see_it_work_blocks()
    watcher = shell.background(blocks[1])
    try:
        out = Collector(watcher)
        out.wait_for('"apiUrl"')
        out.wait_for('"Core/echo"')
        out.wait_for(": jmap event stream")  # the first chunk: open and subscribed
        published = shell.run(blocks[2])
        assert published.returncode == 0, published.stdout + published.stderr
        out.wait_for('"s42"')
        over_http = shell.run(blocks[3])
        assert over_http.returncode == 0, over_http.stdout + over_http.stderr
        assert '"seq"' in over_http.stdout, over_http.stdout  # the 202 body, not a problem
        text = out.wait_for('"s43"')
        assert "event: state" in text
    finally:
        os.killpg(watcher.pid, signal.SIGTERM)
        watcher.wait(timeout=10)
        daemon.stop()
