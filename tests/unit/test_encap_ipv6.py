"""IPv6 inner packets in the userspace data plane's Python reference (issue 17 point 3): the peer table's
IPv6 subnets and senders, the fixed-header check, routing, anti-spoofing, and the ICMPv6 answers
(Destination Unreachable, Packet Too Big), crafted and read back with scapy."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.packet import Raw

from overlayd.dataplane.codecs import UdpCodec
from overlayd.encap import icmp, ipv6, udp
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable

OWN = ipaddress.IPv4Network("10.244.1.0/24")
OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
GATEWAY6 = "fd00:10:244:1::1"
PORT = 8285
MTU = 1472
A, B = "198.18.0.12", "198.18.0.13"


def table() -> PeerTable:
    t = PeerTable(24, 64)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer(A))
    t.set(ipaddress.IPv6Network("fd00:10:244:2::/64"), Peer(A))
    t.set(ipaddress.IPv6Network("fd00:10:244:3::/64"), Peer(B))  # B leases IPv6 only
    return t


def v6(src: str, dst: str, payload: bytes = b"x" * 12) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=1, dport=2) / Raw(payload))


def codec(t: PeerTable | None = None, subnet6=OWN6) -> UdpCodec:
    return UdpCodec(t or table(), OWN, PORT, own_subnet6=subnet6, mtu=MTU)


# ---- the table ----------------------------------------------------------------------------------------

def test_ipv6_subnets_are_looked_up_beside_ipv4_ones():
    t = table()
    assert t.lookup6(ipaddress.IPv6Address("fd00:10:244:2::7").packed) == Peer(A)
    assert t.lookup6(ipaddress.IPv6Address("fd00:10:244:3:ffff::1").packed) == Peer(B)
    assert t.lookup6(ipaddress.IPv6Address("fd00:10:244:9::1").packed) is None
    assert t.lookup(bytes([10, 244, 2, 9])) == Peer(A)
    assert len(t) == 3
    assert t.subnets() == ["10.244.2.0/24", "fd00:10:244:2::/64", "fd00:10:244:3::/64"]
    assert t.mask6 == ((1 << 64) - 1) << 64


def test_the_sender_table_covers_both_families():
    t = table()
    assert len(t.held_by(A)) == 2 and len(t.held_by(B)) == 1
    t.remove(ipaddress.IPv6Network("fd00:10:244:3::/64"))
    assert t.held_by(B) is None
    t.remove(ipaddress.IPv4Network("10.244.2.0/24"))
    assert len(t.held_by(A)) == 1  # its IPv6 subnet is left


def test_an_ipv6_key_never_meets_an_ipv4_one():
    """::/64's network address is 0, as 0.0.0.0/24's: the sender's dict keeps them apart."""
    t = PeerTable(24, 64)
    t.set(ipaddress.IPv6Network("::/64"), Peer(A))
    t.set(ipaddress.IPv4Network("0.0.0.0/24"), Peer(A))
    t.remove(ipaddress.IPv6Network("::/64"))
    assert t.lookup(bytes(4)) == Peer(A)
    assert list(t.held_by(A)) == [0]


def test_a_table_without_an_ipv6_length_refuses_ipv6_subnets():
    t = PeerTable(24)
    with pytest.raises(ValueError, match="no IPv6 pool"):
        t.set(ipaddress.IPv6Network("fd00::/64"), Peer(A))
    with pytest.raises(ValueError, match="not a /64"):
        PeerTable(24, 64).set(ipaddress.IPv6Network("fd00::/56"), Peer(A))
    assert t.lookup6(bytes(16)) is None


# ---- the header check -----------------------------------------------------------------------------------

GOOD = v6("fd00:10:244:1::5", "fd00:10:244:2::7")


