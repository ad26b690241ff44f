"""ListenerService binds once, early, and fails in one line."""

from __future__ import annotations

import socket
from typing import cast

import pytest
import pytest_twisted
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from jmappushd.daemon.listeners import ListenError, ListenerService
from jmappushd.reactor import IDaemonReactor
from tests.support import live_reactor


def test_privileged_start_binds_and_start_does_not_bind_again() -> None:
    """twistd calls privilegedStartService (tap.makeService too) and then startService:
    the port is bound in the first call, once."""
    reactor = MemoryReactorClock()
    # The listeners' guarded port binds a real socket (port 0: any free one) and registers
    # with the MemoryReactor; binding twice would give a second port object.
    listener = ListenerService(cast(IDaemonReactor, reactor), "tcp:0:interface=127.0.0.1",
                               Factory.forProtocol(Protocol))
    listener.privilegedStartService()
    first = listener.port
    assert first is not None
    listener.privilegedStartService()
    listener.startService()
    assert listener.port is first and listener.running
    stopped = listener.stopService()
    reactor.advance(0)
    assert stopped.called


@pytest_twisted.ensureDeferred
async def test_port_in_use_is_one_line() -> None:
    """A taken port raises ListenError (a CannotListenError) whose text names the endpoint
    and the socket error, from the first start phase, and the listener is not running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        listener = ListenerService(live_reactor(), description, Factory.forProtocol(Protocol))
        with pytest.raises(ListenError) as info:
            listener.privilegedStartService()
        assert isinstance(info.value, CannotListenError)
        assert str(info.value) == f"cannot listen on {description}: Address already in use"
        with pytest.raises(ListenError):
            listener.startService()
        assert not listener.running and listener.port is None
    await listener.stopService()
