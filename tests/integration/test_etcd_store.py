"""The etcd store and lease policy against a real etcd (Debian's etcd-server) on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import time

import pytest

from overlayd.errors import LeaseError, StoreUnavailable
from overlayd.lab.etcd import EtcdServer
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.manager import LeaseManager, follow_peers
from overlayd.lease.model import LeaseAttrs
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config

pytestmark = pytest.mark.etcd

CFG = parse_config({"Network": "10.244.0.0/16"})


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address(f"198.18.{n // 250}.{n % 250 + 1}"), "udp")


async def test_config_round_trip(etcd_server, etcd_prefix):
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        assert await store.get_config() is None
        await store.put_config(b'{"Network": "10.244.0.0/16"}')
        assert await store.get_config() == b'{"Network": "10.244.0.0/16"}'
    finally:
        await store.close()


async def test_twenty_racing_nodes_get_distinct_subnets(etcd_server, etcd_prefix):
    # a small network so that the random choices collide and races really happen
    cfg = parse_config({"Network": "10.244.0.0/19"})  # 31 subnets for 20 nodes
    stores = [EtcdStore(etcd_server.endpoint, etcd_prefix) for _ in range(20)]
    try:
        leases = await asyncio.gather(*(
            LeaseManager(s, cfg, attrs(i), ttl=300).acquire() for i, s in enumerate(stores)))
        assert len({l.subnet for l in leases}) == 20
        listed, _ = await stores[0].list_leases()
        assert {l.subnet: l.public_ip for l in listed} == {l.subnet: l.public_ip for l in leases}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_create_is_atomic_for_one_subnet(etcd_server, etcd_prefix):
    stores = [EtcdStore(etcd_server.endpoint, etcd_prefix) for _ in range(20)]
    subnet = ipaddress.IPv4Network("10.244.7.0/24")
    try:
        results = await asyncio.gather(*(s.create_lease(subnet, attrs(i), 300) for i, s in enumerate(stores)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        listed, _ = await stores[0].list_leases()
        assert [l.public_ip for l in listed] == [winners[0].public_ip]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_ttl_expiry_removes_lease_and_renewal_keeps_it(etcd_server, etcd_prefix):
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        doomed = await store.create_lease(ipaddress.IPv4Network("10.244.1.0/24"), attrs(1), 2)
        kept_mgr = LeaseManager(store, CFG, attrs(2), ttl=2, hint=ipaddress.IPv4Network("10.244.2.0/24"))
        kept = await kept_mgr.acquire()
        renewer = asyncio.create_task(kept_mgr.keep_renewed(kept))
        await asyncio.sleep(4.5)
        listed, _ = await store.list_leases(with_ttl=True)
        assert [l.subnet for l in listed] == [kept.subnet]
        assert 0 < listed[0].time_left(time.time()) <= 2
        with pytest.raises(LeaseError, match="expired"):
            await store.renew_lease(doomed)  # keepalive answers TTL 0: we notice
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
    finally:
        await store.close()


async def test_a_deleted_or_rewritten_key_is_noticed_and_the_subnet_taken_back(etcd_server, etcd_prefix):
    """The etcd lease outlives an operator's ``etcdctl del``: renewal must still notice."""
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        manager = LeaseManager(store, CFG, attrs(7), ttl=3)
        lease = await manager.acquire()
        assert await store.delete_lease(lease.subnet)
        with pytest.raises(LeaseError, match="deleted"):
            await store.renew_lease(lease)
        renewed = []
        renewer = asyncio.create_task(manager.keep_renewed(lease, renewed.append))
        for _ in range(50):
            if renewed:
                break
            await asyncio.sleep(0.1)
        listed, _ = await store.list_leases()
        assert [l.subnet for l in listed] == [lease.subnet]  # re-created, same subnet
        assert renewed and renewed[-1].handle != lease.handle
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)

        # a put over our key without our lease (an operator's etcdctl put): not ours any more
        other = await store.create_lease(ipaddress.IPv4Network("10.244.77.0/24"), attrs(8), 30)
        await store._call(lambda c: c.put(f"{etcd_prefix}/subnets/10.244.77.0-24".encode(), b'{"PublicIP":"198.18.9.9"}'))
        with pytest.raises(LeaseError, match="rewritten"):
            await store.renew_lease(other)
    finally:
        await store.close()