@pytest.mark.parametrize("pkt, drop", [
    (GOOD, None),
    (GOOD + b"pad", None),                                 # trailing bytes, as IPv4 has them
    (GOOD[:39], Drop.TRUNCATED),                           # not the whole fixed header
    (GOOD[:-1], Drop.TRUNCATED),                           # payload length beyond the bytes
    (b"", Drop.TRUNCATED),
    (b"\x45" + GOOD[1:], Drop.NOT_IPV4),
    (GOOD[:4] + b"\0\0\0" + GOOD[7:40], Drop.BAD_IP_HEADER),  # a jumbogram (hop-by-hop, length 0)
    (GOOD[:4] + b"\0\0\x3b" + GOOD[7:40], None),           # no next header, no payload: fine
])
def test_check(pkt, drop):
    assert ipv6.check(pkt) == drop


# ---- outbound ---------------------------------------------------------------------------------------------

def test_ipv6_packets_are_routed_by_destination():
    c = codec()
    assert c.outbound(GOOD) == (A, GOOD)
    assert c.outbound(v6("fd00:10:244:1::5", "fd00:10:244:3::1")) == (B, v6("fd00:10:244:1::5", "fd00:10:244:3::1"))
    assert c.outbound(v6("fd00:10:244:1::5", "fd00:10:244:9::1")) is Drop.NO_LEASE
    assert c.outbound(GOOD[:50]) is Drop.TRUNCATED


def test_over_the_tunnel_mtu_is_too_big_after_the_lookup():
    big = v6("fd00:10:244:1::5", "fd00:10:244:2::7", b"x" * (MTU - 48 + 1))
    assert len(big) == MTU + 1
    assert codec().outbound(big) is Drop.TOO_BIG
    assert codec().outbound(big[:-1][:4] + (MTU - 40).to_bytes(2, "big") + big[6:-1]) == (A, big[:4] + (
        MTU - 40).to_bytes(2, "big") + big[6:-1])
    assert codec().outbound(v6("fd00:10:244:1::5", "fd00:10:244:9::1", b"x" * MTU)) is Drop.NO_LEASE
    big4 = bytes(IP(src="10.244.1.5", dst="10.244.2.7") / Raw(b"x" * MTU))
    assert codec().outbound(big4) == (A, big4)  # IPv4: unchanged, the kernel fragments


def test_without_an_ipv6_pool_ipv6_stays_not_ipv4():
    assert udp.outbound(GOOD, PeerTable(24)) is Drop.NOT_IPV4
    assert udp.inbound(v6("fd00:10:244:2::7", "fd00:10:244:1::5"), (A, PORT), PORT, int(OWN.network_address),
                       int(OWN.netmask), table()) is Drop.NOT_IPV4


# ---- inbound: anti-spoofing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst, sender, verdict", [
    ("fd00:10:244:2::7", "fd00:10:244:1::5", A, "ok"),
    ("fd00:10:244:3::7", "fd00:10:244:1::5", B, "ok"),                     # an IPv6-only peer
    ("fd00:10:244:2::7", "fd00:10:244:1::", A, "ok"),                       # to our subnet's network address
    ("fd00:10:244:3::7", "fd00:10:244:1::5", A, Drop.SPOOFED_SOURCE),      # another node's subnet
    ("fd00:10:244:1::7", "fd00:10:244:1::5", A, Drop.SPOOFED_SOURCE),      # our own
    ("2001:db8::1", "fd00:10:244:1::5", A, Drop.SPOOFED_SOURCE),           # outside the Network
    ("fd00:10:244:2::7", "fd00:10:244:2::5", A, Drop.NOT_OUR_SUBNET),
    ("fd00:10:244:2::7", "ff02::1", A, Drop.NOT_OUR_SUBNET),
    ("fd00:10:244:2::7", "fd00:10:244:1::5", "198.18.0.99", Drop.UNKNOWN_SENDER),
])
def test_inbound(src, dst, sender, verdict):
    pkt = v6(src, dst)
    got = codec().inbound(pkt, (sender, PORT))
    assert got == (pkt if verdict == "ok" else verdict)


