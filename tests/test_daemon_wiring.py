"""The daemon's wiring: children start in order, stop one after the other in reverse,
readiness waits for every transport, and a port in use fails start-up at once."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.core.signal import StartSignal
from jmappushd.daemon.core import CoreService
from jmappushd.daemon.listeners import ListenerService
from jmappushd.daemon.service import JMAPPushService
from jmappushd.transports.interface import ITransportService
from tests.support import live_reactor, make_config


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


class FakeCore(CoreService):
    """A core whose start and stop the test controls."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.started = StartSignal()
        self.stopped: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        Service.startService(self)
        self.rec.events.append("start core")

    def when_started(self) -> defer.Deferred[None]:
        return self.started.wait()

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        self.rec.events.append("stop core")
        return self.stopped


@implementer(ITransportService)
class FakeTransport(Service):
    def __init__(self, name: str, rec: Recorder) -> None:
        self.name = name
        self.rec = rec
        self.started = StartSignal()
        self.stopped: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self.rec.events.append(f"start {self.name}")

    def when_started(self) -> defer.Deferred[None]:
        return self.started.wait()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.rec.events.append(f"stop {self.name}")
        return self.stopped


class FakeListener(ListenerService):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.description = "fake"

    def startService(self) -> None:
        Service.startService(self)
        self.rec.events.append("start listener")

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        self.rec.events.append("stop listener")
        return defer.succeed(None)


class FakeApp:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.admin_token = ""
        self.urls = type("U", (), {"base": "http://127.0.0.1", "session": "http://x/s"})()


def build(tmp_path: Path) -> tuple[JMAPPushService, Recorder, FakeCore, list[FakeTransport],
                                    MemoryReactorClock]:
    rec = Recorder()
    core = FakeCore(rec)
    transports = [FakeTransport("eventsource", rec), FakeTransport("webpush", rec)]
    reactor = MemoryReactorClock()
    service = JMAPPushService(FakeApp(make_config(tmp_path)), reactor,  # type: ignore[arg-type]
                              core, [FakeListener(rec)], transports)
    return service, rec, core, transports, reactor


def test_start_order_and_readiness_waits_for_every_transport(tmp_path: Path) -> None:
    """Core, listeners, transports start in that order; ``ready`` fires only after the
    core and then every transport reported started."""
    service, rec, core, transports, _ = build(tmp_path)
    service.startService()
    assert rec.events == ["start core", "start listener", "start eventsource", "start webpush"]
    core.started.fire()
    transports[0].started.fire()
    ready = service.when_ready()
    assert not ready.called
    transports[1].started.fire()
    assert ready.called


def test_stop_is_sequential_in_reverse(tmp_path: Path) -> None:
    """Each child's stop begins only after the previous one finished: transports first
    (connections closed while the ports are still bound), the core (store) last."""
    service, rec, core, transports, _ = build(tmp_path)
    service.startService()
    rec.events.clear()
    done = service.stopService()
    assert rec.events == ["stop webpush"]
    transports[1].stopped.callback(None)
    assert rec.events == ["stop webpush", "stop eventsource"]
    transports[0].stopped.callback(None)
    assert rec.events == ["stop webpush", "stop eventsource", "stop listener", "stop core"]
    assert not done.called
    core.stopped.callback(None)
    assert done.called


def test_a_failing_child_stop_does_not_stop_the_rest(tmp_path: Path) -> None:
    """A child whose stop fails is logged; the others still stop and the store closes."""
    service, rec, core, transports, _ = build(tmp_path)
    service.startService()
    done = service.stopService()
    transports[1].stopped.errback(Failure(RuntimeError("boom")))
    transports[0].stopped.callback(None)
    core.stopped.callback(None)
    assert "stop core" in rec.events
    assert done.called
    done.addErrback(lambda f: pytest.fail(f"stop failed: {f}"))


def test_start_failure_stops_the_reactor(tmp_path: Path) -> None:
    """If the core cannot start (store unusable), the failure is logged and the reactor
    is stopped, so twistd exits instead of serving without a store."""
    service, _, core, _, reactor = build(tmp_path)
    reactor.running = True
    service.startService()
    ready = service.when_ready()
    core.started.fire(Failure(RuntimeError("no database")))
    assert reactor.hasStopped
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)


def test_start_signal_answers_early_and_late_waiters() -> None:
    """Waiters before and after the signal fired get the same outcome."""
    signal = StartSignal()
    early = signal.wait()
    assert not early.called
    signal.fire(Failure(ValueError("x")))
    late = signal.wait()
    for d in (early, late):
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(ValueError)
    signal.fire()  # ignored: fired once
    d = signal.wait()
    d.addErrback(lambda _: None)
    assert d.called


def test_port_in_use_fails_start_synchronously() -> None:
    """A listener whose port is taken raises from ``startService`` (twistd reports it and
    exits) and is not left running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        listener = ListenerService(live_reactor(), f"tcp:{port}:interface=127.0.0.1", Factory())
        with pytest.raises(CannotListenError):
            listener.startService()
        assert not listener.running


@pytest_twisted.ensureDeferred
async def test_listener_binds_and_releases_its_port() -> None:
    """A free port is bound at start and released at stop."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = ListenerService(live_reactor(), f"tcp:{port}:interface=127.0.0.1", Factory())
    listener.startService()
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    await listener.stopService()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_start_checks_the_fast_paths_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Start-up asks the guarded fast-path module to verify the installed libraries
    before anything listens, so a changed Twisted/Autobahn falls back to public APIs."""
    from jmappushd.net import _fastpath

    calls: list[str] = []

    def check() -> list[str]:
        calls.append("check")
        return []

    monkeypatch.setattr(_fastpath, "check", check)
    service, rec, *_ = build(tmp_path)
    service.startService()
    assert calls == ["check"]
    assert rec.events[0] == "start core"
