"""The etcd store and lease policy against a real etcd (Debian's etcd-server) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time

import pytest

import aetcd
import aetcd.exceptions as aex

from overlayd.errors import LeaseError, StoreError, StoreUnavailable, WatchReset
from overlayd.lab.etcd import EtcdServer
from overlayd.lease.connectivity import Connectivity
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.manager import LeaseManager, follow_peers
from overlayd.lease.model import LeaseAttrs
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config

pytestmark = pytest.mark.etcd

CFG = parse_config({"Network": "10.244.0.0/16"})


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address(f"198.18.{n // 250}.{n % 250 + 1}"), "udp")


@contextlib.asynccontextmanager
async def probing(store, interval: float = 0.5):
    """A running :class:`Connectivity` for ``store`` (the daemon always runs one)."""
    conn = Connectivity(store.probe, interval=interval)
    task = asyncio.create_task(conn.run())
    try:
        yield conn
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
        async with probing(store) as conn:
            renewer = asyncio.create_task(kept_mgr.keep_renewed(kept, conn))
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
        # pinned: a random pick collides with the fixed 10.244.77.0/24 below once in 256 runs
        manager = LeaseManager(store, CFG, attrs(7), ttl=3, hint=ipaddress.IPv4Network("10.244.7.0/24"))
        lease = await manager.acquire()
        assert await store.delete_lease(lease.subnet)
        with pytest.raises(LeaseError, match="deleted"):
            await store.renew_lease(lease)
        renewed = []
        async with probing(store) as conn:
            renewer = asyncio.create_task(manager.keep_renewed(lease, conn, renewed.append))
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
    conn = Connectivity(store.probe, interval=0.5)
    task = asyncio.gather(conn.run(), follow_peers(store, watcher, lambda b: None, conn))
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
    conn = Connectivity(store.probe, interval=0.5)
    task = asyncio.gather(conn.run(), follow_peers(store, watcher, batches.append, conn))
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


# -- issue 8: faults -------------------------------------------------------------------


def etcd_leases(server: EtcdServer) -> int:
    """How many etcd leases (grants) exist, as etcdctl counts them."""
    out = subprocess.run(["etcdctl", "--endpoints", server.endpoint, "lease", "list"], check=True,
                         capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3")).stdout
    return int(out.split()[1])  # "found N leases"


async def test_renewal_and_watch_outlive_an_etcd_pause_longer_than_the_ttl(own_etcd, etcd_prefix):
    """etcd frozen (SIGSTOP) for longer than the TTL: when it thaws, the lease is ours
    again within seconds and neither loop died (point 1: the renew task used to be
    found cancelled, silently)."""
    store = EtcdStore(own_etcd.endpoint, etcd_prefix, timeout=1)
    # pinned: a random pick collided with the peer's fixed 10.244.9.0/24 (CI, once)
    manager = LeaseManager(store, CFG, attrs(3), ttl=4, hint=ipaddress.IPv4Network("10.244.3.0/24"))
    lease = await manager.acquire()
    conn = Connectivity(store.probe, interval=0.5)
    watcher = LeaseWatcher(own_subnet=lease.subnet, config=CFG)
    tasks = [asyncio.create_task(conn.run()),
             asyncio.create_task(manager.keep_renewed(lease, conn)),
             asyncio.create_task(follow_peers(store, watcher, lambda b: None, conn,
                                              on_own=manager.own_key_seen))]
    peer_store = EtcdStore(own_etcd.endpoint, etcd_prefix)
    try:
        await asyncio.sleep(1)
        os.kill(own_etcd.pid, signal.SIGSTOP)
        await asyncio.sleep(8)
        assert not conn.up
        os.kill(own_etcd.pid, signal.SIGCONT)
        await _wait_for(lambda: conn.up, timeout=10)
        peer = await peer_store.create_lease(ipaddress.IPv4Network("10.244.9.0/24"), attrs(9), 300)

        async def ours():
            listed, _ = await peer_store.list_leases()
            return any(l.subnet == lease.subnet and l.public_ip == lease.public_ip for l in listed)

        for _ in range(100):
            if await ours() and peer.subnet in watcher.peers:
                break
            await asyncio.sleep(0.1)
        assert await ours(), "the lease did not come back after etcd thawed"
        assert peer.subnet in watcher.peers, "the peer watch did not resume"
        await asyncio.sleep(6)  # longer than the TTL: renewals go on
        assert await ours()
        assert [t for t in tasks if t.done()] == []
        assert (conn.outages, conn.reconnects) == (1, 1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(own_etcd.pid, signal.SIGCONT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        await peer_store.close()


async def test_a_compacted_revision_at_watch_creation_resets_the_watch(etcd_server, etcd_prefix):
    """aetcd raises RevisionCompactedError from watch() itself; it used to kill the
    daemon (point 4). The watch loop re-lists and carries on."""
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        _, old = await store.list_leases()
        for i in range(3):
            await store.put_config(f'{{"n": {i}}}'.encode())
        _, latest = await store.list_leases()
        await store._call(lambda c: c.compact(latest))
        with pytest.raises(WatchReset):
            async for _ in store.watch_leases(old):
                break

        class Stale(EtcdStore):
            """Lists once at the compacted revision, as a slow re-list can."""
            stale = True

            async def list_leases(self, with_ttl=False):
                leases, revision = await super().list_leases(with_ttl)
                if self.stale:
                    self.stale = False
                    return leases, old
                return leases, revision

        stale = Stale(etcd_server.endpoint, etcd_prefix)
        watcher = LeaseWatcher(config=CFG)
        async with probing(stale) as conn:
            task = asyncio.create_task(follow_peers(stale, watcher, lambda b: None, conn))
            peer = await store.create_lease(ipaddress.IPv4Network("10.244.5.0/24"), attrs(5), 300)
            try:
                await _wait_for(lambda: peer.subnet in watcher.peers or task.done(), timeout=10)
                assert not task.done(), task.exception()
                assert peer.subnet in watcher.peers
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await stale.close()
    finally:
        await store.close()


async def test_a_create_whose_reply_is_lost_takes_one_lease_and_leaks_no_grant(own_etcd, etcd_prefix,
                                                                                monkeypatch):
    """The create commits but the reply is lost; the call is retried on the next
    endpoint. It must recognise its own lease instead of losing to itself and taking
    a second subnet (point 5)."""
    real = aetcd.Client.transaction
    lose = {"replies": 1}

    async def lossy(self, *args, **kwargs):
        result = await real(self, *args, **kwargs)
        if lose["replies"]:
            lose["replies"] -= 1
            raise aex.ConnectionFailedError("reply lost")
        return result

    monkeypatch.setattr(aetcd.Client, "transaction", lossy)
    store = EtcdStore(f"{own_etcd.endpoint},{own_etcd.endpoint}", etcd_prefix)
    try:
        lease = await LeaseManager(store, CFG, attrs(4), ttl=300).acquire()
        listed, _ = await store.list_leases()
        assert [(l.subnet, l.handle) for l in listed] == [(lease.subnet, lease.handle)]
        assert etcd_leases(own_etcd) == 1
    finally:
        await store.close()


async def test_a_grant_whose_create_never_ran_is_revoked_later(own_etcd, etcd_prefix, monkeypatch):
    """Every endpoint fails between the grant and the transaction: the grant's fate is
    unknown. Once etcd answers again it is revoked, since no key is bound to it."""
    real = aetcd.Client.transaction
    fail = {"calls": 2}

    async def failing(self, *args, **kwargs):
        if fail["calls"]:
            fail["calls"] -= 1
            raise aex.ConnectionFailedError("etcd went away")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(aetcd.Client, "transaction", failing)
    store = EtcdStore(f"{own_etcd.endpoint},{own_etcd.endpoint}", etcd_prefix)
    try:
        with pytest.raises(StoreUnavailable):
            await store.create_lease(ipaddress.IPv4Network("10.244.6.0/24"), attrs(6), 300)
        assert etcd_leases(own_etcd) == 1  # the orphan grant
        await store.create_lease(ipaddress.IPv4Network("10.244.7.0/24"), attrs(7), 300)
        assert etcd_leases(own_etcd) == 1  # the orphan revoked, the new lease's grant left
        listed, _ = await store.list_leases()
        assert [str(l.subnet) for l in listed] == ["10.244.7.0/24"]
    finally:
        await store.close()


@pytest.mark.parametrize("error, expected", [
    (aex.RevisionCompactedError(7), WatchReset),  # as aetcd raises it from watch() itself
    (aex.ClientError("RESOURCE_EXHAUSTED: too many watches"), StoreError),
])
async def test_errors_at_watch_creation_are_store_errors_the_watch_loop_survives(
        etcd_server, etcd_prefix, monkeypatch, error, expected):
    """Point 4: these escaped follow_peers (which caught only StoreUnavailable and
    WatchReset) and killed the daemon."""
    real = aetcd.Client.watch_prefix
    failures = {"left": 2}

    async def refusing(self, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise error
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(aetcd.Client, "watch_prefix", refusing)
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    watcher = LeaseWatcher(config=CFG)
    try:
        with pytest.raises(expected):
            async for _ in store.watch_leases(0):
                break
        async with probing(store) as conn:
            task = asyncio.create_task(follow_peers(store, watcher, lambda b: None, conn))
            peer = await store.create_lease(ipaddress.IPv4Network("10.244.5.0/24"), attrs(5), 300)
            try:
                await _wait_for(lambda: peer.subnet in watcher.peers or task.done(), timeout=10)
                assert not task.done(), task.exception()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await store.close()


async def test_a_garbled_lease_is_a_gone_peer_and_the_warning_names_the_key(etcd_server, etcd_prefix, caplog):
    """Overwriting a peer's lease with garbage used to leave a stale peer (point 3, 8)."""
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    watcher = LeaseWatcher(config=CFG)
    subnet = ipaddress.IPv4Network("10.244.8.0/24")
    key = f"{etcd_prefix}/subnets/10.244.8.0-24"
    try:
        async with probing(store) as conn:
            task = asyncio.create_task(follow_peers(store, watcher, lambda b: None, conn))
            await store.create_lease(subnet, attrs(8), 300)
            await _wait_for(lambda: subnet in watcher.peers)
            with caplog.at_level(logging.WARNING):
                await store._call(lambda c: c.put(key.encode(), b"garbage"))
                await _wait_for(lambda: subnet not in watcher.peers)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert key in caplog.text
    finally:
        await store.close()


