"""jmappushctl: every command, and one clear line with a non-zero exit on error."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from jmappushd.config import parse_config
from jmappushd.ctl import admin_url, parse_changes
from tests.daemon_process import BIN, DaemonProcess


def ctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "jmappushctl"), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_commands() -> None:
    """--help names every command."""
    out = ctl("--help").stdout
    for command in ("check-config", "user", "token", "account", "publish"):
        assert command in out


def test_missing_config_is_one_clear_line(tmp_path: Path) -> None:
    """A missing config file → exit 1 and one line naming it."""
    result = ctl("-c", str(tmp_path / "nope.ini"), "check-config")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("jmappushctl: error: ") and "nope.ini" in result.stderr


def test_check_config_reports_file_section_and_key(tmp_path: Path) -> None:
    """check-config names the file, section and key of a mistake; OK otherwise."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[websocket]\nws-heartbeat-interval = -1\n")
    result = ctl("-c", str(bad), "check-config")
    assert result.returncode == 1
    assert f"{bad}: [websocket] ws-heartbeat-interval" in result.stderr
    good = tmp_path / "good.ini"
    good.write_text(f"[server]\nstate-dir = {tmp_path}\n")
    assert ctl("-c", str(good), "check-config").returncode == 0


def test_users_tokens_and_grants(tmp_path: Path) -> None:
    """user add/list/passwd/remove, token create/list/revoke, account grant/revoke."""
    d = DaemonProcess(tmp_path)
    # A password no random id, salt or hash in the file can contain by chance ("!").
    out = d.ctl("user", "add", "alice", "--password-stdin", stdin="pw!alice\n").stdout
    assert "added user alice with account a" in out
    assert d.ctl("user", "add", "alice", "--password-stdin", "--exist-ok").returncode == 0
    dup = d.ctl("user", "add", "alice", "--password-stdin", stdin="pw\n", check=False)
    assert dup.returncode == 1 and "exists" in dup.stderr
    d.ctl("user", "add", "bob", "--password-stdin", "--account-id", "mailstore-7", stdin="pw\n")
    bad = d.ctl("user", "add", "carol", "--password-stdin", "--account-id", "no spaces",
                stdin="pw\n", check=False)
    assert bad.returncode == 1 and "invalid account id" in bad.stderr
    empty = d.ctl("user", "add", "dave", "--password-stdin", stdin="\n", check=False)
    assert empty.returncode == 1 and "empty" in empty.stderr
    d.ctl("account", "grant", "alice", "mailstore-7")
    listing = d.ctl("user", "list").stdout
    assert "alice\t" in listing and "mailstore-7" in listing.splitlines()[0]
    token = d.ctl("token", "create", "alice", "--label", "phone").stdout.strip()
    tokens = d.ctl("token", "list", "alice").stdout
    assert "phone" in tokens and token not in tokens
    token_id = tokens.split("\t")[0]
    db = sqlite3.connect(tmp_path / "state" / "jmappushd.sqlite3")
    dump = "\n".join(db.iterdump())
    db.close()
    assert token not in dump and "pw!alice" not in dump
    d.ctl("token", "revoke", token_id)
    again = d.ctl("token", "revoke", token_id, check=False)
    assert again.returncode == 1 and "no such token" in again.stderr
    d.ctl("account", "revoke", "alice", "mailstore-7")
    d.ctl("user", "passwd", "alice", "--password-stdin", stdin="new\n")
    d.ctl("user", "remove", "bob")
    gone = d.ctl("user", "remove", "bob", check=False)
    assert gone.returncode == 1 and "no such user" in gone.stderr
    assert "bob" not in d.ctl("user", "list").stdout


def test_publish_without_daemon_is_a_clear_error(tmp_path: Path) -> None:
    """publish when nothing listens → one line saying the daemon cannot be reached."""
    d = DaemonProcess(tmp_path)
    result = d.ctl("publish", "acc1", "Email=s1", check=False)
    assert result.returncode == 1 and "cannot reach the daemon" in result.stderr
    result = d.ctl("publish", "acc1", "Email", check=False)
    assert result.returncode == 1 and "TYPE=STATE" in result.stderr


def test_admin_url_and_change_parsing(tmp_path: Path) -> None:
    """The admin URL is derived from [admin] listen; TYPE=STATE pairs are parsed."""
    config = parse_config("[admin]\nlisten = tcp6:9001:interface=\\:\\:1\n",
                          str(tmp_path / "x.ini"), environ={})
    assert admin_url(config) == "http://[::1]:9001"
    assert parse_changes(["Email=s1", "Mailbox=a=b"]) == {"Email": "s1", "Mailbox": "a=b"}
