"""Vectors for the pure packet code: IPv4 checks, the peer table, UDP framing,
ICMP answers, the VXLAN header and the tap's Ethernet handling. scapy (an
independent implementation) builds and dissects the packets we cross-check."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, in4_pseudoheader
from scapy.utils import checksum
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from overlayd.dataplane.codecs import UdpCodec, VxlanCodec
from overlayd.encap import ether, icmp, ipv4, receive, udp, vxlan
from overlayd.encap.drops import Counters, Drop
from overlayd.encap.table import Peer, PeerTable
from overlayd.errors import EncapError

OWN = ipaddress.IPv4Network("10.244.1.0/24")
SUBNET_INT, MASK = int(OWN.network_address), int(OWN.netmask)
MAC_A = bytes.fromhex("0a0000000001")
MAC_B = bytes.fromhex("0a0000000002")


def pkt(src="10.244.1.5", dst="10.244.2.7", payload=b"hello") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=1, dport=2) / payload)


@pytest.fixture
def table():
    t = PeerTable(24)
    t.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.2", MAC_B))
    t.set(ipaddress.IPv4Network("10.244.3.0/24"), Peer("198.18.0.3", None))
    return t


# --- IPv4 ---------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (pkt(), None),
    (b"", Drop.TRUNCATED),
    (b"\x45\x00", Drop.TRUNCATED),
    (pkt()[:25], Drop.TRUNCATED),                             # total length says more
    (bytes([0x44]) + pkt()[1:], Drop.BAD_IP_HEADER),          # IHL 4
    (pkt()[:2] + b"\x00\x10" + pkt()[4:], Drop.BAD_IP_HEADER),  # total 16 < IHL 20
    (b"\x60" + b"\x00" * 39, Drop.NOT_IPV4),
    (b"\x60\x00", Drop.NOT_IPV4),
    (pkt() + b"trailing", None),                              # padding beyond total length is fine
])
def test_ipv4_check(data, expected):
    assert ipv4.check(data) is expected


@pytest.mark.parametrize("data", [pkt(), pkt(payload=b"odd"), bytes(IP(dst="1.2.3.4") / ICMP())])
def test_internet_checksum_matches_scapy(data):
    header = bytearray(data[:20])
    header[10:12] = b"\x00\x00"
    assert ipv4.internet_checksum(bytes(header)) == IP(data).chksum
    assert ipv4.internet_checksum(data[:20]) == 0  # a correct header sums to zero


# --- peer table -----------------------------------------------------------

@pytest.mark.parametrize("dst, node", [
    ("10.244.2.0", "198.18.0.2"), ("10.244.2.255", "198.18.0.2"), ("10.244.3.9", "198.18.0.3"),
    ("10.244.4.1", None), ("10.245.2.1", None),
])
def test_lookup(table, dst, node):
    peer = table.lookup(socket.inet_aton(dst))
    assert (peer.node_ip if peer else None) == node


def test_table_replace_remove_and_senders(table):
    net2 = int(ipaddress.IPv4Address("10.244.2.0"))
    assert len(table) == 2 and table.held_by("198.18.0.2") == {net2: Peer("198.18.0.2", MAC_B)}
    table.set(ipaddress.IPv4Network("10.244.2.0/24"), Peer("198.18.0.9"))
    assert table.held_by("198.18.0.2") is None and len(table) == 2
    assert table.held_by("198.18.0.9") == {net2: Peer("198.18.0.9")}
    table.remove(ipaddress.IPv4Network("10.244.2.0/24"))
    table.remove(ipaddress.IPv4Network("10.244.2.0/24"))  # twice is fine
    assert table.held_by("198.18.0.9") is None and len(table) == 1
    with pytest.raises(ValueError):
        table.set(ipaddress.IPv4Network("10.244.0.0/16"), Peer("198.18.0.9"))


def test_one_node_two_subnets_holds_both_until_both_go():
    t = PeerTable(24)
    a, b = ipaddress.IPv4Network("10.244.5.0/24"), ipaddress.IPv4Network("10.244.6.0/24")
    t.set(a, Peer("198.18.0.5"))
    t.set(b, Peer("198.18.0.5"))
    assert set(t.held_by("198.18.0.5")) == {int(a.network_address), int(b.network_address)}
    t.remove(a)
    assert set(t.held_by("198.18.0.5")) == {int(b.network_address)}
    t.remove(b)
    assert t.held_by("198.18.0.5") is None


def test_a_thousand_peers_each_hold_exactly_their_own_subnet():
    t = PeerTable(24)
    nets = {f"198.18.{i // 250}.{i % 250 + 1}": ipaddress.IPv4Network(f"10.{i // 256}.{i % 256}.0/24")
            for i in range(1000)}
    for ip, net in nets.items():
        t.set(net, Peer(ip))
    assert len(t) == 1000
    for ip, net in nets.items():
        assert list(t.held_by(ip)) == [int(net.network_address)]
        assert t.lookup(net.network_address.packed).node_ip == ip


# --- what a node accepts (anti-spoofing) --------------------------------------

HELD_2 = {int(ipaddress.IPv4Address("10.244.2.0")): Peer("198.18.0.2", MAC_B)}
HELD_2_AND_5 = {**HELD_2, int(ipaddress.IPv4Address("10.244.5.0")): Peer("198.18.0.2", MAC_B)}


@pytest.mark.parametrize("src, dst, held, expected", [
    ("10.244.2.7", "10.244.1.5", HELD_2, "peer"),
    ("10.244.2.0", "10.244.1.1", HELD_2, "peer"),                       # the sender's own .0 (its host)
    ("10.244.2.255", "10.244.1.254", HELD_2, "peer"),
    ("10.244.5.7", "10.244.1.5", HELD_2_AND_5, "peer"),                 # its second lease
    ("10.244.5.7", "10.244.1.5", HELD_2, Drop.SPOOFED_SOURCE),          # (a) another node's subnet
    ("10.244.1.9", "10.244.1.5", HELD_2, Drop.SPOOFED_SOURCE),          # (b) our own subnet
    ("8.8.8.8", "10.244.1.5", HELD_2, Drop.SPOOFED_SOURCE),             # (c) outside the Network
    ("0.0.0.0", "10.244.1.5", HELD_2, Drop.SPOOFED_SOURCE),
    ("10.244.2.7", "10.244.1.0", HELD_2, "peer"),   # tun0's .0: replies to masqueraded traffic
    ("10.244.2.7", "10.244.1.255", HELD_2, Drop.TO_BROADCAST_ADDRESS),  # (e) the subnet's broadcast
    ("10.244.2.7", "10.244.3.5", HELD_2, Drop.NOT_OUR_SUBNET),
    ("10.244.2.7", "255.255.255.255", HELD_2, Drop.NOT_OUR_SUBNET),
    ("8.8.8.8", "10.244.1.255", HELD_2, Drop.TO_BROADCAST_ADDRESS),     # destination first
    ("10.244.2.7", "10.244.1.5", {}, Drop.SPOOFED_SOURCE),
])
def test_admit(src, dst, held, expected):
    want = held[int(ipaddress.IPv4Address(src)) & MASK] if expected == "peer" else expected
    assert receive.admit(pkt(src=src, dst=dst), held, SUBNET_INT, MASK) == want


@pytest.mark.parametrize("own, dst, expected", [
    ("10.244.1.0/31", "10.244.1.0", "peer"),   # RFC 3021: both addresses of a /31 are hosts
    ("10.244.1.0/31", "10.244.1.1", "peer"),
    ("10.244.1.4/32", "10.244.1.4", "peer"),
    ("10.244.1.0/30", "10.244.1.0", "peer"),
    ("10.244.1.0/30", "10.244.1.3", Drop.TO_BROADCAST_ADDRESS),
    ("10.244.0.0/16", "10.244.255.255", Drop.TO_BROADCAST_ADDRESS),
    ("10.244.0.0/16", "10.244.1.255", "peer"),  # a host address inside a /16
])
def test_admit_on_other_subnet_lengths(own, dst, expected):
    net = ipaddress.IPv4Network(own)
    held = {int(ipaddress.IPv4Address("10.244.2.7")) & int(net.netmask): Peer("198.18.0.2")}
    verdict = receive.admit(pkt(src="10.244.2.7", dst=dst), held, int(net.network_address), int(net.netmask))
    assert verdict == (Peer("198.18.0.2") if expected == "peer" else expected)


# --- UDP framing -----------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (pkt(dst="10.244.2.7"), "198.18.0.2"),
    (pkt(dst="10.244.3.1"), "198.18.0.3"),
    (pkt(dst="10.244.9.9"), Drop.NO_LEASE),
    (pkt(dst="8.8.8.8"), Drop.NO_LEASE),
    (b"\x45", Drop.TRUNCATED),
    (b"\x60" + b"\x00" * 47, Drop.NOT_IPV4),
])
def test_udp_outbound(table, data, expected):
    verdict = udp.outbound(data, table)
    if isinstance(expected, Drop):
        assert verdict is expected
    else:
        peer, payload = verdict
        assert peer.node_ip == expected and payload == data  # the packet is the payload, unchanged


PORT = 8472


@pytest.mark.parametrize("data, sender, expected", [
    (pkt(src="10.244.2.7", dst="10.244.1.5"), ("198.18.0.2", PORT), "ok"),
    (pkt(src="10.244.3.7", dst="10.244.1.5"), ("198.18.0.3", PORT), "ok"),
    (pkt(src="10.244.2.7", dst="10.244.1.5"), ("198.18.0.66", PORT), Drop.UNKNOWN_SENDER),
    (pkt(src="10.244.2.7", dst="10.244.1.5"), ("198.18.0.2", 8285), Drop.WRONG_SOURCE_PORT),
    (pkt(src="10.244.2.7", dst="10.244.1.5"), ("198.18.0.2", 40123), Drop.WRONG_SOURCE_PORT),
    (b"\x45\x00\x00", ("198.18.0.2", 40123), Drop.WRONG_SOURCE_PORT),     # outer checks first
    (b"\x45\x00\x00", ("198.18.0.66", 40123), Drop.UNKNOWN_SENDER),
    (pkt(src="10.244.2.7", dst="10.244.3.5"), ("198.18.0.2", PORT), Drop.NOT_OUR_SUBNET),
    (pkt(src="10.244.2.7", dst="1.1.1.1"), ("198.18.0.2", PORT), Drop.NOT_OUR_SUBNET),
    (pkt(src="10.244.3.7", dst="10.244.1.5"), ("198.18.0.2", PORT), Drop.SPOOFED_SOURCE),
    (pkt(src="10.244.1.7", dst="10.244.1.5"), ("198.18.0.2", PORT), Drop.SPOOFED_SOURCE),
    (pkt(src="8.8.8.8", dst="10.244.1.5"), ("198.18.0.2", PORT), Drop.SPOOFED_SOURCE),
    (pkt(src="10.244.2.7", dst="10.244.1.0"), ("198.18.0.2", PORT), "ok"),
    (pkt(src="10.244.2.7", dst="10.244.1.255"), ("198.18.0.2", PORT), Drop.TO_BROADCAST_ADDRESS),
    (b"\x45\x00\x00", ("198.18.0.2", PORT), Drop.TRUNCATED),
    (b"garbage-garbage-garbage", ("198.18.0.2", PORT), Drop.NOT_IPV4),
])
def test_udp_inbound(table, data, sender, expected):
    verdict = udp.inbound(data, sender, PORT, SUBNET_INT, MASK, table)
    assert verdict == (data if expected == "ok" else expected)


# --- ICMP ------------------------------------------------------------------

def test_dest_unreachable_comes_from_the_node_and_quotes_the_packet():
    """Issue 21: the answer comes from the node's own address (its cni0 gateway, .1 of its subnet),
    as a router's would, not from the unreachable destination it says is unreachable."""
    original = pkt(src="10.244.1.5", dst="10.244.9.9", payload=b"0123456789")
    answer = IP(icmp.dest_unreachable(original, source=socket.inet_aton("10.244.1.1")))
    assert (answer.src, answer.dst) == ("10.244.1.1", "10.244.1.5")
    assert answer[ICMP].type == 3 and answer[ICMP].code == 1
    assert bytes(answer[ICMP].payload)[:28] == original[:28]
    raw = bytes(answer)
    assert ipv4.internet_checksum(raw[:20]) == 0 and ipv4.internet_checksum(raw[20:]) == 0


