"""Gateway mode and the tools: jmappushctl refuses local users, check-config and twistd check
the gateway's files (reader password 0600, CA bundle, notify socket folder) in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.daemon_process import BIN, _env
from tests.support import config_text, free_port
from tests.test_startup_errors import twistd


def gateway_config(tmp_path: Path, upstream: str) -> Path:
    text = config_text(tmp_path / "state", free_port(), free_port())
    text += f"\n[upstream]\nsession-url = http://127.0.0.1:{free_port()}/jmap/\n{upstream}"
    path = tmp_path / "jmappushd.ini"
    path.write_text(text)
    return path


def secret(tmp_path: Path, mode: int = 0o600, text: str = "reader-pw\n") -> Path:
    path = tmp_path / "reader.pw"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "jmappushctl"), "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, env=_env(),
                          input="pw\n")


@pytest.mark.parametrize("command", [["user", "add", "alice", "--password-stdin"],
                                     ["user", "list"], ["token", "create", "alice"],
                                     ["account", "grant", "alice", "a1"]])
def test_local_users_are_refused_in_gateway_mode(tmp_path: Path, command: list[str]) -> None:
    result = ctl(gateway_config(tmp_path, ""), *command)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway mode" in lines[0] and "[upstream]" in lines[0], lines


def test_check_config_accepts_a_good_gateway(tmp_path: Path) -> None:
    pw = secret(tmp_path)
    config = gateway_config(tmp_path, f"changes = poll\nreader-user = r\n"
                                      f"reader-password-file = {pw}\n")
    result = ctl(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


@pytest.mark.parametrize(("mode", "text", "message"), [
    (0o644, "pw\n", "must not be readable by group or others (mode 0644; chmod 0600)"),
    (0o600, "pw\nsecond\n", "must hold the password on one line"),
    (0o600, "", "must hold the password on one line"),
])
def test_bad_reader_password_file_is_one_line(tmp_path: Path, mode: int, text: str,
                                              message: str) -> None:
    pw = secret(tmp_path, mode, text)
    config = gateway_config(tmp_path, f"changes = poll\nreader-user = r\n"
                                      f"reader-password-file = {pw}\n")
    result = ctl(config, "check-config")
    assert result.returncode != 0
    assert "[upstream] reader-password-file" in result.stderr and message in result.stderr
    status, lines = twistd(config)
    assert status != 0 and len(lines) == 1, lines
    assert "[upstream] reader-password-file" in lines[0] and message in lines[0]


def test_bad_ca_file_and_notify_folder(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    config = gateway_config(tmp_path, f"ca-file = {ca}\n")
    result = ctl(config, "check-config")
    assert result.returncode != 0 and "[upstream] ca-file" in result.stderr
    assert "holds no PEM certificate" in result.stderr
    pw = secret(tmp_path)
    config = gateway_config(tmp_path, f"changes = cyrus-notify\nreader-user = r\n"
                                      f"reader-password-file = {pw}\n"
                                      f"notify-socket = {tmp_path}/missing/notify.sock\n")
    status, lines = twistd(config)
    assert status != 0 and len(lines) == 1, lines
    assert "[upstream] notify-socket" in lines[0] and "missing or not writable" in lines[0]
