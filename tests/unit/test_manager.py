"""The lease policy against the in-memory store, with a fake clock."""

import asyncio
import ipaddress
import random

import pytest

from overlayd.errors import LeaseError, NetworkFullError, StoreUnavailable
from overlayd.lease.connectivity import Connectivity
from overlayd.lease.manager import LeaseManager, follow_peers, renew_margin
from overlayd.lease.memory import MemoryStore
from overlayd.lease.model import LeaseAttrs
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config

N = ipaddress.IPv4Network
CFG = parse_config({"Network": "10.244.0.0/22"})  # three subnets: .1, .2, .3


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def attrs(n):
    return LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.{n}"), "udp")


def manager(store, n, clock, **kw):
    return LeaseManager(store, CFG, attrs(n), ttl=kw.pop("ttl", 60), clock=clock,
                        rng=random.Random(n), **kw)


@pytest.mark.parametrize("ttl, margin", [(86400, 3600), (3 * 3600, 3600), (60, 20), (3, 1)])
def test_renew_margin(ttl, margin):
    assert renew_margin(ttl) == margin


async def test_acquire_distinct_and_full():
    clock = Clock()
    store = MemoryStore(clock)
    got = [await manager(store, n, clock).acquire() for n in (11, 12, 13)]
    assert len({l.subnet for l in got}) == 3
    with pytest.raises(NetworkFullError):
        await manager(store, 14, clock).acquire()


async def test_restart_reuses_lease_with_our_public_ip():
    clock = Clock()
    store = MemoryStore(clock)
    first = await manager(store, 11, clock).acquire()
    again = await manager(store, 11, clock).acquire()
    assert again.subnet == first.subnet
    leases, _ = await store.list_leases()
    assert len(leases) == 1


async def test_restart_after_expiry_uses_subnet_file_hint():
    clock = Clock()
    store = MemoryStore(clock)
    hint = N("10.244.3.0/24")
    lease = await manager(store, 11, clock, hint=hint).acquire()
    assert lease.subnet == hint
    clock.now += 61
    assert await store.expire() == [hint]
    again = await manager(store, 11, clock, hint=hint).acquire()
    assert again.subnet == hint


async def test_hint_taken_by_someone_else_is_not_stolen():
    clock = Clock()
    store = MemoryStore(clock)
    other = await manager(store, 12, clock, hint=N("10.244.2.0/24")).acquire()
    mine = await manager(store, 11, clock, hint=N("10.244.2.0/24")).acquire()
    assert mine.subnet != other.subnet


async def test_lost_race_retries_with_fresh_list():
    clock = Clock()
    store = MemoryStore(clock)
    real_create = store.create_lease
    stolen = []

    async def racing_create(subnet, a, ttl):
        if not stolen:  # another node grabs exactly the subnet we chose, first time only
            stolen.append(subnet)
            await real_create(subnet, attrs(99), ttl)
        return await real_create(subnet, a, ttl)

    store.create_lease = racing_create
    lease = await manager(store, 11, clock).acquire()
    assert lease.subnet != stolen[0]


async def test_renewal_extends_and_expiry_is_detected():
    clock = Clock()
    store = MemoryStore(clock)
    m = manager(store, 11, clock, ttl=60)
    lease = await m.acquire()
    assert m.renew_delay(lease) == pytest.approx(40)
    clock.now += 30
    renewed = await store.renew_lease(lease)
    assert renewed.expiration == pytest.approx(clock.now + 60)
    await store.delete_lease(lease.subnet)
    with pytest.raises(LeaseError):
        await store.renew_lease(lease)


async def test_keep_renewed_reacquires_deleted_lease_same_subnet():
    clock = Clock()
    store = MemoryStore(clock)
    sleeps = []

    async def fake_sleep(d):
        sleeps.append(d)
        clock.now += d
        if len(sleeps) == 1:
            await store.delete_lease(lease.subnet)  # an operator deletes it
        if len(sleeps) >= 3:
            raise asyncio.CancelledError

    m = manager(store, 11, clock, ttl=60, sleep=fake_sleep)
    lease = await m.acquire()
    renewed = []
    with pytest.raises(asyncio.CancelledError):
        await m.keep_renewed(lease, Connectivity(store.probe), renewed.append)
    assert renewed and renewed[0].subnet == lease.subnet
    leases, _ = await store.list_leases()
    assert [l.subnet for l in leases] == [lease.subnet]


async def test_keep_renewed_fails_when_subnet_lost_to_another_node():
    clock = Clock()
    store = MemoryStore(clock)

    async def fake_sleep(d):
        clock.now += d
        await store.delete_lease(lease.subnet)
        await store.create_lease(lease.subnet, attrs(77), 60)

    m = manager(store, 11, clock, ttl=60, sleep=fake_sleep)
    lease = await m.acquire()
    with pytest.raises(LeaseError, match="lost subnet"):
        await m.keep_renewed(lease, Connectivity(store.probe))


