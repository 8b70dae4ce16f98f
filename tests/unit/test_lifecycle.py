"""Starting and stopping: the encapsulation port is bound before any lease,
signals do what --help says, the status file tells a stopped daemon from a
running one, and a data-plane thread that cannot start does not hang the daemon.

Signal tests run the daemon as a child process (tests/unit/daemon_child.py):
no root, no etcd, every wait bounded."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.cli.ctl import cli as ctl
from overlayd.errors import PlumbingError
from overlayd.lab.etcd import free_port
from overlayd.netconf import parse_config

CHILD = str(Path(__file__).with_name("daemon_child.py"))


def udp_backend(port: int):
    config = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": port}}))
    return create_backend(config, Underlay("lo", ipaddress.IPv4Address("127.0.0.1"), 1500), NodeOptions())


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Child:
    """daemon_child.py MODE as a process; its log goes to a file the test can poll."""

    def __init__(self, tmp_path: Path, mode: str):
        self.status_file = tmp_path / "status.json"
        self.log_path = tmp_path / "child.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, CHILD, mode, str(self.status_file)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str) -> None:
        assert wait_until(lambda: needle in self.log()), self.log()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def exit_status(self, timeout: float = 10.0) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def child(tmp_path):
    children = []

    def start(mode: str) -> Child:
        children.append(Child(tmp_path, mode))
        return children[-1]

    yield start
    for c in children:  # only the processes this test started
        c.kill()


# -- issue 8, point 12: the port is bound before any lease is taken -------------------

async def test_preflight_binds_the_port_and_names_who_holds_it():
    port = free_port()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", port))
    try:
        backend = udp_backend(port)
        with pytest.raises(PlumbingError) as err:
            await backend.preflight()
        message = str(err.value)
        assert f"127.0.0.1:{port}" in message and "in use" in message
        assert f"process {os.getpid()} (" in message  # who holds it
        assert "\n" not in message
    finally:
        squatter.close()


async def test_preflight_keeps_the_socket_for_the_data_plane():
    port = free_port()
    backend = udp_backend(port)
    await backend.preflight()
    try:
        assert backend.sock.getsockname() == ("127.0.0.1", port)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # no sharing, even when asked
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        other.close()
    finally:
        await backend.close()


# -- issue 8, point 13 -------------------------------------------------------------------

def test_stop_without_a_lease_does_not_claim_one_is_kept(child):
    c = child("waiting")
    c.wait_log("no network config")
    c.signal(signal.SIGTERM)
    assert c.exit_status() == 0, c.log()
    assert "no lease is held" in c.log()
    assert "kept" not in c.log()
    status = json.loads(c.status_file.read_text())  # written from the start (issue 21, point 5)
    assert status["state"] == "stopped" and status["phase"] == "waiting for config"
    assert "subnet" not in status and status["peers"] == []
    assert "stopped (SIGTERM), exit status 0" in c.log().splitlines()[-1]


# -- issue 21, point 5: a daemon waiting for etcd or its config does not look dead -------

def test_a_waiting_daemon_shows_its_phase_from_the_start(child):
    c = child("waiting")
    c.wait_log("no network config")
    status = json.loads(c.status_file.read_text())
    assert status["state"] == "starting" and status["phase"] == "waiting for config", status
    assert "no network config at /t/config" in status["detail"]
    assert status["pid"] == c.proc.pid and status["since"] >= status["started"]
    shown = CliRunner().invoke(ctl, ["status", "--status-file", str(c.status_file)])
    assert shown.exit_code == 5, shown.output
    first = shown.output.splitlines()[0]
    assert first.startswith("overlayd STARTING: waiting for config for ") and "no network config" in first
    assert "Traceback" not in shown.output
    c.signal(signal.SIGTERM)
    assert c.exit_status() == 0, c.log()


def test_clean_stop_marks_the_status_file_stopped(child):
    c = child("leased")
    assert wait_until(c.status_file.exists), c.log()
    assert json.loads(c.status_file.read_text())["state"] == "running"
    before = time.time()
    c.signal(signal.SIGTERM)
    assert c.exit_status() == 0, c.log()
    assert "the lease on 10.244.3.0/24 is kept" in c.log()
    status = json.loads(c.status_file.read_text())
    assert status["state"] == "stopped" and status["updated"] >= before
    assert status["stats"] == {"tx_packets": 10}  # the last counters stay readable


def test_sighup_is_logged_and_ignored(child):
    c = child("waiting")
    c.wait_log("no network config")
    c.signal(signal.SIGHUP)
    c.wait_log("SIGHUP ignored")
    assert c.exit_status(timeout=0.5) is None, c.log()  # still running
    c.signal(signal.SIGTERM)
    assert c.exit_status() == 0, c.log()


def test_second_sigterm_while_stopping_exits_at_once(child):
    c = child("slow-close")  # the cleanup blocks for 30 s
    assert wait_until(c.status_file.exists), c.log()
    c.signal(signal.SIGTERM)
    c.wait_log("stopping")
    time.sleep(0.3)  # now inside the blocked cleanup
    started = time.monotonic()
    c.signal(signal.SIGTERM)
    assert c.exit_status(timeout=5) == 128 + signal.SIGTERM, c.log()
    assert time.monotonic() - started < 5
    assert "SIGTERM again while stopping: exiting now" in c.log()


def test_uvloop_data_plane_that_cannot_start_fails_the_task_instead_of_hanging(tmp_path):
    pytest.importorskip("uvloop")
    try:
        res = subprocess.run([sys.executable, CHILD, "uvloop-fail", str(tmp_path / "status.json")],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the data-plane task hung after its thread failed to start")
    assert "PlumbingError: uvloop data-plane thread failed: OSError" in res.stdout, res.stdout + res.stderr
