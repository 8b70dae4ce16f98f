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

from overlayd.encap import drops, udp
from overlayd.encap.drops import Drop
from overlayd.encap.ipv4 import internet_checksum
from overlayd.encap.table import Peer, PeerTable
from tests.unit.test_gso_parity import MUTATION_ROUNDS

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
    return out + mutated(rng, VALID)


def mutated(rng: random.Random, valid: list[bytes], count: int = 700) -> list[bytes]:
    """``count`` of the ``valid`` packets with one to three bytes changed, three in ten cut short."""
    out = []
    for _ in range(count):
        pkt = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        out.append(bytes(pkt[:rng.randrange(len(pkt) + 1)] if rng.random() < 0.3 else pkt))
    return out


def test_random_and_mutated_packets_agree(table):
    rng = random.Random(7348)
    for pkt in (pkt for _ in range(MUTATION_ROUNDS) for pkt in samples(rng)):
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


def test_the_engine_counts_under_the_names_of_the_registry():
    """The C engine's counters and drop reasons are the names overlayd.encap.drops knows (and /metrics
    pre-creates at 0): a counter added on one side only fails here, not in an operator's dashboard."""
    c_names = set(fastpath.COUNTER_NAMES)
    assert {n.removeprefix("drop_") for n in c_names if n.startswith("drop_")} == {d.value for d in Drop}
    assert c_names <= set(drops.KNOWN_COUNTERS)
    # what only the Python plane counts: a superpacket from the wire cut to the device's MTU (the engine
    # writes it whole, as dev_tx_superpackets), and peers refused by the backend (not a data-plane count)
    assert set(drops.KNOWN_COUNTERS) - c_names == {"rx_superpackets", "incompatible_peers"}
    assert {"dev_tx_packets", "dev_tx_bytes"} <= c_names


# ---- userspace VXLAN: the engine's tap <-> VXLAN framing against VxlanCodec -------------------------

from overlayd.dataplane.codecs import VxlanCodec  # noqa: E402
from overlayd.encap import ether  # noqa: E402
from overlayd.encap.ipv4 import check as ipv4_check  # noqa: E402

VNI = 1
OWN_MAC = bytes.fromhex("02aa00000001")
MAC_12, MAC_13 = bytes.fromhex("02aa0000000c"), bytes.fromhex("02aa0000000d")
OTHER_MAC = bytes.fromhex("02bb00000099")


@pytest.fixture(scope="module")
def vtable():
    t = PeerTable(24)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.12", MAC_12))
    t.set(ipaddress.IPv4Network("10.244.3.0/24"), Peer("198.18.0.13", MAC_13))
    t.set(ipaddress.IPv4Network("10.244.5.0/24"), Peer("198.18.0.13", MAC_13))  # a second lease, same node
    t.set(ipaddress.IPv4Network("10.244.6.0/24"), Peer("198.18.0.16"))  # no VtepMAC (not a VXLAN peer)
    return t


def codec(table):
    return VxlanCodec(table, OWN, VNI, OWN_MAC, PORT)


def py_tap_out(frame, table):
    v = codec(table).outbound(frame)
    return v.value if isinstance(v, Drop) else v


def c_tap_out(frame, table):
    return fastpath.classify_tap_outbound(frame, VNI, table)


def py_vx_in(payload, sender, table):
    v = codec(table).inbound(payload, sender)
    return v.value if isinstance(v, Drop) else v


def c_vx_in(payload, sender, table):
    return fastpath.classify_vxlan_inbound(payload, sender[0], VNI, OWN_MAC, SUBNET_INT, MASK, table)


def eth(pkt, dst=OWN_MAC, src=MAC_12, ethertype=b"\x08\x00"):
    return dst + src + ethertype + pkt


def vxh(flags=0x08, vni=VNI, reserved=b"\0\0\0", last=0):
    return bytes([flags]) + reserved + (vni << 8 | last).to_bytes(4, "big")