async def test_restart_reuses_subnet(etcd_server, etcd_prefix):
    first = EtcdStore(etcd_server.endpoint, etcd_prefix)
    lease = await LeaseManager(first, CFG, attrs(5), ttl=300).acquire()
    await first.close()
    second = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        again = await LeaseManager(second, CFG, attrs(5), ttl=300).acquire()
        assert again.subnet == lease.subnet
        assert again.handle != lease.handle  # rebound to a fresh TTL
        listed, _ = await second.list_leases()
        assert len(listed) == 1
        renewed = await second.renew_lease(again)
        assert renewed.subnet == lease.subnet
    finally:
        await second.close()


async def test_failover_to_second_endpoint(etcd_server, etcd_prefix):
    from overlayd.lab.etcd import free_port
    store = EtcdStore(f"http://127.0.0.1:{free_port()},{etcd_server.endpoint}", etcd_prefix, timeout=2)
    try:
        await store.put_config(b"{}")
        assert await store.get_config() == b"{}"
    finally:
        await store.close()


async def test_unreachable_raises_store_unavailable(etcd_prefix):
    from overlayd.lab.etcd import free_port
    store = EtcdStore(f"http://127.0.0.1:{free_port()}", etcd_prefix, timeout=1)
    try:
        with pytest.raises(StoreUnavailable, match="etcd unreachable"):
            await store.list_leases()
    finally:
        await store.close()


@pytest.fixture
def own_etcd(tmp_path):
    """An etcd just for this test, which the test may restart or wipe."""
    server = EtcdServer(str(tmp_path / "data"), name="overlayd-restart").start()
    yield server
    server.stop()


async def _wait_for(predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_watch_follows_adds_updates_expiries(own_etcd, etcd_prefix):
    store = EtcdStore(own_etcd.endpoint, etcd_prefix)
    other = EtcdStore(own_etcd.endpoint, etcd_prefix)
    watcher = LeaseWatcher(own_subnet=ipaddress.IPv4Network("10.244.1.0/24"))
    task = asyncio.create_task(follow_peers(store, watcher, lambda b: None))
    try:
        a = await other.create_lease(ipaddress.IPv4Network("10.244.2.0/24"), attrs(2), 2)
        await _wait_for(lambda: a.subnet in watcher.peers)
        moved = LeaseAttrs(ipaddress.IPv4Address("198.18.9.9"), "udp")
        b = await other.create_lease(ipaddress.IPv4Network("10.244.3.0/24"), attrs(3), 300)
        await other.update_lease((await other.list_leases())[0][1], moved, 300)
        await _wait_for(lambda: watcher.peers.get(b.subnet) and watcher.peers[b.subnet].public_ip == moved.public_ip)
        await _wait_for(lambda: a.subnet not in watcher.peers)  # TTL 2 s ran out
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        await other.close()


async def test_watch_survives_etcd_restart_and_data_loss(own_etcd, etcd_prefix):
    store = EtcdStore(own_etcd.endpoint, etcd_prefix, timeout=2)
    watcher = LeaseWatcher()
    batches = []
    task = asyncio.create_task(follow_peers(store, watcher, batches.append))
    n2, n3, n4 = (ipaddress.IPv4Network(f"10.244.{i}.0/24") for i in (2, 3, 4))
    try:
        writer = EtcdStore(own_etcd.endpoint, etcd_prefix)
        for i, n in ((2, n2), (3, n3)):
            await writer.create_lease(n, attrs(i), 300)
        await writer.close()
        await _wait_for(lambda: set(watcher.peers) == {n2, n3})

        # 1. a plain restart: the watch breaks, is re-opened, and sees later changes
        await asyncio.to_thread(own_etcd.restart)
        writer = EtcdStore(own_etcd.endpoint, etcd_prefix)
        await writer.create_lease(n4, attrs(4), 300)
        await writer.delete_lease(n2)
        await writer.close()
        await _wait_for(lambda: set(watcher.peers) == {n3, n4})

        # 2. etcd comes back from an older (here: empty) data dir: revision goes backwards
        before = watcher.revision
        await asyncio.to_thread(own_etcd.stop)
        shutil.rmtree(own_etcd.data_dir)
        await asyncio.to_thread(own_etcd.start)
        writer = EtcdStore(own_etcd.endpoint, etcd_prefix)
        await writer.create_lease(n2, attrs(2), 300)
        await writer.close()
        await _wait_for(lambda: set(watcher.peers) == {n2})
        assert watcher.revision < before

        added = [str(l.subnet) for b in batches for l in b.added]
        removed = [str(l.subnet) for b in batches for l in b.removed]
        # every peer reported once per real appearance, never duplicated
        assert sorted(added) == sorted(["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.2.0/24"])
        assert sorted(removed) == sorted(["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
