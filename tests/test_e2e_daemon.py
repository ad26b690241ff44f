"""End to end: ``twistd -n jmappushd`` as a subprocess, driven by jmappushctl and HTTP."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemon_process import DaemonProcess

CORE = "urn:ietf:params:jmap:core"


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_daemon_lifecycle_with_ctl(tmp_path: Path) -> None:
    """A user created with jmappushctl gets a session and Core/echo; publishes are
    accepted; users, tokens and published states survive a restart (SES-4, API-15)."""
    d = DaemonProcess(tmp_path)
    d.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1",
          stdin="s3cret\n")
    token = d.ctl("token", "create", "alice").stdout.strip()
    assert token.startswith("jmp_")
    d.start()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        status, session = http("GET", d.base + "/jmap/session", headers=auth)
        assert status == 200 and "acc1" in session["accounts"]
        status, _ = http("GET", d.base + "/jmap/session")
        assert status == 401
        status, out = http("POST", d.base + "/jmap/api/", {
            "using": [CORE], "methodCalls": [["Core/echo", {"hello": True}, "b3ff"]]}, auth)
        assert status == 200 and out["methodResponses"] == [["Core/echo", {"hello": True}, "b3ff"]]
        published = d.ctl("publish", "acc1", "Email=s42", "Mailbox=m7")
        assert "published as" in published.stdout
        key = session["capabilities"]["urn:ietf:params:jmap:webpush-vapid"]
        rotated = d.ctl("vapid", "rotate").stdout
        assert "new applicationServerKey" in rotated
        assert key["applicationServerKey"] not in rotated
    finally:
        # twistd re-raises SIGTERM at exit, which systemd counts as a clean stop.
        assert d.stop() in (0, -15)
    db = sqlite3.connect(tmp_path / "state" / "jmappushd.sqlite3")
    rows = {(a, t): s for a, t, s in db.execute(
        "SELECT account_id, type, state FROM states")}
    db.close()
    assert rows == {("acc1", "Email"): "s42", ("acc1", "Mailbox"): "m7"}
    d.start()
    try:
        status, session = http("GET", d.base + "/jmap/session",
                               headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and session["username"] == "alice"
        import base64
        basic = base64.b64encode(b"alice:s3cret").decode()
        status, _ = http("GET", d.base + "/jmap/session",
                         headers={"Authorization": f"Basic {basic}"})
        assert status == 200
        out = d.ctl("publish", "acc1", "Email=s43").stdout
        # One seq per publish; seq 1 was before the restart.
        assert out.strip() == "published as seq 2", out
    finally:
        d.stop()


def test_bad_config_refuses_to_start(tmp_path: Path) -> None:
    """A config mistake stops twistd with one line naming file, section and key."""
    import subprocess

    from tests.daemon_process import BIN

    path = tmp_path / "bad.ini"
    path.write_text("[push]\npush-timeout = soon\n")
    result = subprocess.run(
        [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "jmappushd", "--config", str(path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{path}: [push] push-timeout" in result.stdout + result.stderr
