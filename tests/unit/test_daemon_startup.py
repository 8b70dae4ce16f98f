"""The daemon's startup waits: one log line per new problem, retries with backoff,
no crash for what an operator may still be fixing (pure: fake store, fake sleep)."""

from __future__ import annotations

import json
import logging


from overlayd.daemon import retry_unavailable, wait_for_config
from overlayd.errors import StoreUnavailable


class ScriptedStore:
    """get_config answers from a script: bytes, None (missing) or an exception."""

    def __init__(self, script):
        self.script = list(script)

    async def get_config(self):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


GOOD = json.dumps({"Network": "10.244.0.0/16"}).encode()
BAD = json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 33}).encode()


async def test_waits_through_unreachable_missing_and_invalid_config(caplog):
    down = StoreUnavailable("etcd unreachable at http://198.18.0.2:2379")
    store = ScriptedStore([down, down, down, None, None, BAD, BAD, GOOD])
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    with caplog.at_level(logging.WARNING, logger="overlayd"):
        config = await wait_for_config(store, "/coreos.com/network", sleep=sleep)
    assert str(config.network) == "10.244.0.0/16"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # one line per new problem, not one per retry
    assert "unreachable" in lines[0]
    assert "no network config at /coreos.com/network/config" in lines[1]
    assert "SubnetLen" in lines[2]
    assert len(sleeps) == 7 and sleeps[0] < sleeps[2] and max(sleeps) <= 10.0  # backoff, capped


async def test_retry_unavailable_returns_once_etcd_answers(caplog):
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise StoreUnavailable("connection refused")
        return "leased"

    async def sleep(seconds):
        return None

    with caplog.at_level(logging.WARNING, logger="overlayd"):
        assert await retry_unavailable(flaky, "cannot lease a subnet", sleep=sleep) == "leased"
    assert len(calls) == 4
    assert [r.getMessage() for r in caplog.records] == ["cannot lease a subnet: connection refused; retrying"]
