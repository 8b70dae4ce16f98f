"""IPv6-only networks (EnableIPv4 false) on the userspace backends (issue 17): the peer table has no IPv4
length, the codecs no IPv4 subnet (an IPv4 packet from a peer is not for our subnet, one to a peer has no
lease and no ICMP answer), IPv6 flows as on a dual-stack node; the C engine's verdicts are the same."""

from __future__ import annotations

import ipaddress
import json

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.dataplane.codecs import UdpCodec, VxlanCodec
from overlayd.encap import vxlan
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config

OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
A = "2001:db8::12"
PORT, VNI = 8472, 1
OWN_MAC, MAC_A = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000012")
UNDERLAY = Underlay("eth0", None, 1500, public_ip6=ipaddress.IPv6Address("2001:db8::11"))


def config(kind: str = "udp"):
    return parse_config(json.dumps({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
                                    "Backend": {"Type": kind}}))


def table(mac: bytes | None = None) -> PeerTable:
    t = PeerTable(None, 64)
    t.set(ipaddress.IPv6Network("fd00:10:244:2::/64"), Peer(A, mac))
    return t


def test_a_table_without_an_ipv4_pool_refuses_ipv4_subnets():
    t = table()
    assert t.mask == 0 and t.lookup(bytes([10, 244, 2, 9])) is None
    with pytest.raises(ValueError, match="no IPv4 pool"):
        t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer(A))
    assert t.subnets() == ["fd00:10:244:2::/64"]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["udp", "vxlan"])
async def test_the_backends_take_ipv6_only_peers(kind):
    b = create_backend(config(kind), UNDERLAY, NodeOptions(vxlan_impl="user"))
    data = {"VNI": 1, "VtepMAC": "02:bb:00:00:00:12"} if kind == "vxlan" else None
    peer = Lease(ipaddress.IPv6Network("fd00:10:244:2::/64"),
                 LeaseAttrs(None, kind, None, public_ip6=ipaddress.IPv6Address(A), backend_v6_data=data),
                 subnet6=ipaddress.IPv6Network("fd00:10:244:2::/64"))
    await b.apply(Batch(added=[peer]))
    assert b.peer_subnets() == ["fd00:10:244:2::/64"]
    assert b.table.lookup6(ipaddress.IPv6Address("fd00:10:244:2::9").packed).node_ip == A
    assert b.mtu == (1452 if kind == "udp" else 1430)


def v4(src: str = "10.244.2.7", dst: str = "10.244.1.5") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=1, dport=2) / Raw(b"x" * 8))


def v6(src: str = "fd00:10:244:2::7", dst: str = "fd00:10:244:1::5") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=1, dport=2) / Raw(b"x" * 8))


def udp_codec() -> UdpCodec:
    return UdpCodec(table(), None, PORT, own_subnet6=OWN6, mtu=1452)


@pytest.mark.parametrize("pkt,want", [(v6(), None), (v4(), Drop.NOT_OUR_SUBNET),
                                      (v6(src="fd00:10:244:3::7"), Drop.SPOOFED_SOURCE)])
def test_the_udp_codec_takes_ipv6_and_refuses_ipv4(pkt, want):
    assert udp_codec().inbound(pkt, (A, PORT)) == (pkt if want is None else want)


def test_ipv4_out_has_no_lease_and_no_answer_ipv6_is_answered():
    codec = udp_codec()
    assert codec.outbound(v4(src="10.244.1.5", dst="10.244.2.7")) is Drop.NO_LEASE
    assert codec.answer(Drop.NO_LEASE, v4(src="10.244.1.5", dst="10.244.2.7"), 0.0) is None
    assert codec.outbound(v6(src="fd00:10:244:1::5", dst="fd00:10:244:2::7")) == (A, v6("fd00:10:244:1::5",
                                                                                        "fd00:10:244:2::7"))
    answer = codec.answer(Drop.NO_LEASE, v6(src="fd00:10:244:1::5", dst="fd00:10:244:9::7"), 0.0)
    assert IPv6(answer).src == "fd00:10:244:1::1"


def test_the_vxlan_codec_takes_ipv6_and_refuses_ipv4():
    codec = VxlanCodec(table(MAC_A), None, VNI, OWN_MAC, PORT, own_subnet6=OWN6)
    f6 = bytes(Ether(dst="02:aa:00:00:00:01", src="02:bb:00:00:00:12", type=0x86DD)) + v6()
    f4 = bytes(Ether(dst="02:aa:00:00:00:01", src="02:bb:00:00:00:12", type=0x0800)) + v4()
    assert codec.inbound(vxlan.encapsulate(f6, VNI), (A, 40000)) == f6
    assert codec.inbound(vxlan.encapsulate(f4, VNI), (A, 40000)) is Drop.NOT_OUR_SUBNET


fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")


@pytest.mark.parametrize("pkt", [v6(), v4(), v6(src="fd00:10:244:3::7"), v4(src="10.244.1.9"), v6()[:30]])
def test_the_c_engine_agrees(pkt):
    codec = udp_codec()
    want = codec.inbound(pkt, (A, PORT))
    got = fastpath.classify_inbound(pkt, (A, PORT), PORT, codec.subnet_int, codec.mask, codec.table, codec.subnet6_int)
    assert got == (want.value if isinstance(want, Drop) else want)
    out = bytes(IP(src="10.244.1.5", dst="10.244.2.7")) if pkt[0] >> 4 == 4 else pkt
    want_out = codec.outbound(out)
    assert fastpath.classify_outbound(out, codec.table) == (want_out.value if isinstance(want_out, Drop)
                                                            else want_out)