def test_an_ipv6_only_peer_may_not_send_ipv4():
    pkt = bytes(IP(src="10.244.3.7", dst="10.244.1.5") / UDP())
    assert codec().inbound(pkt, (B, PORT)) is Drop.SPOOFED_SOURCE


def test_inbound_ipv6_is_refused_without_our_own_ipv6_subnet():
    assert codec(subnet6=None).inbound(v6("fd00:10:244:2::7", "fd00:10:244:1::5"), (A, PORT)) is Drop.NOT_IPV4


# ---- ICMPv6 answers -----------------------------------------------------------------------------------------

def valid_icmp6(reply: bytes):
    """The reply parsed, after checking its ICMPv6 checksum the way scapy computes it."""
    got = IPv6(reply)
    fresh = IPv6(reply)
    del fresh.payload.cksum
    assert IPv6(bytes(fresh)).payload.cksum == got.payload.cksum
    assert got.plen == len(reply) - 40 and len(reply) <= 1280
    return got


def test_destination_unreachable_from_our_ipv6_gateway():
    pkt = v6("fd00:10:244:1::5", "fd00:10:244:9::1")
    reply = codec().answer(Drop.NO_LEASE, pkt, 0.0)
    got = valid_icmp6(reply)
    assert (got.src, got.dst, got.nh, got.hlim) == (GATEWAY6, "fd00:10:244:1::5", 58, 64)
    icmp6 = got[ICMPv6DestUnreach]
    assert (icmp6.type, icmp6.code) == (1, 0)
    assert bytes(icmp6)[8:] == pkt


def test_packet_too_big_carries_the_tunnel_mtu_and_stays_within_1280():
    big = v6("fd00:10:244:1::5", "fd00:10:244:2::7", b"y" * 3000)
    reply = codec().answer(Drop.TOO_BIG, big, 0.0)
    got = valid_icmp6(reply)
    assert len(reply) == 1280
    ptb = got[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, MTU)
    assert bytes(ptb)[8:] == big[:1280 - 48]
    assert got.src == GATEWAY6


@pytest.mark.parametrize("pkt", [
    bytes(IPv6(src="fd00:10:244:1::5", dst="fd00:10:244:9::1") / ICMPv6DestUnreach() / Raw(GOOD)),  # an error
    bytes(IPv6(src="fd00:10:244:1::5", dst="fd00:10:244:9::1") / ICMPv6PacketTooBig() / Raw(GOOD)),
    v6("::", "fd00:10:244:9::1"),                       # unspecified source
    v6("ff02::1", "fd00:10:244:9::1"),                  # multicast source
    v6("fd00:10:244:1::5", "ff0e::1"),                  # multicast destination
])
def test_no_unreachable_where_rfc_4443_forbids_one(pkt):
    assert codec().answer(Drop.NO_LEASE, pkt, 0.0) is None


def test_an_echo_request_is_answered_and_too_big_goes_to_a_multicast_group_too():
    echo = bytes(IPv6(src="fd00:10:244:1::5", dst="fd00:10:244:9::1") / ICMPv6EchoRequest())
    assert valid_icmp6(codec().answer(Drop.NO_LEASE, echo, 0.0))[ICMPv6DestUnreach]
    to_group = v6("fd00:10:244:1::5", "ff0e::1", b"z" * 2000)
    assert valid_icmp6(icmp.packet_too_big(to_group, icmp.gateway6(int(OWN6.network_address)), 1400)).mtu == 1400


def test_answers_are_rate_limited_and_ipv4_is_answered_as_before():
    c = codec()
    pkt = v6("fd00:10:244:1::5", "fd00:10:244:9::1")
    assert sum(c.answer(Drop.NO_LEASE, pkt, 5.0) is not None for _ in range(50)) == 20  # the burst
    v4 = bytes(IP(src="10.244.1.5", dst="10.244.9.9") / UDP())
    assert IP(codec().answer(Drop.NO_LEASE, v4, 0.0)).src == "10.244.1.1"
    assert codec().answer(Drop.SPOOFED_SOURCE, pkt, 0.0) is None
