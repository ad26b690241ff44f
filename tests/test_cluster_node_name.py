"""``[cluster] node-name``'s default: the host name and the first listen port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from jmappushd.daemon.cluster import node_name
from tests.support import make_config


def test_the_name_given_wins(tmp_path: Path) -> None:
    assert node_name(make_config(tmp_path, sections={"cluster": "node-name = mail-7"})) \
        == "mail-7"


def test_the_default_is_host_and_first_listen_port(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    port = config.server.listen[0].split(":")[1]
    host = socket.gethostname().split(".")[0]
    assert node_name(config) == f"{host}:{port}"


def test_a_wrapped_or_portless_endpoint(tmp_path: Path) -> None:
    text = (tmp_path / "x").as_posix()
    config = make_config(tmp_path, sections={})
    host = socket.gethostname().split(".")[0]
    wrapped = config.__class__(server=config.server.__class__(
        listen=("reuseport:tcp:8089:interface=127.0.0.1",)))
    assert node_name(wrapped) == f"{host}:8089"
    unix = config.__class__(server=config.server.__class__(listen=(f"unix:{text}",)))
    assert node_name(unix) == f"{host}:{os.getpid()}"