MACS = [OWN_MAC, ether.BROADCAST, OTHER_MAC, MAC_12, MAC_13]
SRC_MACS = [MAC_12, MAC_13, OTHER_MAC, OWN_MAC]
ETHERTYPES = [b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x00\x08"]
VX_HEADERS = [vxh(), vxh(flags=0x0C), vxh(flags=0xFF, reserved=b"\xff\xff\xff", last=0xFF), vxh(flags=0),
              vxh(flags=0xF7), vxh(vni=2), vxh(vni=VNI + (1 << 16)), vxh(last=0x7F)]
VX_SENDERS = [(ip, port) for ip in ("198.18.0.12", "198.18.0.13", "198.18.0.16", "198.18.0.99", "not-an-ip", "")
              for port in (PORT, 41234)]


def frames():
    out = [eth(pkt) for pkt in VECTORS]
    for pkt in VALID[:6]:
        out += [eth(pkt, dst, src, et) for dst in MACS for src in SRC_MACS for et in ETHERTYPES]
    out += [b"", b"\x02" * 13, eth(b"")[:14], eth(b""), b"\xff" * 14 + b"\x45"]
    return out


FRAMES = frames()


def test_tap_outbound_vectors(vtable):
    for frame in FRAMES:
        assert c_tap_out(frame, vtable) == py_tap_out(frame, vtable), frame.hex()


def test_tap_outbound_rewrites_to_the_vtep_mac(vtable):
    frame = eth(ipv4("10.244.1.5", "10.244.3.9"), dst=OWN_MAC, src=OWN_MAC)
    ip, payload = c_tap_out(frame, vtable)
    assert ip == "198.18.0.13"
    assert payload == bytes([8, 0, 0, 0, 0, 0, VNI, 0]) + MAC_13 + frame[6:]
    assert c_tap_out(eth(ipv4("10.244.1.5", "10.244.6.9")), vtable) == "no_lease"  # a peer without VtepMAC
    big = fastpath.classify_tap_outbound(frame, 0xFFFFFF, vtable)[1]
    assert big[:8] == b"\x08\0\0\0\xff\xff\xff\0"
    with pytest.raises(ValueError):
        fastpath.classify_tap_outbound(frame, 1 << 24, vtable)


@pytest.mark.parametrize("vni", [-1, 1 << 24, (1 << 64) + VNI, (1 << 32) + VNI, -(1 << 64) + VNI])
def test_a_vni_outside_24_bits_is_refused_everywhere(vtable, vni):
    """Not masked to an unsigned long (2**64 + 1 was VNI 1), nor wrapped: one clear ValueError."""
    frame = eth(ipv4("10.244.1.5", "10.244.3.9"), dst=OWN_MAC, src=OWN_MAC)
    payload = bytes([8, 0, 0, 0, 0, 0, VNI, 0]) + frame
    calls = [lambda: fastpath.classify_tap_outbound(frame, vni, vtable),
             lambda: fastpath.classify_vxlan_inbound(payload, "198.18.0.13", vni, OWN_MAC, SUBNET_INT, MASK, vtable),
             lambda: fastpath.Engine(-1, -1, 8472, SUBNET_INT, MASK, vtable, vni=vni, own_mac=OWN_MAC)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"^VNI {vni} is outside 0\.\.16777215$"):
            call()
    with pytest.raises(TypeError):
        fastpath.classify_tap_outbound(frame, float(VNI), vtable)


def test_vxlan_inbound_vectors(vtable):
    srcs = ["10.244.2.7", "10.244.3.7", "10.244.5.7", "10.244.6.7", "10.244.1.7", "8.8.8.8"]
    dsts = ["10.244.1.5", "10.244.1.0", "10.244.1.255", "10.244.2.5"]
    bodies = [eth(ipv4(s, d), dst, src) for s in srcs for d in dsts for dst in MACS[:3] for src in SRC_MACS]
    bodies += FRAMES
    for body in bodies:
        for header in VX_HEADERS:
            payload = header + body
            for sender in VX_SENDERS:
                assert c_vx_in(payload, sender, vtable) == py_vx_in(payload, sender, vtable), \
                    (payload.hex(), sender)
    for payload in (b"", vxh(), vxh() + b"\0" * 13):
        assert c_vx_in(payload, VX_SENDERS[0], vtable) == py_vx_in(payload, VX_SENDERS[0], vtable)


def test_every_vxlan_refusal_is_reached(vtable):
    cases = {
        "unknown_sender": (vxh() + eth(ipv4("10.244.2.7", "10.244.1.5")), "198.18.0.99"),
        "truncated": (vxh() + b"\0" * 13, "198.18.0.12"),
        "bad_vxlan": (vxh(flags=0) + eth(ipv4("10.244.2.7", "10.244.1.5")), "198.18.0.12"),
        "wrong_vni": (vxh(vni=2) + eth(ipv4("10.244.2.7", "10.244.1.5")), "198.18.0.12"),
        "not_ipv4": (vxh() + eth(ipv4("10.244.2.7", "10.244.1.5"), ethertype=b"\x08\x06"), "198.18.0.12"),
        "not_for_us": (vxh() + eth(ipv4("10.244.2.7", "10.244.1.5"), dst=OTHER_MAC), "198.18.0.12"),
        "wrong_source_mac": (vxh() + eth(ipv4("10.244.2.7", "10.244.1.5"), src=MAC_13), "198.18.0.12"),
        "spoofed_source": (vxh() + eth(ipv4("10.244.3.7", "10.244.1.5")), "198.18.0.12"),
        "to_broadcast_address": (vxh() + eth(ipv4("10.244.2.7", "10.244.1.255")), "198.18.0.12"),
        "not_our_subnet": (vxh() + eth(ipv4("10.244.2.7", "10.244.7.5")), "198.18.0.12"),
    }
    for reason, (payload, ip) in cases.items():
        assert c_vx_in(payload, (ip, PORT), vtable) == reason == py_vx_in(payload, (ip, PORT), vtable)
    ok = vxh() + eth(ipv4("10.244.2.7", "10.244.1.5"), dst=ether.BROADCAST)
    assert c_vx_in(ok, ("198.18.0.12", 1), vtable) == ok[8:]
    # a peer without VtepMAC: no source MAC check (as in Python)
    anymac = vxh() + eth(ipv4("10.244.6.7", "10.244.1.5"), src=OTHER_MAC)
    assert c_vx_in(anymac, ("198.18.0.16", PORT), vtable) == anymac[8:] == py_vx_in(anymac, ("198.18.0.16", 0), vtable)


def l4_packet(proto, payload, checksum, frag=0, src="10.244.2.7", dst="10.244.1.5", extra=b""):
    """An IPv4 TCP (20-byte header) or UDP packet whose L4 checksum field is ``checksum``
    ("valid", "partial" or a number)."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, 80, 1, 2, 5 << 4, 0x18, 512, 0, 0) + payload
        at = 16
    else:
        l4 = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
        at = 6
    total = 20 + len(l4)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0, socket.inet_aton(src),
                         socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    pseudo = header[12:20] + bytes([0, proto]) + len(l4).to_bytes(2, "big")
    if checksum == "valid":
        value = internet_checksum(pseudo + l4)
    elif checksum == "partial":
        value = (~internet_checksum(pseudo)) & 0xFFFF
    else:
        value = checksum
    l4 = l4[:at] + value.to_bytes(2, "big") + l4[at + 2:]
    return header + l4 + extra


def checksum_vectors(rng):
    out = []
    for proto in (6, 17):
        for payload in (b"", b"a", b"hello world", bytes(range(256)) * 3, b"\0" * 7):
            for checksum in ("valid", "partial", 0, 0xFFFF, 1234):
                for frag in (0, 0x2000, 0x0001, 0x4000, 0x1fff):
                    out.append(l4_packet(proto, payload, checksum, frag))
            out.append(l4_packet(proto, payload, "partial", extra=b"trailer"))
    out.append(l4_packet(1, b"ping", 0))
    short = bytearray(l4_packet(17, b"", "partial"))
    short[2:4] = (20 + 7).to_bytes(2, "big")  # L4 shorter than a UDP header
    out.append(bytes(short))
    # a UDP body whose completed checksum computes to 0 (sent as 0xFFFF): search a few payloads
    for i in range(2000):
        pkt = l4_packet(17, i.to_bytes(2, "big") + b"xy", "partial")
        out.append(pkt)
    for _ in range(500):
        pkt = bytearray(rng.choice(out[:200]))
        pkt[rng.randrange(20, len(pkt))] = rng.randrange(256) if len(pkt) > 20 else 0
        out.append(bytes(pkt))
    return [p for p in out if ipv4_check(p) is None]


def test_complete_partial_checksum_agrees():
    vectors = checksum_vectors(random.Random(4789))
    completed = 0
    for pkt in vectors:
        want = ether.complete_partial_checksum(pkt)
        assert fastpath.complete_partial_checksum(pkt) == want, pkt.hex()
        completed += want is not None
    assert completed > 100
    with pytest.raises(ValueError):
        fastpath.complete_partial_checksum(b"\x45")


def test_vxlan_inbound_completes_partial_checksums(vtable):
    pkt = l4_packet(6, b"data" * 100, "partial")
    payload = vxh() + eth(pkt)
    got = c_vx_in(payload, ("198.18.0.12", PORT), vtable)
    assert got == py_vx_in(payload, ("198.18.0.12", PORT), vtable)
    assert got == eth(l4_packet(6, b"data" * 100, "valid"))


def test_random_and_mutated_vxlan_agree(vtable):
    rng = random.Random(8472)
    valid_out = [eth(p, OWN_MAC, OWN_MAC) for p in VALID]
    valid_in = [vxh() + eth(ipv4(s, "10.244.1.5"), OWN_MAC, m)
                for s, m in (("10.244.2.7", MAC_12), ("10.244.3.7", MAC_13), ("10.244.5.7", MAC_13))]
    valid_in.append(vxh() + eth(l4_packet(17, b"x" * 30, "partial")))
    for pkt in samples(rng):
        frame = eth(pkt, rng.choice(MACS), rng.choice(SRC_MACS), rng.choice(ETHERTYPES))
        assert c_tap_out(frame, vtable) == py_tap_out(frame, vtable), frame.hex()
        sender = rng.choice(VX_SENDERS)
        payload = rng.choice(VX_HEADERS) + frame
        assert c_vx_in(payload, sender, vtable) == py_vx_in(payload, sender, vtable), (payload.hex(), sender)
    for _ in range(1500):
        base = bytearray(rng.choice(valid_in if rng.random() < 0.6 else valid_out))
        for _ in range(rng.randrange(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        data = bytes(base[:rng.randrange(len(base) + 1)] if rng.random() < 0.3 else base)
        sender = rng.choice(VX_SENDERS)
        assert c_vx_in(data, sender, vtable) == py_vx_in(data, sender, vtable), (data.hex(), sender)
        assert c_tap_out(data, vtable) == py_tap_out(data, vtable), data.hex()
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 90)))
        assert c_vx_in(data, ("198.18.0.12", PORT), vtable) == py_vx_in(data, ("198.18.0.12", PORT), vtable)


def test_every_c_vxlan_reason_is_a_drop(vtable):
    verdicts = [c_vx_in(h + f, s, vtable) for h in VX_HEADERS for f in FRAMES[:60] for s in VX_SENDERS]
    verdicts += [c_tap_out(f, vtable) for f in FRAMES]
    reasons = {v for v in verdicts if isinstance(v, str)}
    assert reasons <= {d.value for d in Drop}
    assert {"unknown_sender", "bad_vxlan", "wrong_vni", "not_ipv4", "no_lease", "truncated"} <= reasons


# ---- a kernel VTEP's TCP superpackets, on a vnet_hdr tap -------------------------------------------------

from overlayd.encap import gso  # noqa: E402
from overlayd.encap.gso import VnetHdr  # noqa: E402

TAP_MTU = 1450


def superpacket(size, checksum="partial", flags=0x18, options=b"", proto=6, frag=0, src="10.244.2.7"):
    """An IPv4 TCP (or UDP) packet of ``size`` payload bytes as a kernel VTEP with transmit offload
    sends it: one packet past the MTU, the L4 checksum field ``checksum`` (see l4_packet)."""
    body = bytes(random.Random(size).randbytes(size))
    pkt = l4_packet(proto, options + body, checksum, frag, src=src)
    if proto != 6:
        return pkt
    # the data offset and flags for these options (the checksum covers them: rebuilt by l4_packet's rule)
    l4 = bytearray(pkt[20:])
    l4[12], l4[13], l4[16:18] = (20 + len(options)) // 4 << 4, flags, b"\0\0"
    pseudo = pkt[12:20] + bytes([0, 6]) + len(l4).to_bytes(2, "big")
    value = internet_checksum(pseudo + bytes(l4)) if checksum == "valid" else \
        (~internet_checksum(pseudo)) & 0xFFFF if checksum == "partial" else checksum
    l4[16:18] = value.to_bytes(2, "big")
    return pkt[:20] + bytes(l4)


def c_vx_tap(payload, sender, table, mtu):
    """The engine's write for ``payload`` on a tap of ``mtu``: a frame, a reason, or for a GSO write the
    frames the kernel cuts it into (gso.segment_frame, the same cut as the kernel's TSO)."""
    got = fastpath.classify_vxlan_inbound(payload, sender[0], VNI, OWN_MAC, SUBNET_INT, MASK, table, mtu)
    if not isinstance(got, tuple):
        return got
    hdr, frame = got
    assert frame == payload[8:]  # written whole, as received
    return gso.segment_frame(VnetHdr.unpack(hdr), frame)


def py_vx_tap(payload, sender, table, mtu):
    v = codec(table).inbound(payload, sender, mtu)
    return v.value if isinstance(v, Drop) else v


TS_OPTS = b"\x01\x01\x08\x0a" + bytes(8)
SUPERPACKETS = [
    superpacket(64000), superpacket(5000), superpacket(TAP_MTU - 40 + 1), superpacket(TAP_MTU - 40),
    superpacket(5000, options=TS_OPTS), superpacket(5000, flags=0x18 | 0x80), superpacket(5000, flags=0x19),
    superpacket(5000, checksum="valid"), superpacket(5000, checksum=0), superpacket(5000, checksum=1234),
    superpacket(5000, proto=17), superpacket(5000, proto=17, checksum="valid"), superpacket(5000, frag=0x2000),
    superpacket(5000, frag=0x4000), superpacket(5000, src="10.244.3.7"), l4_packet(1, bytes(3000), 0),
]


def test_kernel_superpackets_are_written_whole_and_cut_like_the_reference(vtable):
    sender = ("198.18.0.12", 40000)
    for pkt in SUPERPACKETS:
        for mtu in (TAP_MTU, 576, 68, 60, 40):
            for mac in (MAC_12, MAC_13):
                payload = vxh() + eth(pkt, src=mac)
                assert c_vx_tap(payload, sender, vtable, mtu) == py_vx_tap(payload, sender, vtable, mtu), \
                    (pkt[:60].hex(), mtu, mac.hex())


def test_a_kernel_superpacket_gets_the_gso_header_the_tap_needs(vtable):
    for options, flags, gso_type in ((b"", 0x18, gso.GSO_TCPV4), (TS_OPTS, 0x98, gso.GSO_TCPV4 | gso.GSO_ECN)):
        pkt = superpacket(64000, flags=flags, options=options)
        payload = vxh() + eth(pkt)
        hdr, frame = fastpath.classify_vxlan_inbound(payload, "198.18.0.12", VNI, OWN_MAC, SUBNET_INT, MASK, vtable,
                                                     TAP_MTU)
        hlen = 40 + len(options)
        assert VnetHdr.unpack(hdr) == VnetHdr(gso.NEEDS_CSUM, gso_type, 14 + hlen, TAP_MTU - hlen, 14 + 20, 16)
        assert frame == payload[8:]  # the checksum stays partial: the kernel finishes it per segment
    # on a plain tap (no mtu) it is written as it is, its checksum completed (VxlanCodec.inbound)
    assert c_vx_in(payload, ("198.18.0.12", PORT), vtable) == py_vx_in(payload, ("198.18.0.12", PORT), vtable)
    with pytest.raises(ValueError):
        fastpath.classify_vxlan_inbound(payload, "198.18.0.12", VNI, OWN_MAC, SUBNET_INT, MASK, vtable, 65536)


def test_random_mutations_of_kernel_superpackets_agree(vtable):
    rng = random.Random(4790)
    bases = [vxh() + eth(superpacket(n, options=o)) for n in (1500, 3000) for o in (b"", TS_OPTS)]
    for _ in range(300):
        payload = bytearray(rng.choice(bases))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(8, 22 + 60) if rng.random() < 0.8 else rng.randrange(len(payload))
            payload[at] = rng.randrange(256)
        payload = bytes(payload[:rng.randrange(len(payload) + 1)] if rng.random() < 0.2 else payload)
        mtu = rng.choice((TAP_MTU, 1000, 68))
        sender = rng.choice(VX_SENDERS)
        assert c_vx_tap(payload, sender, vtable, mtu) == py_vx_tap(payload, sender, vtable, mtu), (payload.hex(), mtu)


def test_a_kernel_superpacket_with_a_bad_ip_header_checksum_is_dropped_on_both_paths(vtable):
    """The C engine writes a superpacket whole, so the pod's kernel would drop one whose IP header
    checksum is wrong; cutting it (Python) rewrites that checksum per segment: both must refuse it."""
    pkt = bytearray(superpacket(5000))
    pkt[10] ^= 0x5A
    payload, sender = vxh() + eth(bytes(pkt)), ("198.18.0.12", 40000)
    assert c_vx_tap(payload, sender, vtable, TAP_MTU) == py_vx_tap(payload, sender, vtable, TAP_MTU) == \
        Drop.BAD_IP_HEADER.value
