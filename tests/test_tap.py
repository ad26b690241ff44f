"""The twistd plugin and Options (STYLE: test_tap)."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_options_build_the_service(tmp_path: Path) -> None:
    """Parsed options give a MultiService with the JMAP and admin listeners."""
    ini = tmp_path / "x.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}/state\nlisten = tcp:0:interface=127.0.0.1\n"
                   "[admin]\nlisten = tcp:0:interface=127.0.0.1\n")
    options = tap.Options()
    options.parseOptions(["--config", str(ini)])
    service = tap.makeService(options)
    assert isinstance(service, MultiService)
    listeners = [s for s in service if isinstance(s, ListenerService)]
    assert len(listeners) == 2
    assert (tmp_path / "state" / "admin.token").stat().st_mode & 0o777 == 0o600


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    """A config mistake becomes a UsageError naming file, section and key."""
    ini = tmp_path / "x.ini"
    ini.write_text("[jmap]\nmax-calls-in-request = many\n")
    with pytest.raises(usage.UsageError, match=r"\[jmap\] max-calls-in-request"):
        tap.Options().parseOptions(["-c", str(ini)])
    with pytest.raises(usage.UsageError, match="cannot read"):
        tap.Options().parseOptions(["-c", str(tmp_path / "missing.ini")])


def test_world_readable_admin_token_is_refused(tmp_path: Path) -> None:
    """An admin token file readable by others stops the daemon with the chmod to run."""
    token = tmp_path / "admin.token"
    token.write_text("x" * 40)
    token.chmod(0o644)
    ini = tmp_path / "x.ini"
    ini.write_text(f"[server]\nstate-dir = {tmp_path}\n[admin]\ntoken-file = {token}\n")
    with pytest.raises(usage.UsageError, match="chmod 600"):
        tap.Options().parseOptions(["-c", str(ini)])
