"""Cyrus's mailbox events, received on the Unix datagram socket imapd.conf names.

With ``notifysocket: <path>`` and ``event_notifier: external`` Cyrus sends each mailbox
event (RFC 5423 names: MessageNew, MailboxModseq, FlagsSet, ...) as one datagram of
NUL-separated fields: method, class, priority, user, mailbox, option count, the options,
then the event as JSON. The daemon only needs to know *which account* changed: events
are triggers, never states (the ``vnd.fastmail.jmapStates`` in them did not match what
JMAP returned on 3.6.1), so the states are then read back over JMAP.

The account is the owner of the mailbox: the packet's user field when set, else (it is
empty on MailboxModseq) the ``user/<name>`` part of the event's ``uri``. Anything that
does not parse is counted and dropped, one log line per kind of problem, never a
traceback: the socket is writable by the Cyrus user only, but a bad packet must not stop
the next one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from jmappushd.jmap import ijson
from jmappushd.jmap.problems import RequestProblem

__all__ = ["CyrusNotifyProtocol", "NotifySocketError", "account_of_event", "prepare_socket_path",
           "socket_path_problem"]

MAX_DATAGRAM = 65_536


def account_of_event(packet: bytes) -> str | None:
    """The account a Cyrus notify packet is about, or None if it names none."""
    fields = packet.split(b"\0")
    if len(fields) < 8 or fields[1] != b"EVENT":
        return None
    user = fields[3].decode("utf-8", "replace")
    if user:
        return _account_name(user)
    try:
        # ijson, not json: absurd nesting is a RecursionError there, a notJSON here.
        event = ijson.loads(fields[-2] or fields[-1])
    except RequestProblem:
        return None
    uri = event.get("uri") if isinstance(event, dict) else None
    return _owner_of_uri(uri) if isinstance(uri, str) else None


def _account_name(user: str) -> str:
    """Cyrus's JMAP account id of a user: the login name (``user@domain`` stays whole)."""
    return user


def _owner_of_uri(uri: str) -> str | None:
    """``imap://host/user/bob;UIDVALIDITY=1/...`` → ``bob``; shared mailboxes → None."""
    try:
        path = urlsplit(uri).path.lstrip("/")
    except ValueError:  # "imap://[..." : an invalid IPv6 host
        return None
    mailbox = unquote(path.split(";", 1)[0])
    parts = mailbox.split("/")
    if len(parts) >= 2 and parts[0] == "user" and parts[1]:
        return parts[1]
    return None


class NotifySocketError(OSError):
    """The socket path cannot be bound: one line for the operator, naming the key."""


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot become the notify socket (None: absent, or a stale socket)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return f"the folder {parent} of {path} does not exist"
        return None
    except OSError as e:
        return f"cannot inspect {path}: {e.strerror or e}"
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; not replacing it"
    return None


def prepare_socket_path(path: str, where: str = "[upstream] notify-socket") -> None:
    """Remove a stale socket left by a previous run; refuse to remove anything else
    (NotifySocketError, its message starting with ``where``)."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise NotifySocketError(f"{where}: {problem}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NotifySocketError(f"{where}: cannot remove the stale socket {path}: "
                                f"{e.strerror or e}") from None


class CyrusNotifyProtocol(DatagramProtocol):
    """Hands the account of every event datagram to ``changed``."""

    log = Logger()

    def __init__(self, changed: Callable[[str], None]) -> None:
        self._changed = changed
        self.received = 0
        self.dropped = 0
        self._warned = False

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        self.received += 1
        account = account_of_event(datagram)
        if account is None:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                self.log.warn("Ignoring a Cyrus notify packet that names no user mailbox "
                              "(logged once): {start!r}", start=datagram[:80])
            return
        self._changed(account)