@pytest.mark.parametrize("wire", ["udp", "vxlan"])
def test_codecs_answer_from_the_gateway_of_their_subnet(table, wire):
    lost = pkt(src="10.244.1.5", dst="10.244.9.9")
    if wire == "udp":
        answer = UdpCodec(table, OWN, PORT).answer(Drop.NO_LEASE, lost, 0.0)
    else:
        mac = bytes.fromhex("02aa00000001")
        frame = mac + bytes.fromhex("02bb00000002") + b"\x08\x00" + lost
        answer = VxlanCodec(table, OWN, 1, mac, PORT).answer(Drop.NO_LEASE, frame, 0.0)[ether.ETH_HEADER_LEN:]
    assert (IP(answer).src, IP(answer).dst) == ("10.244.1.1", "10.244.1.5")


@pytest.mark.parametrize("original", [
    bytes(IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=3, code=1) / (b"x" * 28)),  # an error
    bytes(IP(src="10.244.1.5", dst="10.244.9.9", frag=8) / (b"x" * 16)),                 # later fragment
    bytes(IP(src="0.0.0.0", dst="10.244.9.9") / UDP()),
    bytes(IP(src="224.0.0.5", dst="10.244.9.9") / UDP()),
])
def test_no_icmp_error_where_rfc1122_forbids_one(original):
    assert icmp.dest_unreachable(original, source=socket.inet_aton("10.244.1.1")) is None


