"""The shipped systemd units are valid, and socket activation really hands the daemon its port.

``systemd-analyze verify`` checks the units as systemd would load them (unknown keys,
missing executables, bad dependencies); only the install prefix is replaced by this venv's.
The template ``jmappushd@.service`` is verified as an instance of it, keeps the single
unit's hardening, and its command lines, run as systemd runs them for two instances, give
two nodes on one port.
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
    for unit in sorted(UNITS.glob("jmappushd*")):
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace("/opt/jmappushd/bin", str(BIN)))
        out.append(target)
    return out


def test_units_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    units = installed_copy(tmp_path)
    assert {u.name for u in units} == {"jmappushd.service", "jmappushd.socket",
                                       "jmappushd@.service"}
    # A template is verified as one of its instances (systemd loads the template for it).
    names = [str(u).replace("@.service", "@node1.service") for u in units]
    result = subprocess.run([analyze, "verify", *names], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jmappushd" not in result.stderr, result.stderr  # no warning about our units


@pytest.mark.parametrize(("unit", "loaded"), [("jmappushd.service", "jmappushd.service"),
                                              ("jmappushd@.service", "jmappushd@node1.service")])
def test_verify_can_fail(tmp_path: Path, unit: str, loaded: str) -> None:
    """The check above is real: a unit whose ExecStart does not exist is refused (the
    template's instance too: the template was loaded for it)."""
    analyze = need("systemd-analyze")
    bad = tmp_path / unit
    bad.write_text((UNITS / unit).read_text())  # /opt/jmappushd is absent here
    result = subprocess.run([analyze, "verify", str(tmp_path / loaded)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert f"{loaded}: Command /opt/jmappushd/bin/twistd is not executable" in result.stderr


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


# -- the template unit: several nodes on one port --

PER_INSTANCE = {"ExecStartPre", "ExecStart", "SyslogIdentifier", "StateDirectory",
                "RuntimeDirectory"}
"""The template's settings that differ from jmappushd.service's: each names the instance."""


def settings(unit: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` of a unit file, in order (keys may repeat)."""
    out, section = [], ""
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((section, key, value))
    return out


def test_the_template_keeps_the_hardening_of_the_single_unit() -> None:
    """Every setting of jmappushd.service is the template's too, except the per-instance
    ones, which name the instance (%i): config file, state and runtime directory, log tag."""
    single = settings("jmappushd.service")
    template = settings("jmappushd@.service")
    shared = [s for s in single if s[1] not in PER_INSTANCE and s[1] != "Description"]
    assert [s for s in template if s[1] not in PER_INSTANCE and s[1] != "Description"] == shared
    per_instance = [s for s in template if s[1] in PER_INSTANCE]
    assert {s[1] for s in per_instance} == PER_INSTANCE
    assert all("%i" in value for _, _, value in per_instance)
    assert ("Service", "StateDirectory", "jmappushd/%i") in per_instance
    assert ("Service", "ExecStart", next(v for _, k, v in single if k == "ExecStart").replace(
        "/etc/jmappushd/jmappushd.ini", "/etc/jmappushd/%i.ini")) in per_instance


def instance_command(key: str, instance: str, etc: Path) -> list[str]:
    """The template's ExecStart or ExecStartPre as systemd runs it for ``instance``."""
    line = next(v for _, k, v in settings("jmappushd@.service") if k == key)
    line = line.replace("%i", instance).replace("/opt/jmappushd/bin", str(BIN))
    return line.replace("/etc/jmappushd", str(etc)).split()


def test_template_instances_share_the_public_port(tmp_path: Path) -> None:
    """Two instances, run with the template's command lines and the STATE_DIRECTORY its
    StateDirectory= exports, on instance configs that differ only in admin port: check-config
    passes, both listen on the one reuseport: port and both serve some of its connections,
    each with its own state directory (admin token)."""
    from tests.daemon_process import _env
    from tests.test_reuseport_e2e import CONNECTIONS, connect_many, session_requests

    port = free_port()
    etc = tmp_path / "etc"
    etc.mkdir()
    admins = {}
    processes = []
    try:
        for instance in ("node1", "node2"):
            admin = free_port()
            admins[instance] = f"http://127.0.0.1:{admin}"
            text = config_text(tmp_path / "unused", port, admin)
            text = "\n".join(line for line in text.splitlines() if "state-dir" not in line)
            text = text.replace(f"listen = tcp:{port}:", f"listen = reuseport:tcp:{port}:")
            (etc / f"{instance}.ini").write_text(text)
            env = {**_env(), "STATE_DIRECTORY": str(tmp_path / "state" / instance)}
            (tmp_path / "state" / instance).mkdir(parents=True)  # systemd creates it
            check = subprocess.run(instance_command("ExecStartPre", instance, etc), env=env,
                                   capture_output=True, text=True, timeout=60)
            assert check.stdout == f"{etc}/{instance}.ini: OK\n", check.stderr
            log_path = tmp_path / f"{instance}.log"
            with log_path.open("wb") as log:  # the child keeps its own descriptor
                processes.append((subprocess.Popen(
                    instance_command("ExecStart", instance, etc), stdout=log,
                    stderr=subprocess.STDOUT, env=env, cwd=tmp_path), log_path))
        deadline = time.monotonic() + 30
        for process, log_path in processes:
            while b"jmappushd ready" not in log_path.read_bytes():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        connect_many(f"http://127.0.0.1:{port}", CONNECTIONS)
        served = [session_requests(admin) for admin in admins.values()]
        assert sum(served) == CONNECTIONS and min(served) > 0, served
        for instance in admins:
            assert (tmp_path / "state" / instance / "admin.token").exists()
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait(timeout=30)
