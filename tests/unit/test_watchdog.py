"""systemd's watchdog and STATUS= (issue 11, section 3): WATCHDOG=1 only while the control loop
and the data plane both turn, STATUS= with the lease and peer count.

The logic is tested with fake heartbeats and a fake clock; a real daemon child
(tests/unit/watchdog_child.py, uvloop data-plane thread) is watched through a fake
NOTIFY_SOCKET while its data plane, then its control loop, is wedged. No root, no etcd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from overlayd import sdnotify
from overlayd.lab.etcd import free_port
from overlayd.watchdog import (STALL_AFTER, Liveness, LoopHeartbeat, SystemdNotifier, describe_stalls,
                               watchdog_interval)

CHILD = str(Path(__file__).with_name("watchdog_child.py"))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat_at(when: float | None) -> LoopHeartbeat:
    beat = LoopHeartbeat()
    beat.last = when
    return beat


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def liveness(clock):
    live = Liveness(clock)
    live.watch("control loop", beat_at(clock.now))
    live.watch("data plane", beat_at(clock.now))
    return live


# -- heartbeats ---------------------------------------------------------------------------

async def test_a_loop_heartbeat_beats_while_its_loop_turns_and_stops_when_told():
    beat = LoopHeartbeat(tick=0.01)
    assert beat.last is None  # not running: not judged
    beat.start(asyncio.get_running_loop())
    first = beat.last
    await asyncio.sleep(0.05)
    assert beat.last > first
    beat.stop()
    assert beat.last is None
    await asyncio.sleep(0.03)
    assert beat.last is None


async def test_a_blocked_loop_leaves_its_heartbeat_behind():
    clock = Clock()
    beat = LoopHeartbeat(clock, tick=0.01).start(asyncio.get_running_loop())
    live = Liveness(clock)
    live.watch("data plane", beat)
    clock.now += 10  # the loop did not turn for 10 "seconds"
    assert live.stalled() == {"data plane": 10}
    await asyncio.sleep(0.03)  # it turns again
    assert live.stalled() == {}
    beat.stop()


def test_liveness_names_only_stale_running_heartbeats(liveness, clock):
    liveness.watch("not started", beat_at(None))
    clock.now += STALL_AFTER - 1
    assert liveness.stalled() == {}
    liveness.beats["control loop"].last = clock.now
    clock.now += 2
    assert liveness.stalled() == {"data plane": STALL_AFTER + 1}
    assert describe_stalls(liveness.stalled()) == "data plane stalled for 6s"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),  # ours
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_from_systemd_environment(env, expected):
    assert watchdog_interval(env, pid=4242) == expected


# -- the notifier ---------------------------------------------------------------------------

class Status:
    def __init__(self):
        self.line = "leased 10.244.3.0/24; 2 peers"

    def __call__(self) -> str:
        return self.line


def notifier(liveness, watchdog=30.0):
    sent = []
    return SystemdNotifier(liveness, Status(), watchdog, notify=sent.append), sent


def test_pings_while_every_loop_turns_and_status_only_when_it_changes(liveness):
    n, sent = notifier(liveness)
    assert n.period == 10.0 and n.stall_after == STALL_AFTER
    n.step()
    n.step()
    n.status.line = "leased 10.244.3.0/24; 3 peers"
    n.step()
    assert sent == ["STATUS=leased 10.244.3.0/24; 2 peers\nWATCHDOG=1", "WATCHDOG=1",
                    "STATUS=leased 10.244.3.0/24; 3 peers\nWATCHDOG=1"]


def test_a_status_change_is_sent_at_once_between_rounds(liveness):
    """Peers arriving right after start were shown as '0 peers' until the next round, up to
    WatchdogSec/3 later (found with the shipped unit, issue 19)."""
    n, sent = notifier(liveness)
    n.step()
    n.status.line = "leased 10.244.3.0/24; 3 peers"
    n.status_changed()
    n.status_changed()  # unchanged: nothing more
    n.step()
    assert sent == ["STATUS=leased 10.244.3.0/24; 2 peers\nWATCHDOG=1", "STATUS=leased 10.244.3.0/24; 3 peers",
                    "WATCHDOG=1"]


def test_a_stalled_data_plane_stops_the_pings_until_it_turns_again(liveness, clock, caplog):
    n, sent = notifier(liveness)
    n.step()
    clock.now += 6
    liveness.beats["control loop"].last = clock.now  # the control loop turns, the data plane does not
    with caplog.at_level(logging.WARNING, "overlayd"):
        n.step()
        n.step()
        assert sent[1:] == []  # no ping, and nothing else changed
        liveness.beats["data plane"].last = clock.now
        n.step()
    assert sent[1:] == ["WATCHDOG=1"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["watchdog: data plane stalled for 6s; not pinging systemd "
                      "(it restarts overlayd after WatchdogSec=30s)"]  # once, not per round
    assert "every loop turns again" in caplog.text


def test_a_data_plane_that_never_starts_stops_the_pings_after_its_grace(clock, caplog):
    live = Liveness(clock)
    control = beat_at(clock.now)
    live.watch("control loop", control)
    live.watch("data plane", LoopHeartbeat(clock))  # registered; its loop never beats
    n, sent = notifier(live)
    n.step()
    clock.now += STALL_AFTER - 1  # within its grace: starting, not stalled
    control.last = clock.now
    n.step()
    assert sent[1:] == ["WATCHDOG=1"]
    clock.now += 2
    control.last = clock.now
    with caplog.at_level(logging.WARNING, "overlayd"):
        n.step()
    assert sent[2:] == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "watchdog: data plane has no heartbeat 6s after its start; not pinging systemd "
        "(it restarts overlayd after WatchdogSec=30s)"]


def test_a_short_watchdog_judges_stalls_sooner(liveness):
    n, _ = notifier(liveness, watchdog=3.0)
    assert n.period == 1.0 and n.stall_after == 1.5


def test_without_a_watchdog_only_status_is_sent(liveness, clock):
    n, sent = notifier(liveness, watchdog=None)
    clock.now += 60  # stalls are not systemd's business then
    n.step()
    n.step()
    assert sent == ["STATUS=leased 10.244.3.0/24; 2 peers"]


def test_sd_notify_sends_one_datagram(tmp_path, monkeypatch):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sdnotify.notify("WATCHDOG=1\nSTATUS=x")
        assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=x"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("WATCHDOG=1")


# -- a real daemon process, watched through a fake NOTIFY_SOCKET ----------------------------

class Watched:
    """watchdog_child.py with WatchdogSec=3 (pings every second, a loop stalls after 1.5 s)."""

    def __init__(self, tmp_path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp_path / "notify.sock"))
        self.healthz_port = free_port()
        self.log_path = tmp_path / "child.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="3000000")
        env.pop("WATCHDOG_PID", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, CHILD, str(free_port()), str(self.healthz_port)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def messages(self, seconds: float) -> list[str]:
        """Every datagram received in the next ``seconds``."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def pings(self, seconds: float) -> int:
        return sum("WATCHDOG=1" in m.splitlines() for m in self.messages(seconds))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}{path}", timeout=5) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


