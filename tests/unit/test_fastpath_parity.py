"""The C fast path decides exactly as the pure Python reference (overlayd.encap.udp):
a table of vectors, then seeded random bytes, random IPv4-looking headers and
mutations of valid packets, both directions; inbound from every kind of
sender (several leases, one, none, not an address) and source port, so each
anti-spoofing refusal is compared too."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

import pytest

from overlayd.encap import udp
from overlayd.encap.drops import Drop
from overlayd.encap.ipv4 import internet_checksum
from overlayd.encap.table import Peer, PeerTable

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")

OWN = ipaddress.IPv4Network("10.244.1.0/24")
SUBNET_INT, MASK = int(OWN.network_address), int(OWN.netmask)
PORT = 8472


def ipv4(src, dst, payload=b"x" * 12, ihl=5, total=None, version=4):
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0,
                         total if total is not None else ihl * 4 + len(payload),
                         1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + b"\0" * max(0, ihl * 4 - 20) + payload


@pytest.fixture(scope="module")
def table():
    t = PeerTable(24)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12"))
    t.set(ipaddress.IPv4Network("10.244.3.0/24"), Peer("198.18.0.13"))
    t.set(ipaddress.IPv4Network("10.244.5.0/24"), Peer("198.18.0.13"))  # a second lease, same node
    return t


def python_out(pkt, table):
    v = udp.outbound(pkt, table)
    return v.value if isinstance(v, Drop) else (v[0].node_ip, v[1])


def python_in(dgram, sender, table):
    v = udp.inbound(dgram, sender, PORT, SUBNET_INT, MASK, table)
    return v.value if isinstance(v, Drop) else v


def c_in(dgram, sender, table):
    return fastpath.classify_inbound(dgram, sender, PORT, SUBNET_INT, MASK, table)


VALID = [
    ipv4("10.244.1.5", "10.244.2.7"),                  # out: to a leased subnet
    ipv4("10.244.1.5", "10.244.3.255"),                # out: to the other peer
    ipv4("10.244.1.5", "10.244.9.9"),                  # out: nobody leases it
    ipv4("10.244.2.7", "10.244.1.5"),                  # in: for our subnet
    ipv4("10.244.3.7", "10.244.1.5"),                  # in: from 198.18.0.13's first lease
    ipv4("10.244.5.7", "10.244.1.254"),                # in: from its second lease
    ipv4("10.244.2.0", "10.244.1.1"),                  # in: from a node's own .0
    ipv4("10.244.1.7", "10.244.1.5"),                  # in: spoofed, our own subnet
    ipv4("8.8.8.8", "10.244.1.5"),                     # in: spoofed, outside the Network
    ipv4("10.244.9.7", "10.244.1.5"),                  # in: spoofed, nobody's subnet
    ipv4("10.244.2.7", "10.244.1.0"),                  # in: to our network address
    ipv4("10.244.2.7", "10.244.1.255"),                # in: to our broadcast address
    ipv4("10.244.2.7", "8.8.8.8"),                     # in: outside our subnet
    ipv4("10.244.1.5", "10.244.2.7", ihl=6),           # options
    ipv4("10.244.1.5", "10.244.2.7", payload=b""),     # header only
]
VECTORS = VALID + [
    ipv4("10.244.1.5", "10.244.2.7", ihl=4),           # IHL < 5
    ipv4("10.244.1.5", "10.244.2.7", ihl=0),
    ipv4("10.244.1.5", "10.244.2.7", total=10),        # total length below the header
    ipv4("10.244.1.5", "10.244.2.7", ihl=6, total=22),
    ipv4("10.244.1.5", "10.244.2.7", total=500),       # total length beyond the bytes
    ipv4("10.244.1.5", "10.244.2.7", ihl=15),          # header longer than the packet
    ipv4("10.244.1.5", "10.244.2.7")[:19],             # truncated header
    ipv4("10.244.1.5", "10.244.2.7") + b"pad",         # trailing bytes are fine
    ipv4("10.244.1.5", "10.244.2.7", version=6),
    b"", b"\x45", b"\x60", b"\x60" + b"\0" * 39,       # empty, short, IPv6
    b"garbage" * 5, b"\xff" * 20,
]
SENDERS = [(ip, port) for ip in ("198.18.0.12", "198.18.0.13", "198.18.0.99", "127.0.0.1", "not-an-ip", "")
           for port in (PORT, 8285, 0, 65535)]


@pytest.mark.parametrize("pkt", VECTORS)
def test_outbound_vectors(table, pkt):
    assert fastpath.classify_outbound(pkt, table) == python_out(pkt, table)


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pkt", VECTORS)
def test_inbound_vectors(table, pkt, sender):
    assert c_in(pkt, sender, table) == python_in(pkt, sender, table)


def samples(rng: random.Random) -> list[bytes]:
    """Random bytes, random headers that claim IPv4, and mutated valid packets."""
    out = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    for _ in range(300):
        pkt = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        if pkt:
            pkt[0] = 0x40 | rng.randrange(16)
        if len(pkt) >= 4:
            pkt[2:4] = rng.randrange(0, 100).to_bytes(2, "big")
        if len(pkt) >= 20 and rng.random() < 0.5:
            pkt[16:19] = bytes([10, 244, rng.choice([1, 2, 3, 9])])
            pkt[19] = rng.choice([0, 1, 254, 255, rng.randrange(256)])
        if len(pkt) >= 20 and rng.random() < 0.5:
            pkt[12:15] = bytes([10, 244, rng.choice([1, 2, 3, 5, 9])])
        out.append(bytes(pkt))
    for _ in range(700):
        pkt = bytearray(rng.choice(VALID))
        for _ in range(rng.randrange(1, 4)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        out.append(bytes(pkt[:rng.randrange(len(pkt) + 1)] if rng.random() < 0.3 else pkt))
    return out


def test_random_and_mutated_packets_agree(table):
    rng = random.Random(7348)
    for pkt in samples(rng):
        assert fastpath.classify_outbound(pkt, table) == python_out(pkt, table), pkt.hex()
        sender = rng.choice(SENDERS)
        assert c_in(pkt, sender, table) == python_in(pkt, sender, table), (pkt.hex(), sender)


def test_any_buffer_is_accepted(table):
    pkt = ipv4("10.244.1.5", "10.244.2.7")
    assert fastpath.classify_outbound(bytearray(pkt), table) == ("198.18.0.12", bytearray(pkt))
    assert c_in(memoryview(ipv4("10.244.2.7", "10.244.1.9")), ("198.18.0.12", PORT), table) == \
        ipv4("10.244.2.7", "10.244.1.9")


def test_table_changes_are_seen_at_once():
    t = PeerTable(24)
    pkt = ipv4("10.244.1.5", "10.244.4.1")
    back = ipv4("10.244.4.1", "10.244.1.2")
    assert fastpath.classify_outbound(pkt, t) == "no_lease"
    assert c_in(back, ("198.18.0.14", PORT), t) == "unknown_sender"
    t.set(ipaddress.IPv4Network("10.244.4.0/24"), Peer("198.18.0.14"))
    assert fastpath.classify_outbound(pkt, t) == ("198.18.0.14", pkt)
    assert c_in(back, ("198.18.0.14", PORT), t) == back
    t.set(ipaddress.IPv4Network("10.244.4.0/24"), Peer("198.18.0.15"))  # the subnet changes hands
    assert c_in(back, ("198.18.0.14", PORT), t) == "unknown_sender"
    assert c_in(back, ("198.18.0.15", PORT), t) == back
    t.set(ipaddress.IPv4Network("10.244.6.0/24"), Peer("198.18.0.16"))
    assert c_in(back, ("198.18.0.16", PORT), t) == "spoofed_source"
    t.remove(ipaddress.IPv4Network("10.244.4.0/24"))
    assert fastpath.classify_outbound(pkt, t) == "no_lease"
    assert c_in(back, ("198.18.0.15", PORT), t) == "unknown_sender"


def test_a_thousand_peers_each_send_only_their_own_pods():
    t = PeerTable(24)
    nodes = {f"198.18.{i // 250}.{i % 250 + 1}": f"10.{i // 256}.{i % 256}" for i in range(1000)}
    for ip, prefix in nodes.items():
        t.set(ipaddress.IPv4Network(f"{prefix}.0/24"), Peer(ip))
    rng = random.Random(1000)
    for ip, prefix in rng.sample(sorted(nodes.items()), 200):
        other = nodes[rng.choice(sorted(set(nodes) - {ip}))]
        for src in (f"{prefix}.7", f"{other}.7"):
            dgram = ipv4(src, "10.244.1.5")
            assert c_in(dgram, (ip, PORT), t) == python_in(dgram, (ip, PORT), t)
        assert c_in(ipv4(f"{prefix}.7", "10.244.1.5"), (ip, PORT), t) != "spoofed_source"
        assert c_in(ipv4(f"{other}.7", "10.244.1.5"), (ip, PORT), t) == "spoofed_source"


def test_every_c_reason_is_a_drop():
    table = PeerTable(24)
    table.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12"))
    verdicts = (c_in(pkt, sender, table) for pkt in VECTORS for sender in SENDERS)
    reasons = {v for v in verdicts if isinstance(v, str)}  # accepted datagrams come back as bytes
    assert reasons <= {d.value for d in Drop}
    assert {"unknown_sender", "wrong_source_port", "spoofed_source", "to_broadcast_address",
            "not_our_subnet"} <= reasons