def test_echo_request_is_answered():
    assert icmp.dest_unreachable(bytes(IP(src="10.244.1.5", dst="10.244.9.9") / ICMP()),
                                 source=socket.inet_aton("10.244.1.1")) is not None


def test_rate_limiter_bursts_then_refills():
    limiter = icmp.RateLimiter(rate=10, burst=3)
    assert [limiter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(0.05) is False  # half a token
    assert limiter.allow(0.1) is True
    assert [limiter.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


# --- VXLAN header ------------------------------------------------------------

@pytest.mark.parametrize("vni", [0, 1, 42, 0x123456, (1 << 24) - 1])
def test_vxlan_header_round_trip_and_scapy_agrees(vni):
    header = vxlan.pack_header(vni)
    assert len(header) == 8 and vxlan.unpack_header(header) == (0x08, vni)
    dissected = VXLAN(header)
    assert dissected.vni == vni and dissected.flags == 0x08
    assert header == bytes(VXLAN(flags=0x08, vni=vni))


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_vxlan_vni_out_of_range(vni):
    with pytest.raises(EncapError):
        vxlan.pack_header(vni)


FRAME = bytes(Ether(dst="0a:00:00:00:00:01", src="0a:00:00:00:00:02") / IP(src="10.244.2.7", dst="10.244.1.5") / UDP())


@pytest.mark.parametrize("dgram, expected", [
    (bytes(VXLAN(flags=0x08, vni=1)) + FRAME, FRAME),
    (bytes(VXLAN(flags=0x08, vni=1, reserved0=0xabcdef, reserved2=0x77)) + FRAME, FRAME),  # reserved ignored
    (bytes(VXLAN(flags=0x0C, vni=1)) + FRAME, FRAME),   # other flag bits ignored (RFC 7348)
    (bytes(VXLAN(flags=0x00, vni=1)) + FRAME, Drop.BAD_VXLAN),
    (bytes(VXLAN(flags=0x08, vni=2)) + FRAME, Drop.WRONG_VNI),
    (bytes(VXLAN(flags=0x08, vni=1)) + FRAME[:10], Drop.TRUNCATED),
    (b"\x08\x00", Drop.TRUNCATED),
])
def test_vxlan_decapsulate(dgram, expected):
    assert vxlan.decapsulate(dgram, 1) == expected


def test_vxlan_encapsulate_dissects_as_vxlan():
    wire = UDP(sport=8472, dport=8472) / VXLAN(vxlan.encapsulate(FRAME, 7))
    parsed = UDP(bytes(wire))
    assert parsed[VXLAN].vni == 7 and bytes(parsed[VXLAN].payload) == FRAME


# --- Ethernet / tap -----------------------------------------------------------

@pytest.mark.parametrize("text", ["0a:00:00:00:00:01", "FE:ff:00:11:22:33"])
def test_mac_round_trip(text):
    assert ether.mac_to_str(ether.mac_to_bytes(text)) == text.lower()


@pytest.mark.parametrize("text", ["", "0a:00:00:00:00", "0a-00-00-00-00-01", "zz:00:00:00:00:01", None])
def test_bad_mac(text):
    with pytest.raises(EncapError):
        ether.mac_to_bytes(text)


@pytest.mark.parametrize("seed", [b"", b"198.18.0.1", bytes(range(7))])
def test_stable_mac_is_stable_unicast_and_local(seed):
    mac = ether.stable_mac(seed)
    assert mac == ether.stable_mac(seed) and len(mac) == 6
    assert mac[0] & 0x01 == 0 and mac[0] & 0x02 == 0x02
    assert ether.stable_mac(seed + b"x") != mac


def tap_frame(dst_ip, ethertype_layer=None, dst_mac="0a:00:00:00:00:01"):
    inner = ethertype_layer if ethertype_layer is not None else IP(src="10.244.1.5", dst=dst_ip) / UDP()
    return bytes(Ether(dst=dst_mac, src="0a:00:00:00:00:01") / inner)


def test_tap_outbound_readdresses_to_the_peer_vtep(table):
    frame = tap_frame("10.244.2.7")
    peer, out = ether.tap_outbound(frame, table)
    assert peer.node_ip == "198.18.0.2"
    assert out[:6] == MAC_B and out[6:] == frame[6:]


@pytest.mark.parametrize("frame, expected", [
    (tap_frame("10.244.9.9"), Drop.NO_LEASE),
    (tap_frame("10.244.3.3"), Drop.NO_LEASE),  # a peer without a VTEP MAC is not a VXLAN peer
    (tap_frame("x", ARP(pdst="10.244.2.7")), Drop.NOT_IPV4),
    (b"\x0a" * 10, Drop.TRUNCATED),
    (tap_frame("10.244.2.7")[:20], Drop.TRUNCATED),
])
def test_tap_outbound_drops(table, frame, expected):
    assert ether.tap_outbound(frame, table) is expected


def inbound_frame(src_ip="10.244.2.7", dst_ip="10.244.1.5", src_mac="0a:00:00:00:00:02",
                  dst_mac="0a:00:00:00:00:01") -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) / IP(src=src_ip, dst=dst_ip) / UDP())