async def test_follow_peers_survives_a_broken_watch():
    clock = Clock()
    store = MemoryStore(clock)
    own = await manager(store, 11, clock).acquire()
    watcher = LeaseWatcher(own_subnet=own.subnet)
    seen = []
    done = asyncio.Event()

    async def on_batch(b):
        seen.append((sorted(str(l.subnet) for l in b.added), sorted(str(l.subnet) for l in b.removed)))
        done.set()

    conn = Connectivity(store.probe, interval=0.01)
    tasks = [asyncio.create_task(conn.run()),
             asyncio.create_task(follow_peers(store, watcher, on_batch, conn))]
    try:
        peer = await manager(store, 12, clock).acquire()
        await asyncio.wait_for(done.wait(), 2)
        assert seen == [([str(peer.subnet)], [])]
        done.clear()
        await store.break_watches()
        # while the watch is down the peer leaves
        store.available = True
        await store.delete_lease(peer.subnet)
        store.available = False
        await asyncio.sleep(0.05)
        assert not conn.up
        store.available = True  # etcd is back: the watch re-lists at once
        await asyncio.wait_for(done.wait(), 2)
        assert seen[-1] == ([], [str(peer.subnet)])
        assert watcher.peers == {}
        assert len(seen) == 2  # no duplicate report
        assert conn.outages == conn.reconnects == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_store_unavailable_is_raised_to_caller():
    clock = Clock()
    store = MemoryStore(clock)
    store.available = False
    with pytest.raises(StoreUnavailable):
        await manager(store, 11, clock).acquire()


async def test_a_subnet_that_always_loses_is_not_retried_forever():
    """The hinted key holds a value that does not decode: the listing does not show it,
    but every create there loses. The manager moves on instead of spinning."""
    clock = Clock()
    hint = N("10.244.2.0/24")

    class Haunted(MemoryStore):
        async def create_lease(self, subnet, attrs, ttl):
            return None if subnet == hint else await super().create_lease(subnet, attrs, ttl)

    store = Haunted(clock)
    m = manager(store, 21, clock, hint=hint)
    lease = await asyncio.wait_for(m.acquire(), 2)
    assert lease.subnet != hint


async def test_reacquire_outlasts_an_etcd_outage():
    """The lease expired during an outage; etcd flaps again while we re-list: keep trying."""
    clock = Clock()

    class Flapping(MemoryStore):
        failures = 0

        async def list_leases(self):
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("etcd flapping")
            return await super().list_leases()

    store = Flapping(clock)
    sleeps = []

    async def fake_sleep(d):
        sleeps.append(d)
        clock.now += d
        if len(sleeps) == 1:
            await store.delete_lease(lease.subnet)  # renewal will fail...
            store.failures = 3                      # ...and the re-list hits a flapping etcd
        if len(sleeps) >= 6:
            raise asyncio.CancelledError

    m = manager(store, 11, clock, ttl=60, sleep=fake_sleep)
    lease = await m.acquire()
    renewed = []
    conn = Connectivity(store.probe, interval=0.01)
    probe = asyncio.create_task(conn.run())
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(m.keep_renewed(lease, conn, renewed.append), 5)
    finally:
        probe.cancel()
    assert store.failures == 0
    assert renewed and renewed[0].subnet == lease.subnet


# -- issue 8: the lease survives etcd and operators --------------------------------------


class Running:
    """A node's control loops against a store: probe, renewal, peer watch (real time, short)."""

    def __init__(self, store, m, lease):
        self.conn = Connectivity(store.probe, interval=0.01)
        self.renewed = []
        watcher = LeaseWatcher(own_subnet=lease.subnet)
        self.tasks = [
            asyncio.create_task(self.conn.run()),
            asyncio.create_task(m.keep_renewed(lease, self.conn, self.renewed.append)),
            asyncio.create_task(follow_peers(store, watcher, lambda b: None, self.conn,
                                             on_own=m.own_key_seen)),
        ]

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        return await asyncio.gather(*self.tasks, return_exceptions=True)


