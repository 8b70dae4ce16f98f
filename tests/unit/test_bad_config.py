"""Configs an operator may write that cannot work (issue 8, points 9-11), end to end:
``overlayctl config set`` refuses them in one line before touching etcd, and a
starting daemon that finds one stored keeps waiting for a fix instead of exiting."""

from __future__ import annotations

import json
import logging

import pytest

from overlayd.cli.ctl import cli as ctl
from overlayd.daemon import wait_for_config
from tests.unit.test_cli import DEAD, one_line_error, run
from tests.unit.test_daemon_startup import GOOD, ScriptedStore

BAD = [
    ("[" * 100000, "config is not valid JSON: nested too deeply"),
    ('{"Network": ' * 100000, "config is not valid JSON: nested too deeply"),
    ('{"Network": "0.0.0.0/0"}', "Network: 0.0.0.0/0 overlaps"),
    ('{"Network": "127.0.0.0/8"}', "overlaps loopback"),
    ('{"Network": "224.0.0.0/4"}', "overlaps multicast"),
    ('{"Network": "10.0.0.0/8", "SubnetLen": 30}', "SubnetLen: /30 gives 4194303 subnets"),
    ('{"Network": 123}', "Network: not an IPv4 network string"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": 5}', "SubnetMin: not an IPv4 address string"),
]


@pytest.mark.parametrize("config, needle", BAD)
def test_config_set_refuses_in_one_line_before_touching_etcd(config, needle):
    result = run(ctl, ["--etcd-endpoints", DEAD, "--timeout", "1", "config", "set", "-"], input=config)
    one_line_error(result, needle)
    assert len(result.output) < 300


@pytest.mark.parametrize("config, needle", BAD)
async def test_a_starting_daemon_waits_for_a_fix(config, needle, caplog):
    store = ScriptedStore([config.encode(), config.encode(), GOOD])

    async def sleep(seconds):
        return None

    with caplog.at_level(logging.WARNING, logger="overlayd"):
        cfg = await wait_for_config(store, "/coreos.com/network", sleep=sleep)
    assert str(cfg.network) == json.loads(GOOD)["Network"]
    [line] = [r.getMessage() for r in caplog.records]
    assert needle in line and "waiting for a fix" in line