async def test_garbage_over_our_own_key_is_taken_back(etcd_server, etcd_prefix):
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        manager = LeaseManager(store, CFG, attrs(10), ttl=300)
        lease = await manager.acquire()
        key = f"{etcd_prefix}/subnets/{lease.subnet.network_address}-24"
        await store._call(lambda c: c.put(key.encode(), b"{not json"))
        with pytest.raises(LeaseError, match="rewritten"):
            await store.renew_lease(lease)
        again = await manager.acquire(only=lease.subnet)
        assert again.subnet == lease.subnet
        listed, _ = await store.list_leases()
        assert [(l.subnet, l.public_ip) for l in listed] == [(lease.subnet, lease.public_ip)]
    finally:
        await store.close()


async def test_reservation_round_trip(own_etcd, etcd_prefix):
    """A key without TTL is a reservation: kept without TTL by its node, never handed
    out, and released back into an ordinary lease (point 7)."""
    small = parse_config({"Network": "10.244.0.0/22"})  # three subnets
    store = EtcdStore(own_etcd.endpoint, etcd_prefix)
    reserved = ipaddress.IPv4Network("10.244.2.0/24")
    try:
        made = await store.reserve(reserved, attrs(1))
        assert (made.handle, made.expiration) == (0, None)
        others = [await LeaseManager(store, small, attrs(n), ttl=300).acquire() for n in (2, 3)]
        assert reserved not in {l.subnet for l in others}
        owner = LeaseManager(store, small, LeaseAttrs(attrs(1).public_ip, "udp", {"X": 1}), ttl=300)
        lease = await owner.acquire()
        assert (lease.subnet, lease.handle) == (reserved, 0)
        assert (await store.renew_lease(lease)).handle == 0
        listed, _ = await store.list_leases()
        mine = next(l for l in listed if l.subnet == reserved)
        assert (mine.handle, mine.attrs.backend_data) == (0, {"X": 1})
        assert etcd_leases(own_etcd) == 2  # the two other nodes' only

        with pytest.raises(LeaseError, match="leased by"):
            await store.reserve(others[0].subnet, attrs(1))
        released = await store.release(reserved, 60)
        assert released.handle != 0
        with pytest.raises(LeaseError, match="rewritten"):
            await store.renew_lease(lease)  # the owner notices and takes it over
        again = await owner.acquire(only=reserved)
        assert again.handle not in (0, released.handle)
        assert etcd_leases(own_etcd) == 3
        with pytest.raises(LeaseError, match="not reserved"):
            await store.release(reserved, 60)
    finally:
        await store.close()


