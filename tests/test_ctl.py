"""jmappushctl: every command, and one clear line with a non-zero exit on error."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from jmappushd.config import parse_config
from jmappushd.ctl import admin_url, parse_changes
from tests.daemon_process import BIN, DaemonProcess, _env
from tests.tls_files import key_pem, new_key, write_pair


def ctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "jmappushctl"), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=_env())


def stored_states(tmp_path: Path) -> dict[tuple[str, str], str]:
    db = sqlite3.connect(tmp_path / "state" / "jmappushd.sqlite3")
    try:
        return {(a, t): s for a, t, s in db.execute("SELECT account_id, type, state FROM states")}
    finally:
        db.close()


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
    for name, account in (("erin\n", None), ("erin", "a1\n")):  # "$" matched before "\n"
        args = ["user", "add", name, "--password-stdin"]
        args += ["--account-id", account] if account else []
        newline = d.ctl(*args, stdin="pw\n", check=False)
        assert newline.returncode == 1 and "invalid" in newline.stderr, newline.stderr
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


def test_check_config_suggests_the_nearest_key(tmp_path: Path) -> None:
    """A typo in a key gets "did you mean" from check-config, as from the daemon."""
    bad = tmp_path / "bad.ini"
    bad.write_text(f"[server]\nstate-dir = {tmp_path}\n[push]\npush-throtle = 5\n")
    result = ctl("-c", str(bad), "check-config")
    assert result.returncode == 1
    assert result.stderr == (f"jmappushctl: error: {bad}: [push] push-throtle: unknown key; "
                             "did you mean push-throttle?\n")


def test_check_config_refuses_an_out_of_range_port(tmp_path: Path) -> None:
    """tcp:80800 fails check-config (it used to pass and then crash the daemon)."""
    bad = tmp_path / "bad.ini"
    bad.write_text(f"[server]\nstate-dir = {tmp_path}\n[admin]\nlisten = tcp:80800\n")
    result = ctl("-c", str(bad), "check-config")
    assert result.returncode == 1
    assert "[admin] listen: port 80800 out of range 0-65535" in result.stderr


def test_check_config_checks_tls_files(tmp_path: Path) -> None:
    """The key and certificate of an ssl: endpoint must be readable and match."""
    key, cert = write_pair(tmp_path)
    ini = tmp_path / "tls.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}/state\n"
                   f"listen = ssl:8443:privateKey={key}:certKey={cert}\n")
    assert ctl("-c", str(ini), "check-config").returncode == 0
    key.write_bytes(key_pem(new_key()))
    result = ctl("-c", str(ini), "check-config")
    assert result.returncode == 1
    assert f"the private key in {key} does not match the certificate in {cert}" in result.stderr
    key.unlink()
    assert f"cannot read {key}" in ctl("-c", str(ini), "check-config").stderr


def test_check_config_checks_paths_without_creating_them(tmp_path: Path) -> None:
    """state-dir, the token file's and the database's directories: each that can be neither
    used nor created is one line naming its key; a creatable one is not created."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    ini = tmp_path / "paths.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}/new/state\n"
                   f"[admin]\ntoken-file = {blocker}/admin.token\n"
                   f"[storage]\npath = {blocker}/sub/db.sqlite3\n")
    result = ctl("-c", str(ini), "check-config")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"jmappushctl: error: [admin] token-file {blocker}/admin.token: its directory "
        f"{blocker} is not a directory",
        f"jmappushctl: error: [storage] path {blocker}/sub/db.sqlite3: its directory "
        f"{blocker}/sub cannot be created: {blocker} is not a directory",
    ]
    assert not (tmp_path / "new").exists()
    ini.write_text(f"[server]\nstate-dir = {tmp_path}/new/state\n")
    assert ctl("-c", str(ini), "check-config").stdout == f"{ini}: OK\n"
    assert not (tmp_path / "new").exists()


def test_check_config_refuses_a_readable_admin_token(tmp_path: Path) -> None:
    """An existing admin token file readable by others fails check-config as the daemon."""
    token = tmp_path / "admin.token"
    token.write_text("x" * 40)
    token.chmod(0o644)
    ini = tmp_path / "x.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}\n")
    result = ctl("-c", str(ini), "check-config")
    assert result.returncode == 1 and f"chmod 600 {token}" in result.stderr


def test_publish_to_an_account_nobody_reads(tmp_path: Path) -> None:
    """publish to an account no user can read warns and publishes; --strict refuses and
    publishes nothing; a user's own or granted account publishes silently."""
    d = DaemonProcess(tmp_path)
    d.ctl("user", "add", "alice", "--password-stdin", "--account-id", "own", stdin="pw\n")
    d.ctl("account", "grant", "alice", "shared")
    d.start()
    try:
        loose = d.ctl("publish", "later", "Email=s1")
        assert "published as" in loose.stdout
        assert loose.stderr == ("jmappushctl: warning: no user can read account later "
                                "(published anyway; --strict refuses)\n")
        strict = d.ctl("publish", "--strict", "nobody", "Email=s1", check=False)
        assert strict.returncode == 1 and strict.stdout == ""
        assert strict.stderr == ("jmappushctl: error: no user can read account nobody; nothing "
                                 "published (without --strict it is published anyway)\n")
        for account in ("own", "shared"):
            quiet = d.ctl("publish", "--strict", account, "Email=s2")
            assert "published as" in quiet.stdout and quiet.stderr == ""
    finally:
        d.stop()
    assert stored_states(tmp_path) == {("later", "Email"): "s1", ("own", "Email"): "s2",
                                       ("shared", "Email"): "s2"}
