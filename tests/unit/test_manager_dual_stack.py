"""The lease policy for dual-stack and IPv6-only networks (issue 17, point 1), against the
in-memory store: both families in one create, the pair back after a restart, the subnet
file's pair, a lease from before IPv6 was enabled kept (flannel renumbers the node), and a
pair chosen from a listing that changed meanwhile refused (flannel's createSubnet checks
the key alone, so two nodes can take one IPv6 subnet beside two IPv4 subnets)."""

import ipaddress
import random

import pytest

from overlayd.errors import LeaseError, NetworkFullError
from overlayd.lease.manager import LeaseManager
from overlayd.lease.memory import MemoryStore
from overlayd.lease.model import LeaseAttrs
from overlayd.netconf import parse_config

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
DUAL = parse_config({"Network": "10.244.0.0/22", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/62"})  # three subnets of each family
ONLY6 = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/62"})
V4 = parse_config({"Network": "10.244.0.0/22"})


def clock():
    return 1000.0


def attrs(n, v4=True):
    return LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.{n}") if v4 else None, "udp",
                      public_ip6=ipaddress.IPv6Address(f"2001:db8::{n}"))


def manager(store, n, config=DUAL, **kw):
    return LeaseManager(store, config, attrs(n, config.ipv4 is not None), ttl=60, clock=clock,
                        rng=random.Random(n), **kw)


async def test_a_dual_stack_node_gets_a_pair_and_the_same_pair_after_a_restart():
    store = MemoryStore(clock)
    got = [await manager(store, n).acquire() for n in (11, 12, 13)]
    assert all(DUAL.contains_subnet(l.subnet) and DUAL.contains_subnet(l.subnet6) for l in got)
    assert len({l.subnet for l in got}) == 3 and len({l.subnet6 for l in got}) == 3
    again = await manager(store, 12).acquire()
    assert (again.subnet, again.subnet6) == (got[1].subnet, got[1].subnet6)
    with pytest.raises(NetworkFullError):
        await manager(store, 14).acquire()
    leases, _ = await store.list_leases()
    assert len(leases) == 3


async def test_an_ipv6_only_node_is_known_by_its_ipv6_subnet_and_its_ipv6_address():
    store = MemoryStore(clock)
    a = await manager(store, 11, ONLY6).acquire()
    b = await manager(store, 12, ONLY6).acquire()
    assert a.subnet == a.subnet6 and a.subnet.version == 6 and a.public_ip is None
    assert b.subnet != a.subnet  # flannel matches PublicIP 0.0.0.0: every node would "reuse" a's lease
    assert (await manager(store, 12, ONLY6).acquire()).subnet == b.subnet


async def test_the_subnet_files_pair_is_taken_back():
    store = MemoryStore(clock)
    lease = await manager(store, 11, hint=N4("10.244.2.0/24"), hint6=N6("fd00:10:244:3::/64")).acquire()
    assert (lease.subnet, lease.subnet6) == (N4("10.244.2.0/24"), N6("fd00:10:244:3::/64"))


async def test_a_lease_from_before_ipv6_keeps_its_ipv4_subnet_and_gains_an_ipv6_one():
    store = MemoryStore(clock)
    before = await LeaseManager(store, V4, attrs(11), ttl=60, clock=clock, rng=random.Random(5)).acquire()
    after = await manager(store, 11).acquire()
    assert after.subnet == before.subnet and DUAL.contains_subnet(after.subnet6)
    leases, _ = await store.list_leases()
    assert [(l.subnet, l.subnet6) for l in leases] == [(after.subnet, after.subnet6)]  # the old key went
    # and back: IPv6 disabled again keeps the IPv4 subnet, drops the IPv6 half
    back = await LeaseManager(store, V4, attrs(11), ttl=60, clock=clock).acquire()
    assert (back.subnet, back.subnet6) == (before.subnet, None)
    leases, _ = await store.list_leases()
    assert [(l.subnet, l.subnet6) for l in leases] == [(before.subnet, None)]


async def test_a_pair_from_a_listing_that_changed_is_refused_and_chosen_again():
    store = MemoryStore(clock)

    class Racing:
        """Another node creates a lease with the same IPv6 subnet between our listing and our
        create (a different IPv4 subnet: a different key)."""

        def __init__(self, inner):
            self.inner, self.raced = inner, False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def create_lease(self, subnet, attrs_, ttl, **kw):
            if not self.raced:
                self.raced = True
                other = next(s for s in (N4("10.244.1.0/24"), N4("10.244.2.0/24")) if s != subnet)
                await self.inner.create_lease(other, attrs(99), 60, subnet6=kw["subnet6"])
            return await self.inner.create_lease(subnet, attrs_, ttl, **kw)

    racing = Racing(store)
    mgr = manager(racing, 11)
    mine = await mgr.acquire()
    assert mgr.attempts == 2
    leases, _ = await store.list_leases()
    assert len({l.subnet6 for l in leases}) == len(leases) == 2
    assert mine.subnet6 not in {l.subnet6 for l in leases if l.public_ip != mine.public_ip}


async def test_taking_our_own_pair_back_and_refusing_it_when_half_is_gone():
    store = MemoryStore(clock)
    mgr = manager(store, 11)
    lease = await mgr.acquire()
    await store.delete_lease(lease.subnet, subnet6=lease.subnet6)
    back = await mgr.acquire(only=lease.subnet, only6=lease.subnet6)
    assert (back.subnet, back.subnet6) == (lease.subnet, lease.subnet6)
    await store.delete_lease(back.subnet, subnet6=back.subnet6)
    other = next(s for s in (N4("10.244.1.0/24"), N4("10.244.2.0/24")) if s != lease.subnet)
    await store.create_lease(other, attrs(12), 60, subnet6=lease.subnet6)  # its IPv6 half went to node 12
    with pytest.raises(LeaseError, match=f"subnet {lease.subnet} and {lease.subnet6} is now held by 198.18.0.12"):
        await mgr.acquire(only=lease.subnet, only6=lease.subnet6)