async def wait_until(predicate, timeout=2.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_own_key_deleted_is_taken_back_at_once_not_at_the_next_renewal():
    """etcdctl del of a live node's lease: re-acquired within moments, though
    renewal is an hour away (point 3)."""
    clock = Clock()
    store = MemoryStore(clock)
    m = manager(store, 11, clock, ttl=3 * 3600)
    lease = await m.acquire()
    node = Running(store, m, lease)
    try:
        await asyncio.sleep(0.05)
        await store.delete_lease(lease.subnet)
        assert await wait_until(lambda: node.renewed)
        leases, _ = await store.list_leases()
        assert [(l.subnet, l.public_ip) for l in leases] == [(lease.subnet, lease.public_ip)]
        assert m.lease.handle == leases[0].handle != lease.handle
    finally:
        results = await node.stop()
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


async def test_own_key_overwritten_by_another_node_fails_loudly_without_a_second_lease():
    clock = Clock()
    store = MemoryStore(clock)
    m = manager(store, 11, clock, ttl=3 * 3600)
    lease = await m.acquire()
    node = Running(store, m, lease)
    try:
        await asyncio.sleep(0.05)
        await store.delete_lease(lease.subnet)
        await store.create_lease(lease.subnet, attrs(77), 60)  # someone else takes it
        assert await wait_until(lambda: node.tasks[1].done())
        with pytest.raises(LeaseError, match="lost subnet"):
            node.tasks[1].result()
    finally:
        await node.stop()
    leases, _ = await store.list_leases()
    assert [str(l.public_ip) for l in leases] == ["198.18.0.77"]  # nothing of ours left behind


async def test_renews_the_moment_etcd_is_back():
    """etcd was down; when it answers again the lease is renewed at once, not at the
    next backoff step or renewal time (point 2)."""
    clock = Clock()
    store = MemoryStore(clock)
    m = manager(store, 11, clock, ttl=3 * 3600)
    lease = await m.acquire()
    node = Running(store, m, lease)
    try:
        await asyncio.sleep(0.05)
        store.available = False
        assert await wait_until(lambda: not node.conn.up)
        clock.now += 100
        store.available = True
        assert await wait_until(lambda: node.renewed)
        assert node.renewed[0].expiration == pytest.approx(clock.now + 3 * 3600)
    finally:
        await node.stop()


async def test_hint_overlapping_a_lease_of_another_length_is_not_taken():
    """An existing 10.244.2.0/23 plus a subnet.env hint of 10.244.3.0/24 (point 6)."""
    clock = Clock()
    store = MemoryStore(clock)
    cfg = parse_config({"Network": "10.244.0.0/16"})
    await store.create_lease(N("10.244.2.0/23"), attrs(12), 60)
    m = LeaseManager(store, cfg, attrs(11), ttl=60, hint=N("10.244.3.0/24"), clock=clock,
                     rng=random.Random(1))
    lease = await m.acquire()
    assert not lease.subnet.overlaps(N("10.244.2.0/23"))


async def test_reacquire_takes_only_its_own_subnet():
    """Re-acquisition never creates a lease on another subnet and then gives up (point 5)."""
    clock = Clock()
    store = MemoryStore(clock)
    m = manager(store, 11, clock)
    await store.create_lease(N("10.244.2.0/24"), attrs(12), 60)
    with pytest.raises(LeaseError, match="held by 198.18.0.12"):
        await m.acquire(only=N("10.244.2.0/24"))
    leases, _ = await store.list_leases()
    assert len(leases) == 1


async def test_reservation_is_reused_without_ttl_and_never_handed_out():
    """A lease key without TTL pins a subnet to a node (point 7)."""
    clock = Clock()
    store = MemoryStore(clock)
    reserved = N("10.244.3.0/24")
    await store.reserve(reserved, LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"))
    others = [await manager(store, n, clock).acquire() for n in (12, 13)]
    assert reserved not in {l.subnet for l in others}
    m = manager(store, 11, clock, ttl=60)
    lease = await m.acquire()
    assert (lease.subnet, lease.handle, lease.expiration) == (reserved, 0, None)
    clock.now += 10_000
    assert await store.expire() == [l.subnet for l in others]
    assert await store.renew_lease(lease) == lease  # checked, nothing to extend
    leases, _ = await store.list_leases()
    assert [(l.subnet, l.expiration) for l in leases] == [(reserved, None)]


def test_backoff_is_jittered_and_capped():
    from overlayd.lease.connectivity import Backoff
    delays = [[Backoff(first=1, cap=8, rng=random.Random(seed)).next() for _ in range(1)][0]
              for seed in range(20)]
    assert len(set(delays)) == 20 and all(0.5 <= d <= 1 for d in delays)
    b = Backoff(first=1, cap=8, rng=random.Random(0))
    assert all(4 <= d <= 8 for d in [b.next() for _ in range(10)][4:])


async def test_batched_merges_what_arrived_meanwhile_in_order_and_passes_errors_on():
    from overlayd.lease.manager import batched

    async def stream():
        for i in range(5):
            yield [i]
        raise StoreUnavailable("watch broke")

    got = []
    with pytest.raises(StoreUnavailable, match="watch broke"):
        async for events in batched(stream()):
            got.append(events)
            await asyncio.sleep(0.01)  # applying a batch takes a while: the rest queue up
    assert [e for b in got for e in b] == [0, 1, 2, 3, 4]
    assert len(got) < 5  # merged, not one by one


async def test_batched_stops_its_pump_when_the_consumer_stops():
    from overlayd.lease.manager import batched
    closed = []

    async def endless():
        try:
            while True:
                yield [1]
                await asyncio.sleep(0.001)
        finally:
            closed.append(True)

    agen = batched(endless())
    assert await agen.__anext__()
    await agen.aclose()
    assert closed == [True]
