"""Liveness: heartbeats of the daemon's event loops, and systemd's watchdog fed only while they turn.

Design note. What can wedge overlayd is an event loop that stops turning: a
blocking call or a spin on the control loop (etcd, netlink, the supervised
tasks), or on the userspace data plane, which may run on a uvloop loop in its
own thread (:mod:`overlayd.backend.userspace`). Progress is therefore
measured by each loop turning, not by packets (an idle data plane is healthy)
nor by the supervised tasks doing work (lease renewal legitimately sleeps for
hours; a task that ends or fails already stops the daemon, see
:func:`overlayd.daemon.supervise`). Each loop runs a :class:`LoopHeartbeat`:
a no-op callback re-armed every :data:`TICK` seconds on that loop records the
time it ran. :class:`Liveness` names the heartbeats and says which one is
older than a limit. A heartbeat is watched from when its loop is due to
turn: one that has not beaten (never started, or stopped) within the same
limit of that moment counts as a problem too, so a data-plane thread that
hangs before its first beat is not taken for a healthy one; the limit is its
grace to start.

:class:`SystemdNotifier` runs on the control loop: it sends ``WATCHDOG=1``
every third of systemd's ``WatchdogSec`` only while no heartbeat is stale, so
a wedged data-plane thread stops the pings although the control loop still
runs, and a wedged control loop stops them because the notifier itself no
longer runs; systemd then kills and restarts the daemon. It also keeps
``STATUS=`` up to date. The health server (:mod:`overlayd.health`) answers
from its own thread and reads the same heartbeats, so ``/healthz`` can name a
wedged control loop instead of hanging with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from . import sdnotify

log = logging.getLogger("overlayd")

TICK = 0.5  # seconds between two heartbeats of a loop
STALL_AFTER = 5.0  # a heartbeat older than this (seconds) means its loop is wedged
STATUS_PERIOD = 1.0  # seconds between STATUS= checks when systemd has no watchdog for us


class LoopHeartbeat:
    """When an event loop last turned: ``last`` (``clock()`` time, None while not running).

    :meth:`start` and :meth:`stop` are called on the loop's own thread; ``last``
    may be read from any thread.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, tick: float = TICK):
        self.clock = clock
        self.tick = tick
        self.last: float | None = None
        self._handle: asyncio.Handle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> "LoopHeartbeat":
        """Beat on ``loop`` from now on, every ``tick`` seconds while it turns."""
        self.stop()
        self._beat(loop)
        return self

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last = self.clock()
        self._handle = loop.call_later(self.tick, self._beat, loop)

    def stop(self) -> None:
        """No more beats (``last`` is None): :class:`Liveness` then judges a watched loop not running."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.last = None


class Liveness:
    """The daemon's heartbeats by name (``control loop``, ``data plane``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.beats: dict[str, LoopHeartbeat] = {}
        self.due: dict[str, float] = {}  # when each watched loop was due to start turning

    def watch(self, name: str, beat: LoopHeartbeat) -> None:
        """Judge ``beat`` as ``name`` from now on: call it when its loop is due to start, which then
        has the stall limit as its grace to beat for the first time."""
        self.due[name] = self.clock()
        self.beats[name] = beat

    def ages(self) -> dict[str, float]:
        """Seconds since each running heartbeat's last beat (not yet started ones are left out)."""
        now = self.clock()
        return {name: now - last for name, beat in self.beats.copy().items()
                if (last := beat.last) is not None}

    def stalled(self, limit: float = STALL_AFTER) -> dict[str, float]:
        """The heartbeats older than ``limit`` seconds, with their ages: empty when all loops turn."""
        return {name: age for name, age in self.ages().items() if age > limit}

    def silent(self, limit: float = STALL_AFTER) -> dict[str, float]:
        """The heartbeats not beating (never started, or stopped) more than ``limit`` seconds after
        they were watched, with the seconds since then: empty when every loop started in time."""
        now = self.clock()
        return {name: now - self.due[name] for name, beat in self.beats.copy().items()
                if beat.last is None and now - self.due[name] > limit}

    def problem(self, limit: float = STALL_AFTER) -> str | None:
        """Which loops do not turn, as one line (for logs and ``/healthz``); None when all do."""
        lines = [describe_stalls(self.stalled(limit)),
                 ", ".join(f"{name} has no heartbeat {age:.0f}s after its start"
                           for name, age in self.silent(limit).items())]
        return ", ".join(line for line in lines if line) or None


def describe_stalls(stalled: Mapping[str, float]) -> str:
    """``data plane stalled for 12s`` (one line, for logs and ``/healthz``)."""
    return ", ".join(f"{name} stalled for {age:.0f}s" for name, age in stalled.items())


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """systemd's ``WatchdogSec`` for this process in seconds (``WATCHDOG_USEC``), or None.

    As ``sd_watchdog_enabled()``: a ``WATCHDOG_PID`` naming another process means
    the watchdog is not ours; an invalid or zero value means none.
    """
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class SystemdNotifier:
    """Keeps systemd informed once the daemon is ready: ``STATUS=`` whenever ``status()``
    changes, and ``WATCHDOG=1`` every ``watchdog/3`` seconds while no loop is stalled.

    A loop is stalled when its heartbeat is older than ``min(STALL_AFTER, watchdog/2)``, or when it
    has not beaten that long after it was watched (:meth:`Liveness.problem`).
    The first stall is logged once (and the recovery once); no ping is sent meanwhile.
    """

    def __init__(self, liveness: Liveness, status: Callable[[], str], watchdog: float | None,
                 notify: Callable[[str], bool] = sdnotify.notify,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.liveness = liveness
        self.status = status
        self.watchdog = watchdog
        self.notify = notify
        self.sleep = sleep
        self.period = watchdog / 3 if watchdog else STATUS_PERIOD
        self.stall_after = min(STALL_AFTER, watchdog / 2) if watchdog else STALL_AFTER
        self._status: str | None = None
        self._stalled = False

    def _new_status(self) -> list[str]:
        """``["STATUS=..."]`` when ``status()`` changed since it was last sent, else ``[]``."""
        status = self.status()
        if status == self._status:
            return []
        self._status = status
        return [f"STATUS={status}"]

    def status_changed(self) -> None:
        """Send ``STATUS=`` now if it changed (peers came or went), not at the next round."""
        lines = self._new_status()
        if lines:
            self.notify(lines[0])

    def step(self) -> str:
        """One round: what was sent to systemd ("" for nothing)."""
        lines = self._new_status()
        if self.watchdog:
            stalled = self.liveness.problem(self.stall_after)
            if stalled and not self._stalled:
                log.error("watchdog: %s; not pinging systemd (it restarts overlayd after WatchdogSec=%gs)",
                          stalled, self.watchdog)
            elif self._stalled and not stalled:
                log.warning("watchdog: every loop turns again; pinging systemd")
            self._stalled = bool(stalled)
            if not stalled:
                lines.append("WATCHDOG=1")
        message = "\n".join(lines)
        if message:
            self.notify(message)
        return message

    async def run(self) -> None:
        """Forever: :meth:`step`, then sleep ``period`` seconds."""
        while True:
            self.step()
            await self.sleep(self.period)
