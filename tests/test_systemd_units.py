"""The shipped systemd units are valid, and socket activation really hands the daemon its port.

``systemd-analyze verify`` checks the units as systemd would load them (unknown keys,
missing executables, bad dependencies); only the install prefix is replaced by this venv's.
``systemd-socket-activate`` then plays systemd's part for ``jmappushd.socket``: it binds the
port and starts twistd with ``LISTEN_FDS``, on the ``listen`` line the socket unit's comment
tells operators to use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jmappushd.config import parse_config
from tests.support import config_text, free_port

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "etc" / "systemd"
BIN = Path(sys.executable).parent


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{program} is missing (.ci/run installs systemd)")
        pytest.skip(f"{program} is not installed (Debian package systemd)")
    return path


def installed_copy(tmp_path: Path) -> list[Path]:
    """The units as installed into /opt/jmappushd, with that prefix pointing at this venv."""
    out = []
    for unit in sorted(UNITS.glob("jmappushd.*")):
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace("/opt/jmappushd/bin", str(BIN)))
        out.append(target)
    return out


def test_units_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    units = installed_copy(tmp_path)
    assert {u.name for u in units} == {"jmappushd.service", "jmappushd.socket"}
    result = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jmappushd" not in result.stderr, result.stderr  # no warning about our units


def test_verify_can_fail(tmp_path: Path) -> None:
    """The check above is real: a unit whose ExecStart does not exist is refused."""
    analyze = need("systemd-analyze")
    bad = tmp_path / "jmappushd.service"
    bad.write_text((UNITS / "jmappushd.service").read_text())  # /opt/jmappushd is absent here
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "is not executable" in result.stderr


def test_units_point_at_what_exists() -> None:
    """Documentation= names the installed config (README's install puts it there)."""
    service = (UNITS / "jmappushd.service").read_text()
    docs = re.findall(r"^Documentation=(\S+)", service, re.M)
    assert "file:///etc/jmappushd/jmappushd.ini" in docs
    readme = (ROOT / "README.rst").read_text()
    assert "/etc/jmappushd/jmappushd.ini" in readme
    assert "etc/systemd/jmappushd.service /etc/systemd/system/" in readme
    assert "jmappushd.socket" in (ROOT / "etc" / "jmappushd.ini").read_text()
    socket_unit = (UNITS / "jmappushd.socket").read_text()
    assert "Service=jmappushd.service" in socket_unit


def test_socket_activation_serves_the_session(tmp_path: Path) -> None:
    activate = need("systemd-socket-activate")
    socket_unit = (UNITS / "jmappushd.socket").read_text()
    listen = re.search(r"listen = (systemd:\S+)", socket_unit)
    assert listen is not None
    port, admin_port = free_port(), free_port()
    text = config_text(tmp_path / "state", port, admin_port).replace(
        f"listen = tcp:{port}:interface=127.0.0.1", f"listen = {listen.group(1)}", 1)
    config = tmp_path / "jmappushd.ini"
    config.write_text(text)
    assert parse_config(text, str(config)).server.listen == (listen.group(1),)
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    subprocess.run([str(BIN / "jmappushctl"), "-c", str(config), "user", "add", "demo",
                    "--password-stdin"], input="demo\n", text=True, check=True, env=env,
                   capture_output=True, timeout=60)
    process = subprocess.Popen(
        # --fdname: systemd names every passed socket (LISTEN_FDNAMES, by default the socket
        # unit's name) and Twisted ignores LISTEN_FDS without names.
        [activate, "-l", f"127.0.0.1:{port}", "--fdname=jmappushd.socket", str(BIN / "twistd"),
         "--nodaemon", "--pidfile=", "--logfile=-", "jmappushd", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        # systemd-socket-activate starts the daemon at the first connection; it accepts
        # once twistd has taken the socket over, so the first request may take a moment.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/jmap/session")
        request.add_header("Authorization", "Basic ZGVtbzpkZW1v")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 200
                    assert b'"apiUrl"' in response.read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        process.terminate()
        out = process.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in out, out
