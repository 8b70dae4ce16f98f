"""The drift-repair task: one log line per repair, and a failed pass (an OverlayError or a
bug) is logged once and retried next period: the task never dies (pure: repairs are faked)."""

from __future__ import annotations

import asyncio
import logging

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
    daemon = Daemon(DaemonOptions("http://127.0.0.1:2379", "/coreos.com/network", resync_interval=0.001))
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