async def test_revoking_our_lease_frees_key_and_grant_but_never_anothers(own_etcd, etcd_prefix):
    """--cleanup-on-exit gives the lease up by revoking our etcd lease: it used to delete the key by
    subnet, leaking the grant and deleting whatever held the subnet by then (found in review)."""
    store = EtcdStore(own_etcd.endpoint, etcd_prefix)
    try:
        mine = await store.create_lease(ipaddress.IPv4Network("10.244.2.0/24"), attrs(2), 300)
        assert await store.revoke_lease(mine)
        assert (await store.list_leases())[0] == [] and etcd_leases(own_etcd) == 0

        lapsed = await store.create_lease(ipaddress.IPv4Network("10.244.3.0/24"), attrs(3), 300)
        await store.delete_lease(lapsed.subnet)  # ours went (expired, deleted) ...
        other = await store.create_lease(lapsed.subnet, attrs(4), 300)  # ... and another node took it
        assert await store.revoke_lease(lapsed)
        listed, _ = await store.list_leases()
        assert [(l.subnet, l.public_ip) for l in listed] == [(other.subnet, other.public_ip)]

        pinned = await store.reserve(ipaddress.IPv4Network("10.244.5.0/24"), attrs(5))
        assert not await store.revoke_lease(pinned)
        assert pinned.subnet in {l.subnet for l in (await store.list_leases())[0]}
    finally:
        await store.close()


async def test_live_lease_ids_tell_a_deleted_key_from_an_expired_or_revoked_lease(etcd_server, etcd_prefix):
    """Issue 16: the thaw grace asks etcd which leases live: a key deleted by hand leaves its
    lease alive; a revoked (or expired) lease is gone with its key."""
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        a = await store.create_lease(ipaddress.IPv4Network("10.244.1.0/24"), attrs(11), 60)
        b = await store.create_lease(ipaddress.IPv4Network("10.244.2.0/24"), attrs(12), 60)
        assert {a.handle, b.handle} <= await store.live_lease_ids()
        await store.delete_lease(a.subnet)
        await store.revoke_lease(b)
        live = await store.live_lease_ids()
        assert a.handle in live and b.handle not in live
        assert await store.revoke_lease(a)  # tidy; a second revoke of b is 'lease not found': no error
        assert await store.revoke_lease(b)
    finally:
        await store.close()
