import ipaddress

import pytest

from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch, LeaseEvent, LeaseWatcher, Thaw
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


def test_a_listing_batch_says_so_and_an_events_batch_does_not():
    # the wireguard backend greets the peers a listing brings (they were there before us), not
    # those that join later by a watch event (they greet us from their own listing)
    w = LeaseWatcher(own_subnet=OWN.subnet)
    assert w.reset([A], 10).listed
    assert not w.apply([LeaseEvent(B.subnet, B, 11)]).listed
    assert w.reset([A, B, C], 12).listed


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


# -- issue 16: peers held through an etcd thaw ------------------------------------------

def tlease(subnet, ip, handle, rev=1, btype="udp"):
    return Lease(N(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), btype), 100.0, handle, rev)


TA = tlease("10.244.1.0/24", "198.18.0.11", handle=7)
TB = tlease("10.244.2.0/24", "198.18.0.12", handle=8)
RES = lease("10.244.3.0/24", "198.18.0.13")  # a reservation: no etcd lease (handle 0)
THAW = Thaw(until=50.0, live=frozenset({99}))


@pytest.mark.parametrize("gone, thaw, removed, held", [
    # the thaw: the key vanished with its etcd lease (expired): the route stays, held until 50
    (TA, THAW, [], {TA.subnet: 50.0}),
    # outside the window (no thaw): removed at once, as always
    (TA, None, [TA.subnet], {}),
    # deleted while its etcd lease lives (etcdctl del): removed at once, thaw or not
    (TA, Thaw(until=50.0, live=frozenset({7})), [TA.subnet], {}),
    # a reservation has no etcd lease to expire: its key went on purpose
    (RES, THAW, [RES.subnet], {}),
])
def test_a_vanished_peer_is_held_only_when_its_key_expired_around_an_outage(gone, thaw, removed, held):
    for how in ("listing", "event"):
        w = LeaseWatcher(own_subnet=OWN.subnet)
        w.reset([gone, TB], 10)
        if how == "listing":
            assert w.vanishing([TB]) == [gone]
            batch = w.reset([TB], 20, thaw)
        else:
            events = [LeaseEvent(gone.subnet, None, 11)]
            assert w.vanishing(events=events) == [gone]
            batch = w.apply(events, thaw)
        assert [l.subnet for l in batch.removed] == removed, how
        assert [l.subnet for l in batch.held] == list(held), how
        assert w.held == held, how
        assert (gone.subnet in w.peers) == bool(held), how
        assert w.next_expiry() == (50.0 if held else None)


@pytest.mark.parametrize("back, added", [
    # the owner puts its key back (a new etcd lease, same node): nothing to tell the backend
    (tlease("10.244.1.0/24", "198.18.0.11", handle=70, rev=30), []),
    # the subnet came back for another node: a change, reported as such
    (tlease("10.244.1.0/24", "198.18.0.99", handle=71, rev=30), ["10.244.1.0/24"]),
])
def test_a_held_peer_that_comes_back_is_no_longer_held(back, added):
    for how in ("listing", "event"):
        w = LeaseWatcher()
        w.reset([TA, TB], 10)
        assert w.reset([TB], 20, THAW) == Batch(held=[TA], listed=True)
        batch = w.reset([back, TB], 30) if how == "listing" else w.apply([LeaseEvent(back.subnet, back, 30)])
        assert (subnets(batch.added), batch.removed) == (added, []), how
        assert w.held == {} and w.peers[TA.subnet] == back, how
        assert not w.expire(1e9), how  # nothing left to expire


def test_a_held_peer_is_removed_when_its_grace_ends_and_only_then():
    w = LeaseWatcher()
    w.reset([TA, TB], 10)
    w.reset([TB], 20, THAW)
    assert not w.reset([TB], 21, Thaw(until=90.0))  # listed again: the first grace runs on
    assert w.held == {TA.subnet: 50.0}
    assert not w.expire(49.9)
    assert [l.subnet for l in w.expire(50.0).removed] == [TA.subnet]
    assert TA.subnet not in w.peers and w.held == {}
    assert not w.apply([LeaseEvent(TA.subnet, None, 22)])  # deleting twice reports nothing


def test_a_thaw_holds_nothing_that_was_not_a_peer():
    w = LeaseWatcher(own_subnet=OWN.subnet)
    w.reset([TA], 10)
    assert w.vanishing(events=[LeaseEvent(TB.subnet, None, 11), LeaseEvent(TA.subnet, None, 9)]) == []
    assert not w.apply([LeaseEvent(TB.subnet, None, 11)], THAW)
    assert w.held == {}


