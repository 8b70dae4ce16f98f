"""flannel's dual-stack lease keys in a real etcd (issue 17, point 1): a lease a flannel
node wrote as ``10.244.3.0-24&fd00:10:244:3::-64`` is listed, watched and renewed under
that key, with its IPv6 half, by an IPv4 overlayd; an IPv6-only one is read and ignored."""

from __future__ import annotations

import ipaddress

from overlayd.lease.etcd import EtcdStore
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config

DUAL_VALUE = (b'{"PublicIP":"198.18.0.13","PublicIPv6":"2001:db8::13","BackendType":"udp",'
              b'"BackendData":null,"BackendV6Data":null}')
ONLY6_VALUE = b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::14","BackendType":"udp"}'


async def test_flannel_dual_stack_and_ipv6_only_keys(etcd_server, etcd_prefix):
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    dual_key = f"{etcd_prefix}/subnets/10.244.3.0-24&fd00:10:244:3::-64".encode()
    only6_key = f"{etcd_prefix}/subnets/0.0.0.0-0&fd00:10:244:4::-64".encode()
    try:
        _, start = await store.list_leases()
        grant = await store._call(lambda c: c.lease(60))
        await store._call(lambda c: c.put(dual_key, DUAL_VALUE, lease=grant.id))
        await store._call(lambda c: c.put(only6_key, ONLY6_VALUE))
        listed, _ = await store.list_leases()
        by = {l.subnet: l for l in listed}
        dual = by[ipaddress.IPv4Network("10.244.3.0/24")]
        assert dual.subnet6 == ipaddress.IPv6Network("fd00:10:244:3::/64")
        assert str(dual.attrs.public_ip6) == "2001:db8::13" and dual.handle == grant.id
        only6 = by[ipaddress.IPv6Network("fd00:10:244:4::/64")]
        assert only6.public_ip is None and only6.subnet6 == only6.subnet

        # renewing addresses the dual-stack key itself (not a 10.244.3.0-24 that does not exist)
        renewed = await store.renew_lease(dual)
        assert renewed.subnet6 == dual.subnet6 and renewed.handle == grant.id

        # the watch reads both; an IPv4 network follows the dual-stack peer, ignores the other
        events = []
        async for batch in store.watch_leases(start):
            events.extend(batch)
            if len(events) >= 2:
                break
        watcher = LeaseWatcher(config=parse_config({"Network": "10.244.0.0/16"}))
        out = watcher.apply(events)
        assert [l.subnet for l in out.added] == [dual.subnet]
        assert [l.subnet for l in out.ignored] == [only6.subnet]
        assert watcher.peers[dual.subnet].subnet6 == dual.subnet6
    finally:
        await store.close()


async def test_a_pair_is_created_only_from_an_unchanged_listing(etcd_server, etcd_prefix):
    """Two nodes choose the same IPv6 subnet beside different IPv4 subnets from one listing:
    their keys differ, so the key compare alone lets both in (flannel's createSubnet has
    this race); the compare over the subnets prefix lets only the first in."""
    from overlayd.lease.model import LeaseAttrs

    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    v6 = ipaddress.IPv6Network("fd00:10:244:7::/64")
    a = LeaseAttrs(ipaddress.IPv4Address("198.18.0.21"), "udp", public_ip6=ipaddress.IPv6Address("2001:db8::21"))
    b = LeaseAttrs(ipaddress.IPv4Address("198.18.0.22"), "udp", public_ip6=ipaddress.IPv6Address("2001:db8::22"))
    try:
        _, listed_at = await store.list_leases()
        first = await store.create_lease(ipaddress.IPv4Network("10.244.7.0/24"), a, 60,
                                         subnet6=v6, unchanged_since=listed_at)
        assert first is not None and first.subnet6 == v6
        second = await store.create_lease(ipaddress.IPv4Network("10.244.8.0/24"), b, 60,
                                          subnet6=v6, unchanged_since=listed_at)
        assert second is None
        leases, now = await store.list_leases()
        assert [(l.subnet, l.subnet6) for l in leases] == [(first.subnet, v6)]
        # from a fresh listing a free pair goes in
        third = await store.create_lease(ipaddress.IPv4Network("10.244.8.0/24"), b, 60,
                                         subnet6=ipaddress.IPv6Network("fd00:10:244:8::/64"),
                                         unchanged_since=now)
        assert third is not None
        # update and delete address the dual-stack key
        updated = await store.update_lease(first, a, 60)
        assert updated is not None and updated.subnet6 == v6
        assert await store.delete_lease(first.subnet, subnet6=v6)
        assert not await store.delete_lease(third.subnet)  # the IPv4-only key does not exist
        leases, _ = await store.list_leases()
        assert [l.subnet for l in leases] == [third.subnet]
    finally:
        await store.close()
