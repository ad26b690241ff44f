"""The twistd plugin and Options (STYLE: test_tap)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python import usage

import twisted.plugins
from jmappushd import tap
from jmappushd.daemon.listeners import ListenerService


def test_plugin_is_discoverable() -> None:
    """getPlugins(IServiceMaker) yields the tapname jmappushd; no __init__.py is shipped."""
    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert "jmappushd" in names
    plugin_dir = Path(__file__).resolve().parent.parent / "twisted" / "plugins"
    assert not (plugin_dir / "__init__.py").exists()
    assert twisted.plugins is not None


def parsed_options(tmp_path: Path, server_extra: str = "") -> tap.Options:
    """Options for a config in ``tmp_path`` with both listeners on free loopback ports."""
    ini = tmp_path / "x.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}/state\nlisten = tcp:0:interface=127.0.0.1\n"
                   f"{server_extra}[admin]\nlisten = tcp:0:interface=127.0.0.1\n")
    options = tap.Options()
    options.parseOptions(["--config", str(ini)])
    return options


@pytest_twisted.ensureDeferred
async def test_options_build_the_service(tmp_path: Path) -> None:
    """Parsed options give a MultiService with the JMAP and admin listeners, already bound
    (so that a port in use is reported before twistd starts logging)."""
    service = tap.makeService(parsed_options(tmp_path))
    assert isinstance(service, MultiService)
    listeners = [s for s in service if isinstance(s, ListenerService)]
    assert len(listeners) == 2
    assert (tmp_path / "state" / "admin.token").stat().st_mode & 0o777 == 0o600
    try:
        assert all(listener.port is not None for listener in listeners)
        service.privilegedStartService()  # twistd's own call finds them bound
    finally:
        for listener in listeners:
            await listener.stopService()


def test_bad_config_is_one_line_without_usage(tmp_path: Path) -> None:
    """A config mistake stops the process with one line naming file, section and key: a
    SystemExit (status 1), not a UsageError, for which twistd would print its usage."""
    ini = tmp_path / "x.ini"
    ini.write_text("[jmap]\nmax-calls-in-request = many\n")
    with pytest.raises(tap.StartupRefused, match=r"^jmappushd: error: .*\[jmap\] max-calls-in"):
        tap.Options().parseOptions(["-c", str(ini)])
    with pytest.raises(tap.StartupRefused, match="cannot read") as info:
        tap.Options().parseOptions(["-c", str(tmp_path / "missing.ini")])
    assert not isinstance(info.value, usage.UsageError)
    assert str(info.value.code).count("\n") == 0


def test_port_in_use_is_refused_by_make_service(tmp_path: Path) -> None:
    """makeService binds the ports; one that is taken becomes StartupRefused naming it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ini = tmp_path / "x.ini"
        ini.write_text(f"[server]\nstate-dir = {tmp_path}/state\n"
                       f"listen = tcp:{port}:interface=127.0.0.1\n"
                       "[admin]\nlisten = tcp:0:interface=127.0.0.1\n")
        options = tap.Options()
        options.parseOptions(["--config", str(ini)])
        with pytest.raises(tap.StartupRefused) as info:
            tap.makeService(options)
    assert str(info.value.code) == (f"jmappushd: error: cannot listen on "
                                    f"tcp:{port}:interface=127.0.0.1: Address already in use")


def test_world_readable_admin_token_is_refused(tmp_path: Path) -> None:
    """An admin token file readable by others stops the daemon with the chmod to run."""
    token = tmp_path / "admin.token"
    token.write_text("x" * 40)
    token.chmod(0o644)
    ini = tmp_path / "x.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}\n[admin]\ntoken-file = {token}\n")
    with pytest.raises(tap.StartupRefused, match="chmod 600"):
        tap.Options().parseOptions(["-c", str(ini)])
