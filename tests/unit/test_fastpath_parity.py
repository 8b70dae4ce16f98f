"""The C fast path decides exactly as the pure Python reference (overlayd.encap.udp):
a table of vectors, then seeded random bytes and mutations of valid packets."""

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


def ipv4(src, dst, payload=b"x" * 12, ihl=5, total=None):
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else 20 + len(payload),
                         1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + b"\0" * max(0, ihl * 4 - 20) + payload


@pytest.fixture(scope="module")
def table():
    t = PeerTable(24)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12"))
    t.set(ipaddress.IPv4Network("10.244.3.0/24"), Peer("198.18.0.13"))
    return t


def python_out(pkt, table):
    v = udp.outbound(pkt, table)
    return v.value if isinstance(v, Drop) else (v[0].node_ip, v[1])


def python_in(dgram, sender, table):
    v = udp.inbound(dgram, sender, SUBNET_INT, MASK, table)
    return v.value if isinstance(v, Drop) else v


VECTORS = [
    ipv4("10.244.1.5", "10.244.2.7"), ipv4("10.244.1.5", "10.244.3.255"), ipv4("10.244.1.5", "10.244.9.9"),
    ipv4("10.244.2.7", "10.244.1.5"), ipv4("10.244.2.7", "8.8.8.8"), ipv4("10.244.1.5", "10.244.2.7", ihl=6),
    ipv4("10.244.1.5", "10.244.2.7", ihl=4), ipv4("10.244.1.5", "10.244.2.7", total=10),
    ipv4("10.244.1.5", "10.244.2.7", total=500), ipv4("10.244.1.5", "10.244.2.7")[:19], b"", b"\x45",
    b"\x60" + b"\0" * 39, b"\x60", b"garbage" * 5, ipv4("10.244.1.5", "10.244.2.7") + b"pad",
]
SENDERS = ["198.18.0.12", "198.18.0.13", "198.18.0.99", "127.0.0.1"]


@pytest.mark.parametrize("pkt", VECTORS)
def test_outbound_vectors(table, pkt):
    assert fastpath.classify_outbound(pkt, table) == python_out(pkt, table)


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pkt", VECTORS)
def test_inbound_vectors(table, pkt, sender):
    assert fastpath.classify_inbound(pkt, sender, SUBNET_INT, MASK, table) == python_in(pkt, sender, table)


def test_random_and_mutated_packets_agree(table):
    rng = random.Random(7348)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    for _ in range(700):
        pkt = bytearray(rng.choice(VECTORS[:6]))
        for _ in range(rng.randrange(1, 4)):
            if pkt:
                pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        samples.append(bytes(pkt[:rng.randrange(len(pkt) + 1)] if rng.random() < 0.3 else pkt))
    for pkt in samples:
        assert fastpath.classify_outbound(pkt, table) == python_out(pkt, table), pkt.hex()
        sender = rng.choice(SENDERS)
        assert fastpath.classify_inbound(pkt, sender, SUBNET_INT, MASK, table) == \
            python_in(pkt, sender, table), pkt.hex()


def test_table_changes_are_seen(table):
    t = PeerTable(24)
    pkt = ipv4("10.244.1.5", "10.244.4.1")
    assert fastpath.classify_outbound(pkt, t) == "no_lease"
    t.set(ipaddress.IPv4Network("10.244.4.0/24"), Peer("198.18.0.14"))
    assert fastpath.classify_outbound(pkt, t) == ("198.18.0.14", pkt)
    assert fastpath.classify_inbound(ipv4("10.244.4.1", "10.244.1.2"), "198.18.0.14", SUBNET_INT, MASK, t) != \
        "unknown_sender"
