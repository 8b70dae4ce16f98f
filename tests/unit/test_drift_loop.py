"""The drift-repair task: one log line per repair, and a failed pass (an OverlayError or a
bug) is logged once and retried next period: the task never dies (pure: repairs are faked)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from overlayd import daemon as daemon_mod
from overlayd.daemon import Daemon, DaemonOptions
from overlayd.errors import PlumbingError


async def test_failed_passes_are_logged_once_and_the_loop_carries_on(monkeypatch, caplog):
    gone = PlumbingError("no network interface named tun0")
    script = [gone, gone, KeyError("a bug"), ["route 10.244.0.0/16 dev tun0 was missing"], [], gone]
    finished = asyncio.Event()

    async def fake_repair(backend, lease, ip_masq):
        item = script.pop(0) if script else []
        if not script:
            finished.set()
        if isinstance(item, Exception):
            raise item
        return item

    monkeypatch.setattr(daemon_mod, "repair_drift", fake_repair)
    daemon = Daemon(DaemonOptions("http://127.0.0.1:2379", "/coreos.com/network", resync_interval=0.001,
                                  full_resync_interval=0.001))  # a pass every period, change or not
    with caplog.at_level(logging.INFO, logger="overlayd"):
        task = asyncio.create_task(daemon._resync_loop())
        await asyncio.wait_for(finished.wait(), 5)
        await asyncio.sleep(0.05)  # more passes after the last failure
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "drift repair failed, retrying in 0.001s: no network interface named tun0",
        "drift repair failed, retrying in 0.001s: KeyError: 'a bug'",
        "repaired: route 10.244.0.0/16 dev tun0 was missing",
        "drift repair failed, retrying in 0.001s: no network interface named tun0",
    ]


@pytest.mark.parametrize("resync, full, periods", [
    (10, 60, 6), (1, 3600, 3600), (10, 5, 1), (3, 10, 4), (0.1, 60, 600), (0.001, 0.001, 1),
])
def test_the_full_resync_interval_in_periods(resync, full, periods):
    options = DaemonOptions("http://127.0.0.1:2379", "/coreos.com/network", resync_interval=resync,
                            full_resync_interval=full)
    assert options.full_resync_periods == periods


async def test_no_pass_without_a_change_until_the_full_resync(monkeypatch):
    passes = []

    async def fake_repair(backend, lease, ip_masq):
        passes.append(daemon.kernel_watch.quiet)
        return []

    monkeypatch.setattr(daemon_mod, "repair_drift", fake_repair)
    daemon = Daemon(DaemonOptions("http://127.0.0.1:2379", "/coreos.com/network", resync_interval=0.001,
                                  full_resync_interval=0.004))
    daemon.kernel_watch.open = lambda: None  # no notices: only the first pass and the full ones
    task = asyncio.create_task(daemon._resync_loop())
    while len(passes) < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert daemon.kernel_watch.checks == {"change": 1, "periodic": 2, "unwatched": 0}
