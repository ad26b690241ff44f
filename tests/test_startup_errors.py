"""Every start-up failure of the real ``twistd -n jmappushd`` is one line naming the cause.

No usage block, no traceback, no hang, a non-zero exit status: a config mistake, a port
in use, a port out of range, a TLS key that is not the certificate's, a state directory
or storage path that cannot be created or written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jmappushd import versions
from tests.daemon_process import BIN, DaemonProcess, _env
from tests.support import config_text, free_port
from tests.tls_files import key_pem, new_key, write_pair

# The two forms the project documents: the Makefile's and the systemd unit's.
COMMANDS = {
    "make-run": ["--nodaemon", "--pidfile="],
    "systemd": ["--nodaemon", "--pidfile=", "--logfile=-"],
}


def twistd(config: Path, form: str = "systemd") -> tuple[int, list[str]]:
    """Run twistd to completion (it must not hang) and return its status and output lines."""
    result = subprocess.run(
        [str(BIN / "twistd"), *COMMANDS[form], "jmappushd", "--config", str(config)],
        capture_output=True, text=True, env=_env(), cwd=config.parent, timeout=60)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output.splitlines()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jmappushd.ini"
    path.write_text(text)
    return path


def standard(tmp_path: Path, extra: str = "", **replace: str) -> Path:
    """The tests' usual config, with lines replaced (``listen=...``) or appended."""
    text = config_text(tmp_path / "state", free_port(), free_port(), extra)
    lines = text.splitlines()
    for key, value in replace.items():
        key = key.replace("_", "-")
        lines = [f"{key} = {value}" if line.split(" = ")[0] == key else line
                 for line in lines]
    return write_config(tmp_path, "\n".join(lines) + "\n")


def assert_one_line(status: int, lines: list[str], expected: str) -> None:
    assert status != 0
    assert lines == [f"jmappushd: error: {expected}"]


@pytest.mark.parametrize("form", sorted(COMMANDS))
def test_config_mistake(tmp_path: Path, form: str) -> None:
    """A misspelt key: one line with the nearest key, without twistd's usage block."""
    path = standard(tmp_path, extra="push-throtle = 500")
    assert_one_line(*twistd(path, form),
                    f"{path}: [push] push-throtle: unknown key; did you mean push-throttle?")


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that is not there is named."""
    path = tmp_path / "nope.ini"
    assert_one_line(*twistd(path), f"{path}: cannot read: No such file or directory")


@pytest.mark.parametrize("form", sorted(COMMANDS))
def test_port_in_use(tmp_path: Path, form: str) -> None:
    """A taken port: one line naming the endpoint, where twistd printed a 40-line
    CannotListenError traceback (and then hung on the store's thread)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        path = standard(tmp_path, listen=endpoint)
        assert_one_line(*twistd(path, form),
                        f"cannot listen on {endpoint}: Address already in use")


def test_admin_port_in_use_after_the_public_one_bound(tmp_path: Path) -> None:
    """The admin listener's port taken while the public one bound: still one line, exit."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        text = config_text(tmp_path / "state", free_port(), port)
        assert_one_line(*twistd(write_config(tmp_path, text)),
                        f"cannot listen on tcp:{port}:interface=127.0.0.1: "
                        "Address already in use")


def test_port_out_of_range(tmp_path: Path) -> None:
    """``listen = tcp:80800`` is a config error, not an OverflowError from bind()."""
    path = standard(tmp_path, listen="tcp:80800")
    assert_one_line(*twistd(path),
                    f"{path}: [server] listen: port 80800 out of range 0-65535 in 'tcp:80800'")


def test_tls_key_not_the_certificates(tmp_path: Path) -> None:
    """An ssl: endpoint whose key does not match its certificate names both files."""
    _key, cert = write_pair(tmp_path)
    other = tmp_path / "other.pem"
    other.write_bytes(key_pem(new_key()))
    endpoint = f"ssl:{free_port()}:privateKey={other}:certKey={cert}:interface=127.0.0.1"
    path = standard(tmp_path, listen=endpoint)
    assert_one_line(*twistd(path),
                    f"{path}: [server] listen: {endpoint!r}: the private key in {other} does "
                    f"not match the certificate in {cert}")


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in, even as root (sysfs)."""
    if os.geteuid() == 0:
        sysfs = Path("/sys/kernel")
        if not sysfs.is_dir():  # pragma: no cover - containers without sysfs
            if os.environ.get("CI") == "true":
                pytest.fail("running as root in CI without /sys/kernel")
            pytest.skip("running as root without /sys/kernel: no directory root cannot write")
        yield sysfs
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        yield locked
    finally:
        locked.chmod(0o700)


def test_state_dir_not_writable(tmp_path: Path, unwritable_dir: Path) -> None:
    """An existing state directory the daemon cannot write into."""
    path = standard(tmp_path, state_dir=str(unwritable_dir))
    status, lines = twistd(path)
    assert status != 0 and len(lines) == 1
    assert lines[0].startswith(f"jmappushd: error: [server] state-dir {unwritable_dir}: "
                               "is not writable: ")


def test_state_dir_cannot_be_created(tmp_path: Path) -> None:
    """A state directory below a regular file cannot be created."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = standard(tmp_path, state_dir=str(blocker / "state"))
    assert_one_line(*twistd(path), f"[server] state-dir {blocker / 'state'}: cannot be "
                                   f"created: {blocker / 'state'}: Not a directory")


def test_storage_path_cannot_be_created(tmp_path: Path, unwritable_dir: Path) -> None:
    """A storage path whose directory cannot be written names [storage] path."""
    db = unwritable_dir / "jmappushd.sqlite3"
    path = standard(tmp_path, extra=f"[storage]\npath = {db}")
    status, lines = twistd(path)
    assert status != 0 and len(lines) == 1
    assert lines[0].startswith(f"jmappushd: error: [storage] path {db}: its directory "
                               f"{unwritable_dir} is not writable: ")


def test_a_good_start_logs_the_versions(tmp_path: Path) -> None:
    """The real daemon logs its version and its libraries' at start; /health reports it."""
    daemon = DaemonProcess(tmp_path)
    daemon.start()
    try:
        with urllib.request.urlopen(daemon.admin + "/health", timeout=30) as response:
            health = json.loads(response.read())
    finally:
        daemon.stop()
    assert health["version"] == versions.daemon_version()
    libraries = versions.library_versions()
    lines = [line for line in daemon.log().splitlines() if "cryptography" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        f"jmappushd {versions.daemon_version()} (Twisted {libraries['Twisted']}, Autobahn "
        f"{libraries['autobahn']}, cryptography {libraries['cryptography']}, "
        f"Python {libraries['Python']})")


def test_a_failure_after_the_reactor_runs_is_one_line_and_exits_1(tmp_path: Path) -> None:
    """A start-up that fails once the reactor runs (here a damaged resumption-token key in
    the store, found when the hub starts) logs one error line naming it, no traceback, and
    twistd exits 1 so systemd's Restart=on-failure and scripts see it."""
    config = standard(tmp_path)
    result = subprocess.run([str(BIN / "jmappushctl"), "-c", str(config), "user", "add",
                             "alice", "--password-stdin"], input="pw\n", capture_output=True,
                            text=True, env=_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    database = tmp_path / "state" / "jmappushd.sqlite3"
    import sqlite3

    with sqlite3.connect(database) as db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('resumption-token-key', "
                   "'not a key')")
    status, lines = twistd(config)  # asserts there is no traceback
    assert status == 1, lines
    errors = [line for line in lines if "jmappushd could not start" in line]
    assert len(errors) == 1 and "resumption-token-key" in errors[0], lines
