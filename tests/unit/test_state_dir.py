"""The daemon's state directory (issue 18): ``--state-dir`` / OVERLAYD_STATE_DIR reach the backends
(NodeOptions.state_dir), and the systemd unit lets the daemon write there."""

from __future__ import annotations

import asyncio
import configparser
import errno
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from overlayd import daemon as daemon_module
from overlayd.cli.daemon import cli
from overlayd.errors import PlumbingError
from overlayd.plumbing import wg

UNIT = Path(__file__).parents[2] / "systemd" / "overlayd.service"


def options_of(monkeypatch, args, env=None):
    seen = []
    monkeypatch.setattr(daemon_module, "run", lambda options: seen.append(options) or 0)
    result = CliRunner().invoke(cli, ["--etcd-endpoints", "http://127.0.0.1:1", *args], env=env or {},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen[0]


def test_the_state_dir_flag_and_variable_reach_the_backends(monkeypatch, tmp_path):
    assert options_of(monkeypatch, []).node.state_dir == "/var/lib/overlayd"
    assert options_of(monkeypatch, ["--state-dir", str(tmp_path)]).node.state_dir == str(tmp_path)
    assert options_of(monkeypatch, [], {"OVERLAYD_STATE_DIR": str(tmp_path / "s")}).node.state_dir == str(tmp_path / "s")
    monkeypatch.chdir(tmp_path)
    assert options_of(monkeypatch, ["--state-dir", "rel"]).node.state_dir == str(tmp_path / "rel")


def test_the_unit_makes_the_state_dir_and_wireguard_gos_socket_dir_writable():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["ProtectSystem"] == "strict"  # so every path written must be allowed
    assert service["StateDirectory"].split() == ["overlayd"]  # /var/lib/overlayd, the default --state-dir
    assert service["StateDirectoryMode"] == "0700"  # the private key's directory
    assert "wireguard" in service["RuntimeDirectory"].split()  # /run/wireguard: wireguard-go's UAPI sockets


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")
def test_a_state_dir_that_cannot_be_written_is_one_line(monkeypatch, tmp_path):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(wg, "write_atomic", read_only)
    path = str(tmp_path / "wireguard" / "private.key")
    with pytest.raises(PlumbingError, match=r"^cannot write the WireGuard key .*private.key: Read-only file "
                                            r"system \(is --state-dir writable\?\)$"):
        asyncio.run(wg.load_or_create_key(path))
