"""The userspace backends over an IPv6 underlay (issue 17: a node without a PublicIP): the overlay MTU
leaves room for the 40-byte IPv6 header, and peers are reached at their PublicIPv6."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.encap.table import Peer
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config

V4 = Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500, public_ip6=ipaddress.IPv6Address("2001:db8::11"))
V6 = Underlay("eth0", None, 1500, public_ip6=ipaddress.IPv6Address("2001:db8::11"))


def backend(kind: str, underlay: Underlay):
    raw = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": kind}}
    return create_backend(parse_config(json.dumps(raw)), underlay,
                          NodeOptions(vxlan_impl="user", datapath="python"))


@pytest.mark.parametrize("kind,over4,over6", [("udp", 1472, 1452), ("vxlan", 1450, 1430)])
def test_the_overlay_mtu_leaves_room_for_the_ipv6_header(kind, over4, over6):
    assert (backend(kind, V4).mtu, backend(kind, V6).mtu) == (over4, over6)


@pytest.mark.asyncio
async def test_peers_are_reached_over_the_underlays_family():
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.18.0.12"), "udp", public_ip6=ipaddress.IPv6Address("2001:db8::12"))
    peer = Lease(ipaddress.IPv4Network("10.244.2.0/24"), attrs, subnet6=ipaddress.IPv6Network("fd00:10:244:2::/64"))
    only4 = Lease(ipaddress.IPv4Network("10.244.3.0/24"), LeaseAttrs(ipaddress.IPv4Address("198.18.0.13"), "udp"))
    for underlay, node in ((V4, "198.18.0.12"), (V6, "2001:db8::12")):
        b = backend("udp", underlay)
        await b.apply(Batch(added=[peer, only4]))
        assert b.table.lookup6(ipaddress.IPv6Address("fd00:10:244:2::9").packed) == Peer(node)
        assert b.table.lookup(bytes([10, 244, 2, 9])) == Peer(node)
    assert b.table.lookup(bytes([10, 244, 3, 9])) is None  # no PublicIPv6: not reachable over IPv6
    assert b.stats()["incompatible_peers"] == 1


@pytest.mark.asyncio
async def test_direct_routing_stays_off_over_an_ipv6_underlay(monkeypatch):
    """DirectRouting routes a peer's IPv4 subnet via its PublicIP on our segment: a node whose tunnels run
    over IPv6 has no such segment, so every peer stays encapsulated (and nothing fails)."""
    from overlayd.backend import vxlan_user
    from tests.unit.test_direct_routing import FakeNetlink
    fake = FakeNetlink()
    monkeypatch.setattr(vxlan_user, "Netlink", lambda: fake)
    raw = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
           "Backend": {"Type": "vxlan", "DirectRouting": True}}
    b = create_backend(parse_config(json.dumps(raw)), V6, NodeOptions(vxlan_impl="user"))
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.18.0.12"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:05"},
                       public_ip6=ipaddress.IPv6Address("2001:db8::12"))
    await b.apply(Batch(added=[Lease(ipaddress.IPv4Network("10.244.2.0/24"), attrs,
                                     subnet6=ipaddress.IPv6Network("fd00:10:244:2::/64"))]))
    assert fake.direct() == {} and b.stats()["direct_peers"] == 0
    assert b.table.lookup(bytes([10, 244, 2, 9])).node_ip == "2001:db8::12"


def test_datagrams_are_checksummed_over_an_ipv6_underlay_so_the_engine_uses_udp_gso():
    assert (backend("udp", V4).udp_checksum, backend("udp", V6).udp_checksum) == (False, True)
    with_flag = create_backend(backend("udp", V4).config, V4, NodeOptions(datapath="c", udp_checksum=True))
    assert with_flag.udp_checksum
