"""scripts/bench-control's simulated nodes: waves of acquisitions, retried as the daemon retries."""

from __future__ import annotations

import asyncio

import pytest

from overlayd.errors import StoreUnavailable
from overlayd.lab.simnodes import _waves


class FakeManager:
    """Acquires after a yield; ``failures`` times 'etcd unreachable' first. Counts who runs at once."""

    running = peak = 0

    def __init__(self, index: int, failures: int = 0):
        self.index, self.failures, self.lease = index, failures, None

    async def acquire(self):
        cls = type(self)
        cls.running += 1
        cls.peak = max(cls.peak, cls.running)
        try:
            await asyncio.sleep(0)
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("etcd unreachable at http://198.18.0.2:2379: timed out")
            self.lease = f"lease {self.index}"
            return self.lease
        finally:
            cls.running -= 1


@pytest.mark.parametrize("count, wave, peak", [(10, 3, 3), (10, 10, 10), (5, 8, 5), (7, 1, 1)])
async def test_at_most_a_wave_acquires_at_once_and_leases_keep_the_nodes_order(count, wave, peak):
    FakeManager.running = FakeManager.peak = 0
    managers = [FakeManager(i) for i in range(count)]
    busy, took = [0] * count, [0.0] * count
    assert await _waves(managers, wave, busy, took) == [f"lease {i}" for i in range(count)]
    assert FakeManager.peak == peak
    assert busy == [0] * count


async def test_a_node_etcd_does_not_answer_retries_as_the_daemon_does(monkeypatch):
    pauses = []

    async def sleep(seconds):  # the daemon's backoff, recorded instead of slept (0: a fake's yield)
        if seconds:
            pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    managers = [FakeManager(0, failures=3), FakeManager(1)]
    busy, took = [0, 0], [0.0, 0.0]
    assert await _waves(managers, 2, busy, took) == ["lease 0", "lease 1"]
    assert busy == [3, 0]
    assert len(pauses) == 3 and pauses[0] <= 0.5 and pauses[2] > 0.5  # jittered, doubling from 0.5 s
