"""IPv6 frames over the userspace VXLAN backend's tap (issue 17 point 3), Python reference: EtherType
0x86DD routed by the IPv6 subnet table, admitted by the IPv6 anti-spoofing rules, partial checksums
completed and kernel-VTEP superpackets cut with the IPv6 pseudo-header, and the ICMPv6 answer in an
Ethernet frame; crafted and read back with scapy. IPv4 frames are untouched (tests/unit/test_encap.py)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6MLReport2, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from overlayd.dataplane.codecs import VxlanCodec
from overlayd.encap import ether, gso, ipv6, vxlan
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable

OWN = ipaddress.IPv4Network("10.244.1.0/24")
OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
OWN_MAC, MAC_A, MAC_B = "02:aa:00:00:00:01", "02:aa:00:00:00:0a", "02:aa:00:00:00:0b"
A, B = "198.18.0.12", "198.18.0.13"
VNI, PORT = 1, 8472
POD, POD_A, POD_B = "fd00:10:244:1::5", "fd00:10:244:2::7", "fd00:10:244:3::9"


def mac(text: str) -> bytes:
    return ether.mac_to_bytes(text)


def table() -> PeerTable:
    t = PeerTable(24, 64)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer(A, mac(MAC_A)))
    t.set(ipaddress.IPv6Network("fd00:10:244:2::/64"), Peer(A, mac(MAC_A)))
    t.set(ipaddress.IPv6Network("fd00:10:244:3::/64"), Peer(B, mac(MAC_B)))  # B: IPv6 only
    return t


def frame(pkt, dst: str = OWN_MAC, src: str = OWN_MAC) -> bytes:
    """IPv6 packet ``pkt`` (scapy's, or its bytes) in an Ethernet frame."""
    return ether.build_ethernet(mac(dst), mac(src), ether.ETH_P_IPV6) + bytes(pkt)


def out6(dst: str = POD_A, payload: bytes = b"x" * 20) -> bytes:
    """What the kernel writes to the NOARP tap: addressed to the tap's own MAC."""
    return frame(IPv6(src=POD, dst=dst) / UDP(sport=1, dport=2) / Raw(payload))


def in6(src: str = POD_A, dst: str = POD, smac: str = MAC_A, l4=None) -> bytes:
    """What a peer's VTEP sends us: to our VtepMAC, from its own."""
    return frame(IPv6(src=src, dst=dst) / (l4 if l4 is not None else UDP(sport=1, dport=2) / Raw(b"y" * 20)),
                 dst=OWN_MAC, src=smac)


def inbound(f: bytes, sender: str = A, subnet6=OWN6, mtu: int | None = None, t: PeerTable | None = None):
    t = table() if t is None else t
    held = t.held_by(sender)
    return ether.tap_inbound(f, held, mac(OWN_MAC), int(OWN.network_address), int(OWN.netmask), mtu,
                             None if subnet6 is None else int(subnet6.network_address), t.mask6)


# ---- outbound ---------------------------------------------------------------------------------------

def test_tap_outbound_routes_ipv6_by_the_ipv6_table_and_readdresses_to_the_peer_vtep():
    f = out6(POD_B)
    peer, rewritten = ether.tap_outbound(f, table())
    assert peer == Peer(B, mac(MAC_B))
    assert rewritten == mac(MAC_B) + f[6:]
    assert Ether(rewritten)[IPv6].dst == POD_B


@pytest.mark.parametrize("f,t,expected", [
    (out6("fd00:10:244:9::1"), table(), Drop.NO_LEASE),
    (out6(POD_A), PeerTable(24), Drop.NOT_IPV4),                                 # no IPv6 pool: as before
    (out6(POD_A)[:14 + 39], table(), Drop.TRUNCATED),
    (out6(POD_A)[:-1], table(), Drop.TRUNCATED),                                  # payload length past the bytes
    (frame(IPv6(src=POD, dst=POD_A, plen=0, nh=0)), table(), Drop.BAD_IP_HEADER),  # a jumbogram
    (out6(POD_A)[:14] + bytes([0x45]) + out6(POD_A)[15:], table(), Drop.NOT_IPV4),  # 0x86DD carrying version 4
    (frame(IPv6(src="fe80::1", dst="ff02::16") / ICMPv6MLReport2()), table(), Drop.NO_LEASE),  # MLD noise
])
def test_tap_outbound_drops(f, t, expected):
    assert ether.tap_outbound(f, t) == expected


def test_an_ipv6_peer_without_a_vtep_mac_is_no_lease():
    t = table()
    t.set(ipaddress.IPv6Network("fd00:10:244:2::/64"), Peer(A))
    assert ether.tap_outbound(out6(POD_A), t) == Drop.NO_LEASE


# ---- inbound ----------------------------------------------------------------------------------------

def test_tap_inbound_accepts_an_ipv6_frame_from_the_peer_leasing_its_source():
    f = in6()
    assert inbound(f) == f
    assert inbound(in6(src=POD_B, smac=MAC_B), sender=B) == in6(src=POD_B, smac=MAC_B)


@pytest.mark.parametrize("f,kw,expected", [
    (in6(src=POD_B), {}, Drop.SPOOFED_SOURCE),                 # A sends a source B leases
    (in6(src="fd00:10:244:2::7", smac=MAC_A), {"sender": B}, Drop.SPOOFED_SOURCE),
    (in6(src=POD, dst=POD), {}, Drop.SPOOFED_SOURCE),           # our own pods' addresses
    (in6(src="2001:db8::1"), {}, Drop.SPOOFED_SOURCE),          # the Internet
    (in6(dst=POD_B), {}, Drop.NOT_OUR_SUBNET),                  # would go straight back out: a loop
    (in6(smac=MAC_B), {}, Drop.WRONG_SOURCE_MAC),
    (bytes.fromhex("02aa000000ff") + in6()[6:], {}, Drop.NOT_FOR_US),
    (in6(), {"subnet6": None}, Drop.NOT_IPV4),                  # we have no IPv6 subnet: as before
    (in6()[:14 + 30], {}, Drop.TRUNCATED),
    (in6()[:-1], {}, Drop.TRUNCATED),
])
def test_tap_inbound_refuses(f, kw, expected):
    assert inbound(f, **kw) == expected


def partial(pkt) -> bytes:
    """``pkt`` (IPv6 / TCP or UDP, right behind the fixed header) as a kernel VTEP with checksum offload
    sends it: the L4 checksum field holding the folded pseudo-header sum."""
    raw = bytearray(bytes(pkt))
    at = 40 + (16 if raw[6] == 6 else 6)
    raw[at:at + 2] = ipv6.pseudo_sum(raw[8:24], raw[24:40], len(raw) - 40, raw[6]).to_bytes(2, "big")
    return bytes(raw)


def l4_ok(pkt: bytes) -> bool:
    p = IPv6(pkt)
    l4 = p[TCP] if TCP in p else p[UDP]
    want = l4.chksum
    del l4.chksum
    return IPv6(bytes(p))[l4.__class__].chksum == want


@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=80, flags="A") / Raw(b"z" * 300),
                                UDP(sport=5353, dport=53) / Raw(b"q" * 33)])