@pytest.mark.parametrize("frame, held, expected", [
    (FRAME, HELD_2, "ok"),
    (inbound_frame(dst_mac="ff:ff:ff:ff:ff:ff"), HELD_2, "ok"),
    (inbound_frame(src_ip="10.244.3.1"), {int(ipaddress.IPv4Address("10.244.3.0")): Peer("198.18.0.2")},
     "ok"),                                                                    # no VtepMAC: any source MAC
    (inbound_frame(dst_mac="0a:00:00:00:00:99"), HELD_2, Drop.NOT_FOR_US),
    (inbound_frame(dst_ip="10.244.2.5"), HELD_2, Drop.NOT_OUR_SUBNET),
    (inbound_frame(dst_ip="10.244.1.0"), HELD_2, "ok"),
    (inbound_frame(dst_ip="10.244.1.255", dst_mac="ff:ff:ff:ff:ff:ff"), HELD_2, Drop.TO_BROADCAST_ADDRESS),
    (inbound_frame(src_ip="10.244.3.7"), HELD_2, Drop.SPOOFED_SOURCE),
    (inbound_frame(src_ip="10.244.1.7"), HELD_2, Drop.SPOOFED_SOURCE),
    (inbound_frame(src_ip="8.8.8.8"), HELD_2, Drop.SPOOFED_SOURCE),
    (inbound_frame(src_mac="0a:00:00:00:00:66"), HELD_2, Drop.WRONG_SOURCE_MAC),
    (inbound_frame(src_mac="0a:00:00:00:00:01"), HELD_2, Drop.WRONG_SOURCE_MAC),  # our own MAC
    (bytes(Ether(dst="0a:00:00:00:00:01") / ARP()), HELD_2, Drop.NOT_IPV4),
])
def test_tap_inbound(frame, held, expected):
    verdict = ether.tap_inbound(frame, held, MAC_A, SUBNET_INT, MASK)
    assert verdict == (frame if expected == "ok" else expected)


