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


# -- issue 16: the control plane ----------------------------------------------------------

import logging  # noqa: E402

import grpc  # noqa: E402
import aetcd.exceptions as aex  # noqa: E402

from overlayd.errors import StoreError, StoreRetryable  # noqa: E402
from overlayd.lease.etcd import EtcdStore, Verdict, classify, status_of, store_error  # noqa: E402
from overlayd.lease.manager import WATCH_FLAPS, WATCH_RETRY_CAP, WatchFlaps, thaw_grace  # noqa: E402


class Peers:
    """follow_peers with a thaw grace against a store, recording every batch."""

    def __init__(self, store, own, grace):
        self.conn = Connectivity(store.probe, interval=0.01)
        self.watcher = LeaseWatcher(own_subnet=own)
        self.batches = []
        self.tasks = [asyncio.create_task(self.conn.run()),
                      asyncio.create_task(follow_peers(store, self.watcher, self.batches.append, self.conn,
                                                       grace=grace))]

    def removed(self):
        return [l.subnet for b in self.batches for l in b.removed]

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_peer_whose_key_expired_in_an_etcd_outage_keeps_its_route_until_its_owner_is_back():
    """Point 1: etcd expires every lease when it thaws; the peer is not dropped while its
    owner puts its key back, and nothing is reported to the backend at all."""
    clock = Clock()
    store = MemoryStore(clock)
    own = await manager(store, 11, clock).acquire()
    owner = manager(store, 12, clock)
    peer = await owner.acquire()
    node = Peers(store, own.subnet, grace=5.0)
    try:
        assert await wait_until(lambda: peer.subnet in node.watcher.peers)
        store.available = False  # frozen...
        assert await wait_until(lambda: not node.conn.up)
        clock.now += 61
        store.available = True  # ...and thawed: the TTL ran out inside
        await store.expire()
        assert await wait_until(lambda: peer.subnet in node.watcher.held)
        assert peer.subnet in node.watcher.peers and node.removed() == []
        back = await owner.acquire(only=peer.subnet)  # the owner is back: a new etcd lease
        assert await wait_until(lambda: not node.watcher.held)
        assert node.watcher.peers[peer.subnet] == back
        assert node.removed() == [] and [l.subnet for b in node.batches for l in b.added] == [peer.subnet]
    finally:
        await node.stop()


@pytest.mark.parametrize("how", ["deleted", "revoked outside the window", "never comes back"])
async def test_a_peer_is_still_removed_when_its_key_really_went(how):
    clock = Clock()
    store = MemoryStore(clock)
    own = await manager(store, 11, clock).acquire()
    peer = await manager(store, 12, clock).acquire()
    node = Peers(store, own.subnet, grace=0.3)
    try:
        assert await wait_until(lambda: peer.subnet in node.watcher.peers)
        if how == "never comes back":  # expired in an outage: held for the grace, then gone
            store.available = False
            assert await wait_until(lambda: not node.conn.up)
            clock.now += 61
            store.available = True
            await store.expire()
            assert await wait_until(lambda: node.watcher.held)
        elif how == "deleted":  # etcdctl del right after an outage, its etcd lease alive: at once
            store.available = False
            assert await wait_until(lambda: not node.conn.up)
            store.available = True
            assert await wait_until(lambda: node.conn.up)
            await store.delete_lease(peer.subnet)
        else:
            await store.revoke_lease(peer)
        assert await wait_until(lambda: node.removed() == [peer.subnet])
        assert peer.subnet not in node.watcher.peers and not node.watcher.held
    finally:
        await node.stop()


@pytest.mark.parametrize("ttl, grace", [(24 * 3600, 30.0), (60, 20.0), (4, 5.0), (2, 5.0)])
def test_thaw_grace_is_one_renew_margin_within_bounds(ttl, grace):
    assert thaw_grace(ttl) == grace


