import ipaddress

import pytest

from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import LeaseEvent, LeaseWatcher
from overlayd.netconf import parse_config

N = ipaddress.IPv4Network


def lease(subnet, ip, rev=1, btype="udp", data=None, exp=None):
    return Lease(N(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), btype, data), exp, 0, rev)


def subnets(leases):
    return sorted(str(l.subnet) for l in leases)


A = lease("10.244.1.0/24", "198.18.0.11")
B = lease("10.244.2.0/24", "198.18.0.12")
C = lease("10.244.3.0/24", "198.18.0.13")
OWN = lease("10.244.9.0/24", "198.18.0.19")


@pytest.mark.parametrize("before, after, added, removed", [
    ([], [A, B], ["10.244.1.0/24", "10.244.2.0/24"], []),
    ([A, B], [A, B], [], []),
    ([A, B], [B, C], ["10.244.3.0/24"], ["10.244.1.0/24"]),
    ([A, B], [], [], ["10.244.1.0/24", "10.244.2.0/24"]),
    # a renewal (new expiry, new revision) is not a change
    ([A], [lease("10.244.1.0/24", "198.18.0.11", rev=9, exp=123.0)], [], []),
    # a node that moved (new IP) is a change
    ([A], [lease("10.244.1.0/24", "198.18.0.99")], ["10.244.1.0/24"], []),
    # our own subnet is never a peer
    ([], [A, OWN], ["10.244.1.0/24"], []),
])
def test_reset_diffs_snapshots(before, after, added, removed):
    w = LeaseWatcher(own_subnet=OWN.subnet)
    w.reset(before, 10)
    batch = w.reset(after, 20)
    assert subnets(batch.added) == added
    assert subnets(batch.removed) == removed
    assert set(w.peers) == {l.subnet for l in after if l.subnet != OWN.subnet}
    assert w.revision == 20


def test_events_add_update_delete():
    w = LeaseWatcher(own_subnet=OWN.subnet)
    w.reset([A], 10)
    b = w.apply([LeaseEvent(B.subnet, B, 11)])
    assert subnets(b.added) == ["10.244.2.0/24"] and not b.removed
    b = w.apply([LeaseEvent(A.subnet, None, 12)])
    assert subnets(b.removed) == ["10.244.1.0/24"] and not b.added
    b = w.apply([LeaseEvent(A.subnet, None, 13)])  # deleting twice reports nothing
    assert not b
    b = w.apply([LeaseEvent(OWN.subnet, OWN, 14)])
    assert not b
    assert w.revision == 14
    assert set(w.peers) == {B.subnet}


def test_stale_events_at_or_below_snapshot_are_skipped():
    w = LeaseWatcher()
    w.reset([A], 10)
    assert not w.apply([LeaseEvent(A.subnet, None, 10), LeaseEvent(A.subnet, None, 9)])
    assert A.subnet in w.peers


def test_several_events_in_one_revision_all_apply():
    w = LeaseWatcher()
    w.reset([], 10)
    b = w.apply([LeaseEvent(A.subnet, A, 11), LeaseEvent(B.subnet, B, 11)])
    assert subnets(b.added) == ["10.244.1.0/24", "10.244.2.0/24"]


def test_relist_after_break_neither_loses_nor_duplicates():
    w = LeaseWatcher()
    w.reset([A, B], 10)
    w.apply([LeaseEvent(C.subnet, C, 11)])
    # the watch broke; meanwhile B expired and C was rewritten identically
    b = w.reset([A, lease("10.244.3.0/24", "198.18.0.13", rev=15)], 16)
    assert subnets(b.removed) == ["10.244.2.0/24"]
    assert not b.added


def test_revision_going_backwards_resyncs():
    w = LeaseWatcher()
    w.reset([A, B], 500)
    b = w.reset([A], 7)  # etcd restored from an older data dir
    assert subnets(b.removed) == ["10.244.2.0/24"]
    assert w.revision == 7
    b = w.apply([LeaseEvent(C.subnet, C, 8)])  # events after the older revision still count
    assert subnets(b.added) == ["10.244.3.0/24"]


CFG = parse_config({"Network": "10.244.0.0/16"})
NARROW = parse_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.99.0"})


@pytest.mark.parametrize("config, subnet, fits", [
    (CFG, "10.244.2.0/24", True),
    (CFG, "10.244.255.0/24", True),       # SubnetMax itself
    (CFG, "10.244.7.0/25", False),        # SubnetLen changed while old leases live on
    (CFG, "10.244.0.0/16", False),
    (CFG, "0.0.0.0/0", False),            # a key 0.0.0.0-0 must never become a route
    (CFG, "10.245.1.0/24", False),        # outside the Network
    (CFG, "10.244.0.0/24", False),        # the Network's first subnet, below SubnetMin
    (NARROW, "10.244.99.0/24", True),
    (NARROW, "10.244.100.0/24", False),   # inside the Network, above SubnetMax
])
def test_leases_that_do_not_fit_the_config_are_ignored_not_peers(config, subnet, fits):
    w = LeaseWatcher(own_subnet=OWN.subnet, config=config)
    odd = lease(subnet, "198.18.0.50")
    batch = w.reset([A, odd], 5)
    assert subnets(batch.added) == sorted({"10.244.1.0/24", subnet} if fits else {"10.244.1.0/24"})
    assert subnets(batch.ignored) == ([] if fits else [subnet])
    event = w.apply([LeaseEvent(odd.subnet, lease(subnet, "198.18.0.51", rev=6), 6)])
    assert (subnets(event.added), subnets(event.ignored)) == (([subnet], []) if fits else ([], [subnet]))
    gone = w.apply([LeaseEvent(odd.subnet, None, 7)])
    assert subnets(gone.removed) == ([subnet] if fits else [])


def test_a_reservation_without_ttl_is_a_peer_like_any_lease():
    w = LeaseWatcher(own_subnet=OWN.subnet, config=CFG)
    reserved = lease("10.244.5.0/24", "198.18.0.15", exp=None)
    assert subnets(w.reset([reserved], 3).added) == ["10.244.5.0/24"]
    renewed = lease("10.244.5.0/24", "198.18.0.15", rev=4, exp=1e9)  # same node, now with a TTL
    assert not w.apply([LeaseEvent(renewed.subnet, renewed, 4)])
