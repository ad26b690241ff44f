"""The private Cyrus that gateway mode is tested against behaves as the gateway relies on.

These pin the upstream facts of issue 12 on the real server (Debian's Cyrus IMAP 3.6), so a
Cyrus upgrade that changes one of them fails here, with the fact named, before it shows up
as a puzzling gateway failure.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from tests.cyrus_server import CyrusServer, running_cyrus


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from running_cyrus(("alice", "bob", "reader"), (("alice", "reader"),))


@pytest.fixture
def notify(cyrus: CyrusServer) -> Iterator[socket.socket]:
    """The datagram socket Cyrus's notifysocket names, bound as the daemon will bind it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    cyrus.notify_socket.unlink(missing_ok=True)
    listener.bind(str(cyrus.notify_socket))
    os.chmod(cyrus.notify_socket, 0o666)
    listener.settimeout(10)
    try:
        yield listener
    finally:
        listener.close()
        cyrus.notify_socket.unlink(missing_ok=True)


def test_session_urls_are_relative_and_push_is_missing(cyrus: CyrusServer) -> None:
    session = cyrus.session("alice")
    assert session["apiUrl"] == "/jmap/"
    assert session["primaryAccounts"]["urn:ietf:params:jmap:mail"] == "alice"
    assert "urn:ietf:params:jmap:websocket" not in session["capabilities"]


def test_push_subscription_methods_are_unknown(cyrus: CyrusServer) -> None:
    [[name, args, _]] = cyrus.jmap("alice", [["PushSubscription/get", {}, "p"]])
    assert name == "error" and args["type"] == "unknownMethod"


def test_reader_sees_the_owners_states(cyrus: CyrusServer) -> None:
    """``lr`` on user/alice: the reader's session lists alice read-only, with alice's states."""
    session = cyrus.session("reader")
    assert set(session["accounts"]) == {"alice", "reader"}
    assert session["accounts"]["alice"]["isReadOnly"] is True
    assert "bob" not in session["accounts"]
    before = cyrus.states("alice", "alice")
    assert cyrus.states("reader", "alice") == before
    cyrus.deliver("alice", "for the reader")
    after = cyrus.states("alice", "alice")
    assert after["Email"] != before["Email"] and after["Mailbox"] != before["Mailbox"]
    assert cyrus.states("reader", "alice") == after


def test_delivery_sends_notify_datagrams(cyrus: CyrusServer, notify: socket.socket) -> None:
    """event_notifier external: NUL-separated packets, the event JSON second to last."""
    cyrus.deliver("bob", "notify me")
    events: dict[str, dict[str, str]] = {}
    while {"MessageNew", "MailboxModseq"} - set(events):
        fields = notify.recv(65536).split(b"\0")
        assert fields[0] == b"external" and fields[1] == b"EVENT"
        event = json.loads(fields[-2])
        if "user/bob" in event["uri"]:
            events[event["event"]] = event
    assert events["MessageNew"]["user"] == "bob"
    assert events["MailboxModseq"]["user"] == ""  # only the URI names the mailbox's owner
    assert events["MailboxModseq"]["uri"].startswith("imap://localhost/user/bob;")


def test_wrong_password_is_401(cyrus: CyrusServer) -> None:
    cyrus.users["mallory"] = "nope"
    status, _ = cyrus._http("mallory", cyrus.session_url)
    assert status == 401