def test_build_and_parse_ethernet():
    header = ether.build_ethernet(MAC_A, MAC_B, 0x0800)
    assert ether.parse_ethernet(header) == (MAC_A, MAC_B, 0x0800)
    with pytest.raises(EncapError):
        ether.parse_ethernet(b"short")


def test_counters_by_reason():
    c = Counters()
    c.drop(Drop.NO_LEASE)
    c.drop(Drop.NO_LEASE)
    c.tx(100)
    assert c.snapshot() == {"drop_no_lease": 2, "tx_packets": 1, "tx_bytes": 100}
    assert len({d.value for d in Drop}) == len(Drop)


# --- partial (CHECKSUM_PARTIAL) inner checksums from offloading kernel VTEPs ----

def pseudo_sum(ip: IP, l4_len: int) -> int:
    """What a kernel with checksum offload leaves in the field: the folded pseudo-header sum."""
    return ~checksum(in4_pseudoheader(ip.proto, ip, l4_len)) & 0xFFFF


def with_l4_checksum(data: bytes, value: int) -> bytes:
    """``data`` (an IPv4 packet) with its TCP/UDP checksum field set to ``value``."""
    at = IP(data).ihl * 4 + (16 if IP(data).proto == 6 else 6)
    return data[:at] + value.to_bytes(2, "big") + data[at + 2:]


