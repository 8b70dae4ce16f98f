"""Issue 16, point 3 (a key that points at us but is not ours): the daemon warns once per such
key, shows it in /metrics and deletes it when it hangs on the daemon's own etcd lease."""

import asyncio
import ipaddress
import logging
from types import SimpleNamespace

from prometheus_client.core import Metric

from overlayd.daemon import Daemon, DaemonOptions
from overlayd.health import CountingLeaseWatcher, DaemonCollector
from overlayd.lease.connectivity import Connectivity
from overlayd.lease.manager import follow_peers
from overlayd.lease.memory import MemoryStore
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import LeaseEvent
from overlayd.netconf import parse_config

N = ipaddress.IPv4Network
CFG = parse_config({"Network": "10.244.0.0/16"})
ME = LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp")


class Backend:
    config = CFG

    def __init__(self):
        self.batches = []

    async def apply(self, batch):
        self.batches.append(batch)


async def wait_until(predicate, timeout=2.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def metric(daemon, name: str) -> float:
    state = SimpleNamespace(ready=True, lease=daemon.lease, lease_lost=False, backend=None, watcher=daemon.watcher,
                            connectivity=SimpleNamespace(up=True, outages=0, reconnects=0),
                            liveness=SimpleNamespace(ages=lambda: {}), kernel_watch=daemon.kernel_watch)
    for family in DaemonCollector(state).collect():
        if isinstance(family, Metric) and family.name == name:
            return family.samples[0].value
    raise AssertionError(f"no {name}")


async def test_a_key_naming_us_is_warned_about_once_counted_and_deleted_when_on_our_etcd_lease(caplog, tmp_path):
    store = MemoryStore(lambda: 1000.0)
    own = await store.create_lease(N("10.244.3.0/24"), ME, 60)
    # two keys name us: one an operator wrote on its own TTL, one bound to our etcd lease (a bug's)
    by_hand = await store.create_lease(N("10.244.4.0/24"), ME, 60)
    await store.create_lease(N("10.244.9.0/24"), LeaseAttrs(ipaddress.IPv4Address("198.18.0.12"), "udp"), 60)
    daemon = Daemon(DaemonOptions(etcd_endpoints="http://127.0.0.1:9", etcd_prefix="/t",
                                  status_file=str(tmp_path / "status.json")))
    daemon.store, daemon.lease, daemon.backend = store, own, Backend()
    daemon.write_status = lambda *a, **k: None
    daemon.watcher = CountingLeaseWatcher(own_subnet=own.subnet, config=CFG, own_ip=own.public_ip)
    conn = Connectivity(store.probe, interval=0.01)
    tasks = [asyncio.create_task(conn.run()),
             asyncio.create_task(follow_peers(store, daemon.watcher, daemon._peers_changed, conn))]
    try:
        with caplog.at_level(logging.WARNING):
            assert await wait_until(lambda: N("10.244.4.0/24") in daemon.watcher.strays)
            assert set(daemon.watcher.peers) == {N("10.244.9.0/24")}  # never routed to ourselves
            assert metric(daemon, "overlayd_stray_leases") == 1
            # a bug binds a key for another subnet to our own etcd lease: deleted at once
            store.revision += 1
            bound = Lease(N("10.244.5.0/24"), ME, own.expiration, own.handle, store.revision)
            store._leases[(bound.subnet, None)] = bound
            await store._record(LeaseEvent(bound.subnet, bound, store.revision))
            assert await wait_until(lambda: "deleted it" in caplog.text)
            leases, _ = await store.list_leases()
            assert N("10.244.5.0/24") not in {l.subnet for l in leases}
            assert await wait_until(lambda: N("10.244.5.0/24") not in daemon.watcher.strays)
            await store.break_watches()  # re-listings do not warn again
            assert await wait_until(lambda: not conn.up)
            store.available = True
            assert await wait_until(lambda: daemon.watcher.listings >= 2)
        text = caplog.text
        assert text.count("lease key 10.244.4.0/24 names this node") == 1, text
        assert "overlayctl lease delete 10.244.4.0/24" in text
        assert text.count("lease key 10.244.5.0/24 names this node") == 1, text
        assert metric(daemon, "overlayd_stray_leases") == 1
        leases, _ = await store.list_leases()
        assert by_hand.subnet in {l.subnet for l in leases}  # not ours to delete
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