def test_tap_inbound_completes_an_ipv6_partial_checksum(l4):
    pkt = partial(IPv6(src=POD_A, dst=POD) / l4)
    assert not l4_ok(pkt)
    f = frame(pkt, dst=OWN_MAC, src=MAC_A)
    got = inbound(f)
    assert got[:14] == f[:14] and l4_ok(got[14:]) and got[14:54] == pkt[:40]
    assert ether.complete_partial_checksum(got[14:]) is None  # valid now: left alone


def test_a_kernel_vtep_ipv6_superpacket_is_cut_to_the_tap_mtu():
    payload = bytes(range(256)) * 40
    pkt = partial(IPv6(src=POD_A, dst=POD) / TCP(sport=40000, dport=80, flags="PA", seq=7) / Raw(payload))
    frames = inbound(frame(pkt, dst=OWN_MAC, src=MAC_A), mtu=1450)
    assert isinstance(frames, list) and len(frames) == -(-len(payload) // (1450 - 60))
    assert all(len(f) - 14 <= 1450 and l4_ok(f[14:]) and f[:14] == frame(pkt, dst=OWN_MAC, src=MAC_A)[:14]
               for f in frames)
    assert b"".join(f[14 + 60:] for f in frames) == payload
    # without the partial mark (or not TCP) a packet over the MTU is refused, as for IPv4
    whole = bytes(IPv6(src=POD_A, dst=POD) / TCP(sport=40000, dport=80, flags="PA") / Raw(payload))
    assert inbound(frame(whole, dst=OWN_MAC, src=MAC_A), mtu=1450) == Drop.BAD_IP_HEADER
    assert ether.cut_superpacket(pkt, 1450) == gso.segment(gso.tso_header(pkt, 1450), pkt)


# ---- the codec: VXLAN round trip and the ICMPv6 answer ------------------------------------------------

def codec(t: PeerTable | None = None, subnet6=OWN6) -> VxlanCodec:
    return VxlanCodec(table() if t is None else t, OWN, VNI, mac(OWN_MAC), PORT, own_subnet6=subnet6)


def test_the_codec_carries_ipv6_frames_both_ways():
    node_ip, dgram = codec().outbound(out6(POD_A))
    assert node_ip == A and vxlan.decapsulate(dgram, VNI) == mac(MAC_A) + out6(POD_A)[6:]
    wire = vxlan.encapsulate(in6(), VNI)
    assert codec().inbound(wire, (A, 40000)) == in6()
    assert codec(subnet6=None).inbound(wire, (A, 40000)) == Drop.NOT_IPV4
    assert codec().inbound(wire, ("198.18.0.99", 40000)) == Drop.UNKNOWN_SENDER


def test_the_codec_answers_no_lease_with_icmpv6_unreachable_from_the_ipv6_gateway():
    f = frame(IPv6(src=POD, dst="fd00:10:244:9::1") / ICMPv6EchoRequest(data=b"p" * 64), src="02:00:00:00:00:99")
    assert codec().outbound(f) == Drop.NO_LEASE
    reply = Ether(codec().answer(Drop.NO_LEASE, f, 0.0))
    assert reply.dst == "02:00:00:00:00:99" and reply.src == OWN_MAC and reply.type == 0x86DD
    ip6 = reply[IPv6]
    assert ip6.src == "fd00:10:244:1::1" and ip6.dst == POD
    err = ip6[ICMPv6DestUnreach]
    assert err.code == 0 and bytes(err.payload) == f[14:]
    want = err.cksum
    del err.cksum
    assert IPv6(bytes(ip6))[ICMPv6DestUnreach].cksum == want  # scapy's checksum is ours


def test_multicast_noise_is_never_answered_and_ipv4_answers_stay_ipv4():
    mld = frame(IPv6(src="fe80::1", dst="ff02::16") / ICMPv6MLReport2())
    assert codec().answer(Drop.NO_LEASE, mld, 0.0) is None
    v4 = bytes(Ether(dst=OWN_MAC, src=MAC_A) / IP(src="10.244.1.5", dst="10.244.9.1") / UDP())
    reply = Ether(codec().answer(Drop.NO_LEASE, v4, 0.0))
    assert reply.type == 0x0800 and reply[IP].src == "10.244.1.1" and reply[ICMP].type == 3


# ---- the C engine's twin (overlayd/csrc/vxlan.c): the same verdicts on every vector and mutation -----

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")
SUBNET6_INT = int(OWN6.network_address)


def py_out(f: bytes, t: PeerTable):
    v = codec(t).outbound(f)
    return v.value if isinstance(v, Drop) else v


def c_out(f: bytes, t: PeerTable):
    return fastpath.classify_tap_outbound(f, VNI, t)


def py_in(payload: bytes, sender: str, t: PeerTable, subnet6=OWN6, mtu: int | None = None):
    v = codec(t, subnet6).inbound(payload, (sender, 40000), mtu)
    if isinstance(v, list):  # a kernel VTEP's superpacket, cut
        return v
    return v.value if isinstance(v, Drop) else v


def c_in(payload: bytes, sender: str, t: PeerTable, subnet6=OWN6, mtu: int = 65535):
    got = fastpath.classify_vxlan_inbound(payload, sender, VNI, mac(OWN_MAC), int(OWN.network_address),
                                          int(OWN.netmask), t, mtu, None if subnet6 is None else SUBNET6_INT)
    if not isinstance(got, tuple):
        return got
    hdr, f = got  # written whole with a GSO header: the kernel cuts it as gso.segment_frame does
    return gso.segment_frame(gso.VnetHdr.unpack(hdr), f)


SUPER = partial(IPv6(src=POD_A, dst=POD) / TCP(sport=40000, dport=80, flags="PA", seq=7) / Raw(bytes(range(256)) * 40))
OUT_VECTORS = [out6(POD_A), out6(POD_B), out6("fd00:10:244:9::1"), out6(POD_A)[:14 + 39], out6(POD_A)[:-1],
               frame(IPv6(src=POD, dst=POD_A, plen=0, nh=0)), out6(POD_A)[:14] + bytes([0x45]) + out6(POD_A)[15:],
               frame(IPv6(src="fe80::1", dst="ff02::16") / ICMPv6MLReport2()), out6(POD_A)[:13], out6(POD_A)[:14]]
IN_VECTORS = [in6(), in6(src=POD_B), in6(dst=POD_B), in6(smac=MAC_B), bytes.fromhex("02aa000000ff") + in6()[6:],
              in6()[:14 + 30], in6()[:-1], in6(src=POD, dst=POD),
              frame(partial(IPv6(src=POD_A, dst=POD) / TCP(sport=1, dport=80, flags="A") / Raw(b"z" * 300)),
                    dst=OWN_MAC, src=MAC_A),
              frame(partial(IPv6(src=POD_A, dst=POD) / UDP(sport=5353, dport=53) / Raw(b"q" * 33)), dst=OWN_MAC,
                    src=MAC_A),
              frame(SUPER, dst=OWN_MAC, src=MAC_A)]


@pytest.mark.parametrize("f", OUT_VECTORS)
@pytest.mark.parametrize("t", [table(), PeerTable(24)], ids=["dual", "ipv4-only"])
def test_c_tap_outbound_agrees(f, t):
    assert c_out(f, t) == py_out(f, t)


@pytest.mark.parametrize("f", IN_VECTORS)
@pytest.mark.parametrize("subnet6", [OWN6, None], ids=["ipv6", "no-ipv6"])
@pytest.mark.parametrize("mtu", [None, 1450])
def test_c_vxlan_inbound_agrees(f, subnet6, mtu):
    payload = vxlan.encapsulate(f, VNI)
    assert c_in(payload, A, table(), subnet6, mtu or 65535) == py_in(payload, A, table(), subnet6, mtu)


def test_c_cuts_the_kernel_superpacket_as_python_does():
    got = c_in(vxlan.encapsulate(frame(SUPER, dst=OWN_MAC, src=MAC_A), VNI), A, table(), mtu=1450)
    assert isinstance(got, list) and len(got) == 8 and got == py_in(vxlan.encapsulate(frame(SUPER, dst=OWN_MAC,
                                                                                            src=MAC_A), VNI),
                                                                    A, table(), mtu=1450)


def test_random_ipv6_frame_mutations_agree():
    import os
    import random
    rng = random.Random(1706)
    t = table()
    for _ in range(500 * int(os.environ.get("OVERLAYD_MUTATION_ROUNDS", "1"))):
        f = bytearray(rng.choice(OUT_VECTORS[:2] + IN_VECTORS[:1] + IN_VECTORS[8:]))
        for _ in range(rng.randrange(0, 3)):
            if f:
                f[rng.randrange(min(len(f), 14 + 64) if rng.random() < 0.8 else len(f))] = rng.randrange(256)
        f = bytes(f[:rng.randrange(len(f) + 1)] if rng.random() < 0.1 else f)
        assert c_out(f, t) == py_out(f, t), f.hex()
        payload = vxlan.encapsulate(f, VNI)
        mtu = rng.choice([None, 1450, 200])
        assert c_in(payload, A, t, OWN6, mtu or 65535) == py_in(payload, A, t, OWN6, mtu), (f.hex(), mtu)