def partial(data: bytes) -> bytes:
    """A valid packet as an offloading kernel VTEP puts it on a virtual underlay."""
    ip = IP(data)
    return with_l4_checksum(data, pseudo_sum(ip, ip.len - ip.ihl * 4))


def recomputed(data: bytes) -> bytes:
    """``data`` with its TCP/UDP checksum as scapy computes it."""
    ip = IP(data)
    del ip.payload.chksum
    return bytes(ip)


def tuned(layers, with_pseudo: bool) -> bytes:
    """A partial packet whose payload's last word makes the ones'-complement sum over the L4
    bytes (``with_pseudo``: and the pseudo-header) 0xFFFF: with it, a valid packet whose field
    equals the pseudo-header sum; without, a UDP packet whose complete checksum computes to 0."""
    data = partial(bytes(layers))
    ihl = IP(data).ihl * 4
    summed = data[ihl:]
    if with_pseudo:
        summed = bytes(in4_pseudoheader(IP(data).proto, IP(data), len(summed))) + summed
    total = ~checksum(summed) & 0xFFFF
    last = (int.from_bytes(data[-2:], "big") - total) % 0xFFFF
    return data[:-2] + last.to_bytes(2, "big")


TCP_OK = bytes(IP(src="10.244.2.7", dst="10.244.1.5") / TCP(sport=5201, dport=40000, flags="PA", seq=7)
               / (b"x" * 1400))
UDP_OK = bytes(IP(src="10.244.2.7", dst="10.244.1.5") / UDP(sport=53, dport=4000) / b"odd length!")
OPTS_OK = bytes(IP(src="10.244.2.7", dst="10.244.1.5", options=[IPOption_RR()]) / TCP() / b"options")
FRAGMENT = bytes(IP(src="10.244.2.7", dst="10.244.1.5", flags="MF") / UDP() / b"first part")
UDP_NO_CHECKSUM = with_l4_checksum(UDP_OK, 0)
ZERO_UDP = tuned(IP(src="10.244.2.7", dst="10.244.1.5") / UDP(sport=1, dport=2) / b"\x00\x00", False)
VALID_AND_PSEUDO = tuned(IP(src="10.244.2.7", dst="10.244.1.5") / TCP() / b"abcd", True)


@pytest.mark.parametrize("data, expected", [
    (partial(TCP_OK), TCP_OK),                             # completed to what scapy computes
    (partial(UDP_OK), UDP_OK),
    (partial(OPTS_OK), OPTS_OK),                           # past IP options
    (ZERO_UDP, recomputed(ZERO_UDP)),                      # a computed 0 becomes 0xFFFF on UDP
    (TCP_OK, None),                                        # valid: untouched
    (UDP_OK, None),
    (UDP_NO_CHECKSUM, None),                               # UDP without checksum stays so
    (with_l4_checksum(TCP_OK, 0x1234), None),              # wrong, not partial: the pod's kernel drops it
    (partial(FRAGMENT), None),                             # a fragment holds part of the L4 bytes only
    (bytes(IP(src="10.244.2.7", dst="10.244.1.5") / ICMP()), None),
    (partial(TCP_OK)[:20] + partial(TCP_OK)[20:36], None),  # shorter than a TCP header
    (VALID_AND_PSEUDO, None),                              # valid although its field == the pseudo sum
])
def test_complete_partial_checksum(data, expected):
    assert ether.complete_partial_checksum(data) == expected


def test_the_tuned_vectors_are_what_they_claim():
    assert recomputed(VALID_AND_PSEUDO) == VALID_AND_PSEUDO == partial(VALID_AND_PSEUDO)
    assert IP(recomputed(ZERO_UDP))[UDP].chksum == 0xFFFF


def test_tap_inbound_completes_a_partial_checksum():
    frame = bytes(Ether(dst="0a:00:00:00:00:01", src="0a:00:00:00:00:02", type=0x0800)) + partial(TCP_OK)
    assert ether.tap_inbound(frame, HELD_2, MAC_A, SUBNET_INT, MASK) == frame[:14] + TCP_OK
