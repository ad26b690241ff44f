"""A private Cyrus IMAP 3.6 (Debian's packages) on 127.0.0.1, for the gateway-mode tests.

Everything lives in a temporary folder the ``cyrus`` user owns: imapd.conf, cyrus.conf, the
config directory, the mail partition, a sasldb with the test users, and the sockets. The
master runs as ``cyrus`` (so the tests must run as root, as CI does); mailboxes and ACLs are
made over IMAP as the ``cyrus`` admin, mail is delivered with Cyrus's own ``deliver``
(LMTP to its lmtpd), and JMAP is served by ``httpd`` with ``httpmodules: jmap``.

Facts this relies on (Cyrus 3.6.1, seen here): session URLs are relative
(``"apiUrl": "/jmap/"``); a user granted ``lr`` on another user's mailbox sees that user as
an extra, read-only account whose ``Foo/get`` with ``ids: []`` returns the owner's states;
with ``event_notifier: external`` mailbox events arrive as NUL-separated datagrams at
``notifysocket`` (method, class, priority, user, mailbox, option count, options, event
JSON), and lmtpd processes keep the configuration they started with.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port

LIBEXEC = Path("/usr/lib/cyrus/bin")
SASLPASSWD = "/usr/sbin/saslpasswd2"
ADMIN = "cyrus"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


def cyrus_missing() -> str | None:
    """Why a private Cyrus cannot run here, or None."""
    for path in (LIBEXEC / "master", LIBEXEC / "httpd", LIBEXEC / "deliver", Path(SASLPASSWD)):
        if not path.exists():
            return f"{path} is missing (Debian: cyrus-imapd cyrus-caldav sasl2-bin)"
    try:
        pwd.getpwnam("cyrus")
    except KeyError:
        return "there is no cyrus user (Debian's cyrus-common creates it)"
    if os.geteuid() != 0:
        return "Cyrus's master must be started as the cyrus user, which needs root"
    return None


def require_cyrus() -> None:
    """Skip (or, under CI=true, fail) when a private Cyrus cannot be started."""
    reason = cyrus_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"Cyrus IMAP is required under CI=true: {reason} (.ci/run installs it)")
    pytest.skip(f"Cyrus IMAP not available: {reason}")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def running_cyrus(users: Iterable[str], grants: Iterable[tuple[str, str]] = ()
                  ) -> Iterator[CyrusServer]:
    """A started Cyrus with ``users`` (password ``<name>-pw``) and ``lr`` grants
    ``(owner, grantee)``; cleaned up afterwards. Skips (or fails under CI) without Cyrus."""
    require_cyrus()
    server = CyrusServer()
    try:
        server.start()
        for name in users:
            server.add_user(name, f"{name}-pw")
        for owner, grantee in grants:
            server.grant(owner, grantee, "lr")
        yield server
    finally:
        server.cleanup()


@dataclass
class CyrusServer:
    """One Cyrus master with imap, http (JMAP) and lmtp on loopback."""

    imap_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    extra_conf: dict[str, str] = field(default_factory=dict)
    root: Path = field(init=False)
    users: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        # Not under pytest's tmp_path: that is 0700 root, and the cyrus user must get in.
        self.root = Path(tempfile.mkdtemp(prefix="jmappushd-cyrus-", dir="/tmp"))
        self.conf = self.root / "imapd.conf"
        self.admin_password = secrets.token_hex(12)  # per server: proves which one answers
        self.notify_socket = self.root / "notify.sock"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def session_url(self) -> str:
        return f"{self.base}/jmap/"

    # --- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        confdir = self.root / "conf"
        for sub in ("db", "proc", "socket", "log", "msg", "user", "quota", "lock", "sieve"):
            (confdir / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "spool" / "stage.").mkdir(parents=True, exist_ok=True)
        options = {
            "configdirectory": str(confdir),
            "partition-default": str(self.root / "spool"),
            "sievedir": str(confdir / "sieve"),
            "servername": "localhost",
            "admins": ADMIN,
            "allowplaintext": "yes",
            "sasl_pwcheck_method": "auxprop",
            "sasl_auxprop_plugin": "sasldb",
            "sasl_sasldb_path": str(self.root / "sasldb2"),
            "sasl_mech_list": "PLAIN LOGIN",
            "httpmodules": "jmap",
            "conversations": "1",
            "conversations_db": "twoskip",
            "lmtpsocket": str(confdir / "socket" / "lmtp"),
            "idlesocket": str(confdir / "socket" / "idle"),
            "notifysocket": str(self.notify_socket),
            "event_notifier": "external",
            "event_groups": "message mailbox flags subscription",
            "syslog_prefix": "jmappushd-test-cyrus",
        }
        options.update(self.extra_conf)
        self.conf.write_text("".join(f"{k}: {v}\n" for k, v in options.items()))
        c = str(self.conf)
        (self.root / "cyrus.conf").write_text(
            "START {\n"
            f'  recover cmd="ctl_cyrusdb -C {c} -r"\n'
            "}\n"
            "SERVICES {\n"
            f'  imap cmd="imapd -C {c}" listen="127.0.0.1:{self.imap_port}" prefork=0\n'
            f'  http cmd="httpd -C {c}" listen="127.0.0.1:{self.http_port}" prefork=0\n'
            f'  lmtpunix cmd="lmtpd -C {c}" listen="{confdir}/socket/lmtp" prefork=0\n'
            "}\n"
            "EVENTS {\n}\n")
        self._saslpasswd(ADMIN, self.admin_password)
        self._chown()
        subprocess.run(
            ["runuser", "-u", "cyrus", "--", str(LIBEXEC / "master"), "-C", c,
             "-M", str(self.root / "cyrus.conf"), "-p", str(self.root / "master.pid"), "-d"],
            check=True, capture_output=True, timeout=30)
        self._wait_until_serving(timeout)

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as s:
                    greeted = s.recv(64).startswith(b"* OK")
                if greeted:
                    # Ours, not another Cyrus that took a port free_port() handed out
                    # to both: only this one knows this admin password (IMAP and HTTP).
                    self._admin().logout()
                    self.users.setdefault(ADMIN, self.admin_password)
                    status, _ = self._http(ADMIN, self.session_url)
                    if status != 200:
                        raise AssertionError(f"another server answers on 127.0.0.1:"
                                             f"{self.http_port} ({status}; a port race)")
                    return
            except imaplib.IMAP4.error:
                raise AssertionError(f"another server answers on 127.0.0.1:{self.imap_port} "
                                     "(a port race with another Cyrus)") from None
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Cyrus did not start within {timeout}s in {self.root}")
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master (it stops its children); SIGKILL it if it lingers."""
        pid = self.master_pid()
        if pid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + timeout
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not _alive(pid):
                    break
        (self.root / "master.pid").unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- provisioning ----------------------------------------------------------------

    def _saslpasswd(self, user: str, password: str) -> None:
        subprocess.run([SASLPASSWD, "-p", "-c", "-f", str(self.root / "sasldb2"),
                        "-u", "localhost", user], input=password.encode(), check=True,
                       capture_output=True, timeout=30)

    def _chown(self) -> None:
        entry = pwd.getpwnam("cyrus")
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        os.chmod(self.root, 0o755)  # the notify socket's directory, reachable by the daemon

    def _admin(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.imap_port)
        imap.login(ADMIN, self.admin_password)
        return imap

    def add_user(self, name: str, password: str) -> None:
        """A sasldb user with an INBOX (``user/<name>``)."""
        self._saslpasswd(name, password)
        self._chown()
        self.users[name] = password
        imap = self._admin()
        try:
            typ, data = imap.create(f"user/{name}")
            assert typ == "OK", data
        finally:
            imap.logout()

    def set_password(self, name: str, password: str) -> None:
        """A new password for ``name`` in the sasldb, as an admin would set it; Cyrus's
        next login check reads it (no restart)."""
        self._saslpasswd(name, password)
        self._chown()
        self.users[name] = password

    def grant(self, owner: str, grantee: str, rights: str = "lr") -> None:
        """``sam user/<owner> <grantee> <rights>`` as cyradm would."""
        imap = self._admin()
        try:
            typ, data = imap.setacl(f"user/{owner}", grantee, rights)
            assert typ == "OK", data
        finally:
            imap.logout()

    def deliver(self, user: str, subject: str = "hello") -> None:
        """One message into ``user``'s INBOX through Cyrus's deliver (LMTP to lmtpd)."""
        message_id = f"<{time.monotonic_ns()}@jmappushd.test>"
        message = (f"From: sender@example.com\r\nTo: {user}@localhost\r\n"
                   f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n\r\nbody\r\n")
        subprocess.run(["runuser", "-u", "cyrus", "--", str(LIBEXEC / "deliver"),
                        "-C", str(self.conf), user], input=message.encode(), check=True,
                       capture_output=True, timeout=30)

    # --- JMAP, straight to Cyrus ---------------------------------------------------------

    def _http(self, user: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
        token = base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
        request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        request.add_header("Authorization", f"Basic {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    def session(self, user: str) -> dict[str, Any]:
        status, body = self._http(user, self.session_url)
        assert status == 200, status
        assert isinstance(body, dict)
        return body

    def jmap(self, user: str, calls: list[Any]) -> list[Any]:
        payload = json.dumps({"using": USING, "methodCalls": calls}).encode()
        status, body = self._http(user, f"{self.base}/jmap/", payload)
        assert status == 200, status
        responses = body["methodResponses"]
        assert isinstance(responses, list)
        return responses

    def states(self, user: str, account: str, types: tuple[str, ...] = ("Mailbox", "Email",
                                                                         "Thread")
               ) -> dict[str, str]:
        """The account's current state per type, read as the gateway will (``ids: []``)."""
        calls = [[f"{t}/get", {"accountId": account, "ids": []}, t] for t in types]
        return {r[2]: r[1]["state"] for r in self.jmap(user, calls)}
