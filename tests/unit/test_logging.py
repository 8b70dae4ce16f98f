"""Log lines carry a timestamp, except under journald (which keeps its own); under journald
they carry sd-daemon priority prefixes (issue 21). --log-level / OVERLAYD_LOG_LEVEL, the
startup and "stopped" lines, --version."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from overlayd import __version__
from overlayd.cli.common import log_formatter, syslog_priority, under_journald
from overlayd.cli.daemon import cli as daemon_cli, effective_flags
from overlayd.lab.etcd import free_port

from .test_lifecycle import wait_until

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def _record(message: str = "leased 10.244.3.0/24", level: int = logging.INFO, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("overlayd", level, __file__, 1, message, None, exc_info)


def _journal_env(path) -> dict:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_timestamp_on_every_line_outside_journald(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        line = log_formatter("overlayd", stream, environ={}).format(_record())
    assert re.fullmatch(STAMP + r" overlayd: INFO leased 10\.244\.3\.0/24", line), line


def test_no_timestamp_when_stderr_is_the_journal_stream(tmp_path):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        env = _journal_env(path)
        assert under_journald(stream, env)
        # journald keeps the time and the program's name itself; the prefix is the entry's priority
        assert log_formatter("overlayd", stream, env).format(_record()) == "<6>INFO leased 10.244.3.0/24"


def test_inherited_journal_stream_for_another_file_still_gets_timestamps(tmp_path):
    """A process started by a journald-logged service, with stderr redirected to a file."""
    (tmp_path / "journal").write_text("")
    env = _journal_env(tmp_path / "journal")
    with open(tmp_path / "log", "w") as stream:
        assert not under_journald(stream, env)
        assert re.match(STAMP + " overlayd: ", log_formatter("overlayd", stream, env).format(_record()))


def test_malformed_journal_stream_or_no_file_descriptor_means_not_journald(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        assert not under_journald(stream, {"JOURNAL_STREAM": "garbage"})

    class NoFd:
        def fileno(self):
            raise OSError("no fd")  # io.StringIO raises io.UnsupportedOperation, an OSError

    assert not under_journald(NoFd(), {"JOURNAL_STREAM": "1:2"})


@pytest.mark.parametrize("level, line", [
    (logging.DEBUG, "<7>DEBUG x"), (logging.INFO, "<6>INFO x"), (logging.WARNING, "<4>WARNING x"),
    (logging.ERROR, "<3>ERROR x"), (logging.CRITICAL, "<2>CRITICAL x"),
])
def test_journald_lines_carry_their_priority(tmp_path, level, line):
    """So that 'journalctl -p warning' shows warnings and errors only."""
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        assert log_formatter("overlayd", stream, _journal_env(path)).format(_record("x", level)) == line
    assert syslog_priority(level) == int(line[1])


def test_every_line_of_a_journald_record_carries_the_priority(tmp_path):
    """journald makes an entry of every line: a traceback's lines would be filed at the default priority."""
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        text = log_formatter("overlayd", stream, _journal_env(path)).format(_record("bug", logging.ERROR, exc_info))
    lines = text.splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>ValueError: boom"


def test_version():
    result = CliRunner().invoke(daemon_cli, ["--version"])
    assert result.exit_code == 0 and result.output == f"overlayd {__version__}\n"


def test_log_level_is_in_help_with_its_environment_variable():
    result = CliRunner().invoke(daemon_cli, ["--help"], terminal_width=200)
    assert "--log-level [debug|info|warning|error]" in result.output
    assert "OVERLAYD_LOG_LEVEL" in result.output
    assert "Deprecated: -v is --log-level debug" in result.output


def test_effective_flags_show_paths_but_no_secrets():
    flags = effective_flags([
        ("etcd_endpoints", "https://198.18.0.2:2379"), ("etcd_keyfile", "/etc/overlayd/key.pem"),
        ("etcd_password", "hunter2"), ("etcd_username", None), ("iface", ("eth0", "eth1")), ("iface_regex", ()),
        ("ip_masq", True), ("udp_checksum", False), ("lease_ttl", 86400), ("healthz_addr", ("127.0.0.1", 10256)),
        ("log_level", "info"), ("verbose", 0)])
    assert flags == ("--etcd-endpoints=https://198.18.0.2:2379 --etcd-keyfile=/etc/overlayd/key.pem "
                     "--etcd-password=(set) --iface=eth0,eth1 --ip-masq --lease-ttl=86400 "
                     "--healthz-addr=127.0.0.1:10256")
    assert "hunter2" not in flags


def _daemon_process(tmp_path, env: dict) -> tuple[subprocess.Popen, Path]:
    """overlayd against an etcd that is not there (a free port), stderr into a file."""
    log = tmp_path / "overlayd.log"
    with open(log, "w") as stream:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overlayd.cli.daemon", "--etcd-endpoints", f"http://127.0.0.1:{free_port()}",
             "--subnet-file", str(tmp_path / "subnet.env"), "--status-file", str(tmp_path / "status.json")],
            stdout=stream, stderr=stream, stdin=subprocess.DEVNULL,
            env={**os.environ, **env})
    return proc, log


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.root  # the daemon checks for CAP_NET_ADMIN before it waits for etcd
def test_daemon_under_journald_startup_and_stopped_lines_with_priorities(tmp_path):
    log = tmp_path / "overlayd.log"
    log.write_text("")
    proc, log = _daemon_process(tmp_path, {**_journal_env(log), "OVERLAYD_ETCD_PASSWORD": "hunter2",
                                           "OVERLAYD_ETCD_USERNAME": "root", "OVERLAYD_LOG_LEVEL": "DEBUG"})
    try:
        assert wait_until(lambda: "etcd unreachable" in log.read_text(), 15), log.read_text()
    finally:
        code = _stop(proc)
    lines = log.read_text().splitlines()
    assert code == 0, lines
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines  # every line, journald files it by priority
    assert not any(re.search(STAMP, line) or "overlayd:" in line for line in lines), lines  # journald adds them
    first = lines[0]
    assert first.startswith(f"<6>INFO overlayd {__version__} starting: pid {proc.pid}, data path "), first
    assert "health off" in first and "--etcd-endpoints=http://127.0.0.1:" in first
    assert f"--status-file={tmp_path}/status.json" in first and "--etcd-password=(set)" in first
    assert "hunter2" not in log.read_text()
    assert any(line.startswith("<7>DEBUG ") for line in lines), lines  # OVERLAYD_LOG_LEVEL=DEBUG
    assert any(line.startswith("<4>WARNING etcd unreachable at http://127.0.0.1:") for line in lines), lines
    assert lines[-1] == "<6>INFO stopped (SIGTERM), exit status 0", lines


@pytest.mark.root
def test_log_level_from_the_environment_outside_journald(tmp_path):
    proc, log = _daemon_process(tmp_path, {"OVERLAYD_LOG_LEVEL": "warning"})
    try:
        assert wait_until(lambda: "etcd unreachable" in log.read_text(), 15), log.read_text()
    finally:
        code = _stop(proc)
    lines = log.read_text().splitlines()
    assert code == 0 and lines, lines
    assert all(re.match(STAMP + " overlayd: (WARNING|ERROR) ", line) for line in lines), lines  # no INFO