# -- issue 16: keys that point at us but are not ours; one validity rule ------------------

from overlayd.lease.audit import audit, misfit  # noqa: E402

ME = ipaddress.IPv4Address("198.18.0.19")
STRAY = tlease("10.244.5.0/24", "198.18.0.19", handle=5)


def test_a_key_naming_our_ip_for_another_subnet_is_a_stray_reported_once_never_a_peer():
    w = LeaseWatcher(own_subnet=OWN.subnet, config=CFG, own_ip=ME)
    b = w.reset([A, OWN, STRAY], 10)
    assert subnets(b.added) == ["10.244.1.0/24"] and b.strays == [STRAY]
    assert STRAY.subnet not in w.peers and w.strays == {STRAY.subnet: STRAY}
    assert not w.reset([A, OWN, STRAY], 11)  # listed again: nothing new to say
    assert not w.apply([LeaseEvent(STRAY.subnet, STRAY, 12)])
    moved = tlease("10.244.5.0/24", "198.18.0.19", handle=6, rev=13)  # rebound to another etcd lease
    assert w.apply([LeaseEvent(STRAY.subnet, moved, 13)]).strays == [moved]
    assert not w.apply([LeaseEvent(STRAY.subnet, None, 14)]) and w.strays == {}
    # a peer's key rewritten to name us stops being a peer at once
    b = w.apply([LeaseEvent(A.subnet, tlease("10.244.1.0/24", "198.18.0.19", handle=7, rev=15), 15)])
    assert subnets(b.removed) == ["10.244.1.0/24"] and subnets(b.strays) == ["10.244.1.0/24"]
    assert subnets(w.reset([OWN], 16).removed) == [] and w.strays == {}


@pytest.mark.parametrize("subnet, why", [
    ("10.244.2.0/24", None),
    ("10.245.1.0/24", "outside the Network 10.244.0.0/16"),
    ("0.0.0.0/0", "outside the Network 10.244.0.0/16"),
    ("10.244.2.0/23", "not a /24 (SubnetLen)"),
    ("10.244.0.0/24", "below SubnetMin 10.244.1.0"),
])
def test_misfit_says_why_a_lease_is_not_a_peer(subnet, why):
    assert misfit(N(subnet), CFG) == why
    assert LeaseWatcher(config=CFG).fits(N(subnet)) == (why is None)


def test_audit_marks_what_the_daemons_ignore_and_keys_sharing_a_public_ip():
    reserved_wide = lease("10.244.2.0/23", "198.18.0.40")  # a reservation over live /24s
    outside = lease("10.250.0.0/24", "198.18.0.41")
    twin = tlease("10.244.7.0/24", "198.18.0.12", handle=9)  # B's node, a second key
    notes = audit([A, B, C, reserved_wide, outside, twin], CFG)
    assert notes == {
        N("10.244.2.0/23"): ["ignored: not a /24 (SubnetLen)", "overlaps 10.244.2.0/24, 10.244.3.0/24"],
        N("10.250.0.0/24"): ["ignored: outside the Network 10.244.0.0/16"],
        N("10.244.2.0/24"): ["198.18.0.12 also holds 10.244.7.0/24"],
        N("10.244.7.0/24"): ["198.18.0.12 also holds 10.244.2.0/24"],
    }


def test_deleting_another_key_of_the_same_subnet_leaves_the_peer():
    """A node moves its lease to a dual-stack key (IPv6 enabled) and then deletes its old
    IPv4-only key: peers keep it (the delete names the old key, not the node's lease)."""
    six = ipaddress.IPv6Network("fd00:10:244:1::/64")
    moved = Lease(A.subnet, LeaseAttrs(A.public_ip, "udp", public_ip6=ipaddress.IPv6Address("2001:db8::11")),
                  None, 0, 11, six)
    w = LeaseWatcher(own_subnet=OWN.subnet)
    w.reset([A], 10)
    assert w.apply([LeaseEvent(A.subnet, moved, 11, six)]).added == [moved]
    assert w.vanishing(events=[LeaseEvent(A.subnet, None, 12)]) == []
    assert not w.apply([LeaseEvent(A.subnet, None, 12)])  # the old key went
    assert w.peers[A.subnet] == moved
    assert w.apply([LeaseEvent(A.subnet, None, 13, six)]).removed == [moved]  # the lease itself went
