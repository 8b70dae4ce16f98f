"""An IPv6 underlay in the C engine's table (issue 17: nodes without a PublicIP reach their peers at
their PublicIPv6): peers' node IPs of either family, senders known by their address as recvfrom
writes it, the anti-spoofing owner compared by address; the C verdicts equal the Python reference's
(udp.inbound, VxlanCodec.inbound, the outbound routes) on vectors and seeded mutations."""

from __future__ import annotations

import ipaddress
import os
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from overlayd.dataplane.codecs import VxlanCodec
from overlayd.encap import ether, udp, vxlan
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")

OWN = ipaddress.IPv4Network("10.244.1.0/24")
OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
PORT, VNI = 8472, 1
OWN_MAC = bytes.fromhex("02aa00000001")
A, B, C4 = "2001:db8::12", "2001:db8:0:1::13", "198.18.0.14"
MAC = {A: bytes.fromhex("02bb00000012"), B: bytes.fromhex("02bb00000013"), C4: bytes.fromhex("02bb00000014")}


def table(vxlan_peers: bool = False) -> PeerTable:
    t = PeerTable(24, 64)
    for n, node in ((2, A), (3, B), (4, C4)):
        peer = Peer(node, MAC[node] if vxlan_peers else None)
        t.set(ipaddress.IPv4Network(f"10.244.{n}.0/24"), peer)
        t.set(ipaddress.IPv6Network(f"fd00:10:244:{n}::/64"), peer)
    t.set(ipaddress.IPv4Network("10.244.5.0/24"), Peer("2001:DB8::15"))       # not as recvfrom writes it
    t.set(ipaddress.IPv4Network("10.244.6.0/24"), Peer("::ffff:198.18.0.16"))  # IPv4-mapped
    return t


def v4(src: str, dst: str = "10.244.1.5") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=1, dport=2) / Raw(b"x" * 8))


def v6(src: str, dst: str = "fd00:10:244:1::5") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=1, dport=2) / Raw(b"x" * 8))


PACKETS = [v4("10.244.2.7"), v4("10.244.3.7"), v4("10.244.4.7"), v4("10.244.5.7"), v4("10.244.6.7"),
           v6("fd00:10:244:2::7"), v6("fd00:10:244:3::7"), v6("fd00:10:244:4::7"), v6("fd00:10:244:9::7"),
           v6("fd00:10:244:2::7", dst="fd00:10:244:2::1")]
# as recvfrom writes senders (the engine's received addresses are canonical): so the peers' texts above that
# are not (upper case, IPv4-mapped) never match a sender, in Python by text, in C by not being senders at all
SENDERS = [A, B, C4, "2001:db8::99", "2001:db8::15", "198.18.0.16", "::ffff:198.18.0.14", "fe80::1"]


def py_in(dgram: bytes, sender: str, port: int, t: PeerTable):
    v = udp.inbound(dgram, (sender, port), PORT, int(OWN.network_address), int(OWN.netmask), t,
                    int(OWN6.network_address))
    return v.value if isinstance(v, Drop) else v


def c_in(dgram: bytes, sender: str, port: int, t: PeerTable):
    return fastpath.classify_inbound(dgram, (sender, port), PORT, int(OWN.network_address), int(OWN.netmask), t,
                                     int(OWN6.network_address))


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pkt", PACKETS)
def test_udp_inbound_from_ipv6_senders_agrees(pkt, sender):
    assert c_in(pkt, sender, PORT, table()) == py_in(pkt, sender, PORT, table())


def test_the_vectors_say_what_they_claim():
    t = table()
    assert py_in(v6("fd00:10:244:2::7"), A, PORT, t) == v6("fd00:10:244:2::7")
    assert py_in(v4("10.244.3.7"), B, PORT, t) == v4("10.244.3.7")
    assert py_in(v6("fd00:10:244:3::7"), A, PORT, t) == Drop.SPOOFED_SOURCE.value
    assert py_in(v6("fd00:10:244:2::7"), "2001:db8::99", PORT, t) == Drop.UNKNOWN_SENDER.value
    assert py_in(v6("fd00:10:244:2::7"), A, PORT + 1, t) == Drop.WRONG_SOURCE_PORT.value
    assert py_in(v4("10.244.5.7"), "2001:db8::15", PORT, t) == Drop.UNKNOWN_SENDER.value  # non-canonical peer text


def test_outbound_routes_to_ipv6_node_ips():
    t = table()
    for pkt, node in ((v6("fd00:10:244:1::5", dst="fd00:10:244:3::7"), B), (v4("10.244.1.5", dst="10.244.2.7"), A)):
        assert fastpath.classify_outbound(pkt, t) == (node, pkt) and udp.outbound(pkt, t) == (Peer(node), pkt)
    frame = OWN_MAC + OWN_MAC + b"\x86\xdd" + v6("fd00:10:244:1::5", dst="fd00:10:244:2::7")
    codec = VxlanCodec(table(True), OWN, VNI, OWN_MAC, PORT, own_subnet6=OWN6)
    assert fastpath.classify_tap_outbound(frame, VNI, table(True)) == codec.outbound(frame)


@pytest.mark.parametrize("sender", SENDERS)
def test_vxlan_inbound_from_ipv6_senders_agrees(sender):
    t = table(True)
    codec = VxlanCodec(t, OWN, VNI, OWN_MAC, PORT, own_subnet6=OWN6)
    for pkt in PACKETS:
        src_mac = MAC.get(A) if pkt in (PACKETS[0], PACKETS[5]) else MAC[B]
        frame = OWN_MAC + src_mac + (b"\x86\xdd" if pkt[0] >> 4 == 6 else b"\x08\x00") + pkt
        payload = vxlan.encapsulate(frame, VNI)
        want = codec.inbound(payload, (sender, 40000))
        got = fastpath.classify_vxlan_inbound(payload, sender, VNI, OWN_MAC, int(OWN.network_address),
                                              int(OWN.netmask), t, 65535, int(OWN6.network_address))
        assert got == (want.value if isinstance(want, Drop) else want), (pkt.hex(), sender)


def test_random_mutations_agree():
    rng = random.Random(1717)
    t = table()
    for _ in range(400 * int(os.environ.get("OVERLAYD_MUTATION_ROUNDS", "1"))):
        pkt = bytearray(rng.choice(PACKETS))
        for _ in range(rng.randrange(0, 3)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        sender = rng.choice(SENDERS[:4])
        if rng.random() < 0.3:  # a sender address one bit off
            raw = bytearray(ipaddress.ip_address(sender).packed)
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            sender = str(ipaddress.ip_address(bytes(raw)))
        port = PORT if rng.random() < 0.9 else PORT + 1
        assert c_in(bytes(pkt), sender, port, t) == py_in(bytes(pkt), sender, port, t), (pkt.hex(), sender)
        frame = ether.build_ethernet(OWN_MAC, MAC[B], ether.ETH_P_IPV6 if pkt[0] >> 4 == 6 else ether.ETH_P_IP)
        payload = vxlan.encapsulate(frame + bytes(pkt), VNI)
        tv = table(True)
        want = VxlanCodec(tv, OWN, VNI, OWN_MAC, PORT, own_subnet6=OWN6).inbound(payload, (sender, 40000))
        assert fastpath.classify_vxlan_inbound(payload, sender, VNI, OWN_MAC, int(OWN.network_address),
                                               int(OWN.netmask), tv, 65535, int(OWN6.network_address)) == \
            (want.value if isinstance(want, Drop) else want)