@pytest.mark.parametrize("code, message, verdict", [
    ("UNAVAILABLE", "etcdserver: leader changed", Verdict.RETRY),
    ("UNAVAILABLE", "etcdserver: no leader", Verdict.RETRY),
    ("UNAVAILABLE", "etcdserver: request timed out", Verdict.RETRY),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", Verdict.RETRY),
    ("RESOURCE_EXHAUSTED", "etcdserver: too many requests", Verdict.RETRY),
    ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded", Verdict.RETRY),
    ("ABORTED", "transport closing", Verdict.RETRY),
    ("INTERNAL", "stream terminated by RST_STREAM", Verdict.RETRY),
    ("UNKNOWN", "", Verdict.RETRY),
    ("CANCELLED", "Cancelled", Verdict.RETRY),
    ("NOT_FOUND", "etcdserver: requested lease not found", Verdict.LOST_LEASE),
    ("NOT_FOUND", "etcdserver: key not found", Verdict.FATAL),
    ("PERMISSION_DENIED", "etcdserver: permission denied", Verdict.FATAL),
    ("INVALID_ARGUMENT", "etcdserver: request is too large", Verdict.FATAL),
    ("UNAUTHENTICATED", "etcdserver: authentication failed, invalid user ID or password", Verdict.FATAL),
    ("FAILED_PRECONDITION", "etcdserver: not capable", Verdict.FATAL),
    ("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", Verdict.FATAL),
])
def test_etcd_errors_are_classified_once(code, message, verdict):
    assert classify(code, message) is verdict


def aetcd_error(code: str, details: str) -> aex.ClientError:
    """The exception aetcd raises for a gRPC status (its own mapping, as on the wire)."""
    err = grpc.aio.AioRpcError(getattr(grpc.StatusCode, code), grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details=details)
    try:
        aex._handle_exception(err)
    except aex.ClientError as exc:
        return exc


@pytest.mark.parametrize("code, details, error", [
    ("RESOURCE_EXHAUSTED", "etcdserver: too many requests", StoreRetryable),
    ("ABORTED", "aborted", StoreRetryable),
    ("NOT_FOUND", "etcdserver: requested lease not found", LeaseError),
    ("PERMISSION_DENIED", "etcdserver: permission denied", StoreError),
    ("INVALID_ARGUMENT", "etcdserver: request is too large", StoreError),
])
async def test_an_answered_etcd_error_becomes_the_typed_error_of_its_class(code, details, error):
    exc = aetcd_error(code, details)
    assert status_of(exc) == (code, details)
    typed = store_error(exc)
    assert type(typed) is error and details in str(typed)
    store = EtcdStore("http://127.0.0.1:1", "/t")

    async def attempt(role, op):
        raise exc

    store._attempt = attempt  # the call reaches etcd, which answers with the error
    with pytest.raises(error) as raised:
        await store._call(lambda c: None)
    assert type(raised.value) is error


class Flaky(MemoryStore):
    """Renewal fails with the given errors first (as etcd's answers), then works."""

    def __init__(self, clock, errors):
        super().__init__(clock)
        self.errors = list(errors)

    async def renew_lease(self, lease):
        if self.errors:
            raise store_error(self.errors.pop(0))
        return await super().renew_lease(lease)


