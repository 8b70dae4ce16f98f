"""The lease policy against the in-memory store, with a fake clock."""

import asyncio
import ipaddress
import random

import pytest

from overlayd.errors import LeaseError, NetworkFullError, StoreUnavailable
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
        await m.keep_renewed(lease, renewed.append)
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
        await m.keep_renewed(lease)


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

    async def quick_sleep(d):
        store.available = True  # "etcd is back"
        await asyncio.sleep(0)

    task = asyncio.create_task(follow_peers(store, watcher, on_batch, sleep=quick_sleep))
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
        await asyncio.wait_for(done.wait(), 2)
        assert seen[-1] == ([], [str(peer.subnet)])
        assert watcher.peers == {}
        assert len(seen) == 2  # no duplicate report
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
    with pytest.raises(asyncio.CancelledError):
        await m.keep_renewed(lease, renewed.append)
    assert store.failures == 0
    assert renewed and renewed[0].subnet == lease.subnet
