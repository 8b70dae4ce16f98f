"""An etcd outage is logged once, in plain words, and its end at INFO (issue 21).

etcd is frozen with SIGSTOP (a blackholed endpoint: connections hang, nothing answers).
Before, a node logged "etcd unreachable" from the probe and again in "peer watch resumes
(etcd unreachable (...gRPC text...))", startup's wait logged it once per distinct gRPC text,
and "etcd back" was a warning (startup logged none).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import time

import pytest

from overlayd.daemon import wait_for_config
from overlayd.lease.connectivity import Connectivity
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.manager import LeaseManager, follow_peers
from overlayd.lease.model import LeaseAttrs
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config
from tests.integration.test_etcd_store import own_etcd  # noqa: F401 (a fixture)

pytestmark = pytest.mark.etcd

CFG = parse_config({"Network": "10.244.0.0/16"})


async def _until(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def _outage_lines(caplog) -> tuple[list[str], list[logging.LogRecord]]:
    unreachable = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if r.getMessage().startswith("etcd back")]
    return unreachable, back


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped: kill() returns before a busy Go process's threads
    all reach the group stop, and a request sent meanwhile was answered (a CI failure)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that exited
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in "tT" for state in states)


@contextlib.contextmanager
def frozen(server):
    os.kill(server.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not stopped(server.pid):
        assert time.monotonic() < deadline, f"etcd (PID {server.pid}) did not stop in 5 s"
        time.sleep(0.01)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_a_running_node_logs_an_outage_once_and_its_end_at_info(own_etcd, etcd_prefix, caplog):  # noqa: F811
    store = EtcdStore(own_etcd.endpoint, etcd_prefix, timeout=1)
    manager = LeaseManager(store, CFG, LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"), ttl=30)
    lease = await manager.acquire()
    conn = Connectivity(store.probe, interval=0.5)
    watcher = LeaseWatcher(own_subnet=lease.subnet, config=CFG)
    caplog.set_level(logging.DEBUG, logger="overlayd")
    tasks = [asyncio.create_task(conn.run()), asyncio.create_task(manager.keep_renewed(lease, conn)),
             asyncio.create_task(follow_peers(store, watcher, lambda b: None, conn, on_own=manager.own_key_seen))]
    try:
        await asyncio.sleep(1)
        with frozen(own_etcd):
            await _until(lambda: not conn.up)
            await asyncio.sleep(5)  # several probe rounds, watch and renew retries while it is down
        await _until(lambda: conn.up)
        await asyncio.sleep(2)  # the watch and the renewal resume
        assert [t for t in tasks if t.done()] == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
    unreachable, back = _outage_lines(caplog)
    assert unreachable == [f"etcd unreachable at {own_etcd.endpoint}: timed out"], unreachable
    assert len(back) == 1 and back[0].levelno == logging.INFO, [r.getMessage() for r in back]


async def test_startup_logs_an_outage_once_and_its_end_at_info(own_etcd, etcd_prefix, caplog):  # noqa: F811
    store = EtcdStore(own_etcd.endpoint, etcd_prefix, timeout=1)
    conn = Connectivity(store.probe)
    caplog.set_level(logging.DEBUG, logger="overlayd")
    phases = []
    try:
        with frozen(own_etcd):
            waiting = asyncio.create_task(wait_for_config(store, etcd_prefix, connectivity=conn,
                                                          on_wait=lambda p, d: phases.append(p)))
            await asyncio.sleep(8)  # the "3 times in 8 s"
        writer = EtcdStore(own_etcd.endpoint, etcd_prefix)
        try:
            await writer.put_config(b'{"Network": "10.244.0.0/16"}')
        finally:
            await writer.close()
        config = await asyncio.wait_for(waiting, 30)
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await store.close()
    assert str(config.network) == "10.244.0.0/16"
    unreachable, back = _outage_lines(caplog)
    assert unreachable == [f"etcd unreachable at {own_etcd.endpoint}: timed out"], unreachable
    assert len(back) == 1 and back[0].levelno == logging.INFO
    assert phases[0] == "waiting for etcd"