@pytest.mark.parametrize("code, details", [
    ("RESOURCE_EXHAUSTED", "etcdserver: too many requests"),
    ("UNKNOWN", "stream reset"),
    ("NOT_FOUND", "etcdserver: requested lease not found"),  # a revoke racing the expiry
])
async def test_renewal_outlives_transient_etcd_errors(code, details, caplog):
    """Point 2: these ended the daemon (a StoreError out of keep_renewed); now they are retried
    with jittered backoff, or the lease is re-acquired, and renewal goes on."""
    clock = Clock()
    store = Flaky(clock, [aetcd_error(code, details)] * 3)
    sleeps = []

    async def fake_sleep(d):
        sleeps.append(d)
        clock.now += d
        if len(sleeps) >= 8:
            raise asyncio.CancelledError

    m = manager(store, 11, clock, ttl=60, sleep=fake_sleep)
    lease = await m.acquire()
    renewed = []
    with pytest.raises(asyncio.CancelledError):
        await m.keep_renewed(lease, Connectivity(store.probe), renewed.append)
    assert store.errors == [] and renewed and all(r.subnet == lease.subnet for r in renewed)
    leases, _ = await store.list_leases()
    assert [l.subnet for l in leases] == [lease.subnet]
    if code != "NOT_FOUND":
        backoff = sleeps[1:4]  # after the first renewal's wait: jittered, growing, bounded
        assert all(0 < d <= 5 for d in backoff) and backoff == sorted(backoff), sleeps


async def test_a_fatal_etcd_error_still_ends_renewal():
    clock = Clock()
    store = Flaky(clock, [aetcd_error("PERMISSION_DENIED", "etcdserver: permission denied")])

    async def fake_sleep(d):
        clock.now += d

    m = manager(store, 11, clock, ttl=60, sleep=fake_sleep)
    lease = await m.acquire()
    with pytest.raises(StoreError, match="permission denied") as raised:
        await m.keep_renewed(lease, Connectivity(store.probe))
    assert not isinstance(raised.value, StoreRetryable)


async def test_startup_retries_a_busy_etcd():
    from overlayd.daemon import retry_unavailable
    calls, sleeps = [], []

    async def busy_then_fine():
        calls.append(1)
        if len(calls) < 3:
            raise store_error(aetcd_error("RESOURCE_EXHAUSTED", "etcdserver: too many requests"))
        return "leased"

    async def fake_sleep(d):
        sleeps.append(d)

    assert await retry_unavailable(busy_then_fine, "cannot lease a subnet", fake_sleep) == "leased"
    assert len(sleeps) == 2


class BrokenWatch(MemoryStore):
    """etcd answers every call, but every watch breaks at once (a proxy cutting streams)."""

    lists = 0

    async def list_leases(self):
        self.lists += 1
        return await super().list_leases()

    async def watch_leases(self, revision):
        raise StoreUnavailable("etcd watch broke: stream reset")
        yield  # an async generator, like the real one


async def test_a_flapping_watch_backs_off_and_is_logged_once_not_as_etcd_outages(caplog):
    """Point 3: a watch that keeps breaking while etcd answers re-listed at probe speed with
    an 'etcd unreachable'/'etcd back' pair per break."""
    clock = Clock()
    store = BrokenWatch(clock)
    sleeps = []

    async def fake_sleep(d):
        sleeps.append(d)
        if len(sleeps) >= 12:
            raise asyncio.CancelledError

    conn = Connectivity(store.probe, interval=3600)
    with caplog.at_level(logging.INFO):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(follow_peers(store, LeaseWatcher(), lambda b: None, conn, sleep=fake_sleep,
                                                rng=random.Random(1)), 5)
    text = caplog.text
    assert "etcd unreachable" not in text and "etcd back" not in text and conn.outages == 0
    assert text.count("keeps breaking") == 1
    assert len(caplog.records) == WATCH_FLAPS, text  # two single breaks, then the flapping line
    assert store.lists == 12
    assert all(0 < d <= WATCH_RETRY_CAP for d in sleeps) and sleeps[-1] > WATCH_RETRY_CAP / 2
    assert sum(sleeps) > 25  # backed off: 12 re-lists took > 25 s, not 12 probe rounds


@pytest.mark.parametrize("lived, delay_zero", [(31.0, True), (1.0, False)])
def test_watch_flaps_a_steady_watch_that_breaks_relists_at_once(lived, delay_zero):
    flaps = WatchFlaps(random.Random(0))
    flaps.started(100.0)
    delay, line = flaps.broke(100.0 + lived, "x")
    assert (delay == 0) == delay_zero and "broke" in line
