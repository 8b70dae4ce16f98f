"""The C fast path decides IPv6 inner packets exactly as the Python reference (issue 17 point 3):
vectors, then seeded random bytes, random IPv6-looking headers and mutations of valid packets, both
directions, against a dual-stack table; inbound from senders with leases of one family, both or none,
so each anti-spoofing refusal of IPv6 is compared too. IPv4 through the same dual-stack table must
decide as it did (its own parity file holds the IPv4-only table)."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from overlayd.encap import udp
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable
from tests.unit.test_fastpath_parity import SENDERS as SENDERS4
from tests.unit.test_fastpath_parity import VALID as VALID4
from tests.unit.test_fastpath_parity import mutated
from tests.unit.test_gso_parity import MUTATION_ROUNDS

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")

OWN = ipaddress.IPv4Network("10.244.1.0/24")
OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
SUBNET_INT, MASK, SUBNET6_INT = int(OWN.network_address), int(OWN.netmask), int(OWN6.network_address)
PORT = 8472
MTU = 1400


def ipv6(src, dst, payload=b"x" * 12, plen=None, nh=17):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload) if plen is None else plen, nh, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


@pytest.fixture(scope="module")
def table():
    t = PeerTable(24, 64)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12"))
    t.set(ipaddress.IPv6Network("fd00:10:244:2::/64"), Peer("198.18.0.12"))
    t.set(ipaddress.IPv6Network("fd00:10:244:3::/64"), Peer("198.18.0.13"))  # IPv6 only
    t.set(ipaddress.IPv6Network("fd00:10:244:5::/64"), Peer("198.18.0.13"))  # a second IPv6 lease
    t.set(ipaddress.IPv4Network("10.244.4.0/24"), Peer("198.18.0.14"))       # IPv4 only
    return t


def python_out(pkt, table, mtu=MTU):
    v = udp.outbound(pkt, table, mtu)
    return v.value if isinstance(v, Drop) else (v[0].node_ip, v[1])


def python_in(dgram, sender, table, own6=SUBNET6_INT):
    v = udp.inbound(dgram, sender, PORT, SUBNET_INT, MASK, table, own6)
    return v.value if isinstance(v, Drop) else v


def c_out(pkt, table, mtu=MTU):
    return fastpath.classify_outbound(pkt, table, mtu)


def c_in(dgram, sender, table, own6=SUBNET6_INT):
    return fastpath.classify_inbound(dgram, sender, PORT, SUBNET_INT, MASK, table, own6)


VALID = [
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7"),              # out: to a leased subnet
    ipv6("fd00:10:244:1::5", "fd00:10:244:3:ffff::1"),         # out: the IPv6-only peer
    ipv6("fd00:10:244:1::5", "fd00:10:244:9::1"),              # out: nobody leases it
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", b"x" * (MTU - 40)),      # exactly the MTU
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", b"x" * (MTU - 39)),      # one over: too big
    ipv6("fd00:10:244:1::5", "fd00:10:244:9::7", b"x" * (MTU - 39)),      # over, and no lease
    ipv6("fd00:10:244:2::7", "fd00:10:244:1::5"),              # in: for our subnet
    ipv6("fd00:10:244:3::7", "fd00:10:244:1::5"),              # in: from .13's first lease
    ipv6("fd00:10:244:5::7", "fd00:10:244:1:ffff:ffff:ffff:ffff"),  # in: its second
    ipv6("fd00:10:244:2::7", "fd00:10:244:1::"),               # in: to our network address
    ipv6("fd00:10:244:1::7", "fd00:10:244:1::5"),              # in: spoofed, our own subnet
    ipv6("2001:db8::1", "fd00:10:244:1::5"),                   # in: spoofed, outside the Network
    ipv6("fd00:10:244:9::7", "fd00:10:244:1::5"),              # in: spoofed, nobody's
    ipv6("fd00:10:244:2::7", "fd00:10:244:4::5"),              # in: outside our subnet
    ipv6("fd00:10:244:2::7", "ff02::1"),
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", b"", nh=59),  # no next header, no payload
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", b"x" * 8, nh=0),  # hop-by-hop, not a jumbogram
]
VECTORS = VALID + VALID4 + [
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", plen=13),     # payload length beyond the bytes
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", plen=0, nh=0),  # a jumbogram
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7", plen=0),      # trailing bytes are fine
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7")[:39],         # truncated fixed header
    ipv6("fd00:10:244:1::5", "fd00:10:244:2::7") + b"pad",
    b"\x60", b"\x60" + b"\0" * 39, b"\x6f" * 40, b"\x70" + b"\0" * 39,
]
SENDERS = SENDERS4 + [("198.18.0.14", PORT)]


@pytest.mark.parametrize("mtu", [MTU, None])
@pytest.mark.parametrize("pkt", VECTORS)
def test_outbound_vectors(table, pkt, mtu):
    assert c_out(pkt, table, mtu) == python_out(pkt, table, mtu)


@pytest.mark.parametrize("own6", [SUBNET6_INT, None])
@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pkt", VECTORS)
def test_inbound_vectors(table, pkt, sender, own6):
    assert c_in(pkt, sender, table, own6) == python_in(pkt, sender, table, own6)


def test_the_vectors_reach_every_verdict(table):
    out = {c_out(p, table) for p in VECTORS}
    inb = {c_in(p, s, table) for p in VECTORS for s in SENDERS}
    assert {"no_lease", "too_big", "truncated", "bad_ip_header", "not_ipv4"} <= out
    assert {"unknown_sender", "wrong_source_port", "spoofed_source", "not_our_subnet"} <= inb
    assert ("198.18.0.13", VALID[1]) in out and VALID[6] in inb and VALID[7] in inb


def test_an_ipv4_only_table_keeps_ipv6_not_ipv4():
    t = PeerTable(24)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12"))
    assert c_out(VALID[0], t) == python_out(VALID[0], t) == "not_ipv4"
    assert c_in(VALID[6], ("198.18.0.12", PORT), t, None) == "not_ipv4"


def samples(rng: random.Random) -> list[bytes]:
    """Random bytes, random headers that claim IPv6 (their addresses near our subnets), mutated valid packets."""
    out = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 90))) for _ in range(200)]
    for _ in range(300):
        pkt = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 90)))
        if pkt:
            pkt[0] = 0x60 | rng.randrange(16)
        if len(pkt) >= 6:
            pkt[4:6] = rng.randrange(0, 60).to_bytes(2, "big")
        for at in (8, 24):
            if len(pkt) >= at + 16 and rng.random() < 0.6:
                pkt[at:at + 8] = ipaddress.IPv6Address(f"fd00:10:244:{rng.choice([1, 2, 3, 4, 5, 9])}::").packed[:8]
        out.append(bytes(pkt))
    return out + mutated(rng, VALID)


def test_random_and_mutated_packets_agree(table):
    rng = random.Random(8200)
    for pkt in (pkt for _ in range(MUTATION_ROUNDS) for pkt in samples(rng)):
        mtu = rng.choice([MTU, 60, None])
        assert c_out(pkt, table, mtu) == python_out(pkt, table, mtu), (pkt.hex(), mtu)
        sender = rng.choice(SENDERS)
        assert c_in(pkt, sender, table) == python_in(pkt, sender, table), (pkt.hex(), sender)


def test_a_thousand_ipv6_peers_each_send_only_their_own_pods():
    t = PeerTable(24, 64)
    nodes = {f"198.18.{i // 250}.{i % 250 + 1}": f"fd00:10:{i // 256:x}:{i % 256:x}" for i in range(1000)}
    for ip, prefix in nodes.items():
        t.set(ipaddress.IPv6Network(f"{prefix}::/64"), Peer(ip))
    rng = random.Random(1000)
    for ip, prefix in rng.sample(sorted(nodes.items()), 200):
        other = nodes[rng.choice(sorted(set(nodes) - {ip}))]
        own = ipv6(f"{prefix}::7", "fd00:10:244:1::5")
        assert c_in(own, (ip, PORT), t) == python_in(own, (ip, PORT), t) == own
        spoofed = ipv6(f"{other}::7", "fd00:10:244:1::5")
        assert c_in(spoofed, (ip, PORT), t) == python_in(spoofed, (ip, PORT), t) == "spoofed_source"
        assert c_out(ipv6("fd00:10:244:1::5", f"{prefix}::9"), t) == (ip, ipv6("fd00:10:244:1::5", f"{prefix}::9"))