@pytest.fixture
def watched(tmp_path):
    child = Watched(tmp_path)
    yield child
    child.close()  # only the process this test started


def wait_for_pings(child: Watched, count: int = 2, timeout: float = 30.0) -> list[str]:
    """The messages until ``count`` pings came: the child may take seconds to start on a loaded
    machine (a fixed 6 s window saw none at load average 10)."""
    messages, deadline = [], time.monotonic() + timeout
    while sum("WATCHDOG=1" in m for m in messages) < count and (left := deadline - time.monotonic()) > 0:
        messages += child.messages(min(left, 1.0))
    assert sum("WATCHDOG=1" in m for m in messages) >= count, (messages, child.log())
    return messages


def test_a_wedged_data_plane_stops_the_pings_and_fails_healthz(watched):
    messages = wait_for_pings(watched)
    assert "STATUS=leased 10.244.3.0/24; 1 peer" in messages[0].splitlines(), messages
    assert watched.get("/healthz") == (200, "ok\n")
    watched.proc.send_signal(signal.SIGUSR1)  # blocks the data-plane thread's loop only
    watched.messages(2.6)  # pings may go on until the heartbeat is 1.5 s old, plus one period
    assert watched.pings(3.5) == 0, watched.log()
    assert "watchdog: data plane stalled for" in watched.log()
    status, body = watched.get("/healthz")  # the control loop still answers: it says what stalled
    assert status == 503 and body.startswith("data plane stalled for"), body


def test_a_wedged_control_loop_stops_the_pings_and_healthz_names_it(watched):
    wait_for_pings(watched)
    watched.proc.send_signal(signal.SIGUSR2)  # blocks the control loop (the notifier runs there)
    watched.messages(1.2)
    assert watched.pings(3.5) == 0, watched.log()
    time.sleep(STALL_AFTER - 4.5)  # /healthz judges loops stalled after STALL_AFTER
    status, body = watched.get("/healthz")  # served from its own thread, so it still answers
    assert status == 503 and "control loop stalled for" in body, body
