"""A kernel VTEP's TCP superpackets on the userspace VXLAN receive path (issue 10 item 5).

With transmit checksum offload on, a kernel VTEP over a virtual underlay
sends a whole TCP superpacket (up to 64 KB, the partial checksum mark) in one
VXLAN datagram. The receive path cuts it to the tap's MTU as a NIC's TSO
would; every segment is compared with what scapy builds for it. Anything
else longer than the MTU is dropped, and nothing is cut before it passed
every check a plain frame passes."""

from __future__ import annotations

import ipaddress
import random
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, in4_pseudoheader
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

from overlayd.dataplane.codecs import VxlanCodec
from overlayd.dataplane.loop import RECV_SIZE, DataPlane
from overlayd.encap import ether
from overlayd.encap.drops import Counters, Drop
from overlayd.encap.table import Peer, PeerTable

MTU = 1450
OWN_MAC, PEER_MAC = "0e:00:00:00:00:01", "0e:00:00:00:00:05"
SRC, DST = "10.244.5.7", "10.244.1.5"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]  # 12 bytes: MSS 1398 at MTU 1450
PAYLOAD = random.Random(10).randbytes(65535 - 52)  # the largest superpacket: 64 KB with the headers


def with_tcp_checksum(pkt: bytes, value: int) -> bytes:
    at = (pkt[0] & 0x0F) * 4 + 16
    return pkt[:at] + value.to_bytes(2, "big") + pkt[at + 2:]


def partial(pkt: bytes) -> bytes:
    """``pkt`` as an offloading kernel hands it on: the L4 checksum field holds the pseudo-header sum."""
    ip = IP(pkt)
    at = ip.ihl * 4 + (16 if ip.proto == 6 else 6)
    value = ~checksum(in4_pseudoheader(ip.proto, ip, ip.len - ip.ihl * 4)) & 0xFFFF
    return pkt[:at] + value.to_bytes(2, "big") + pkt[at + 2:]


def tcp(payload: bytes, seq: int = 1000, flags: str = "A", ident: int = 300, ip_options=(), tcp_options=TS,
        ip_flags: str = "DF", frag: int = 0) -> bytes:
    return bytes(IP(src=SRC, dst=DST, id=ident, flags=ip_flags, frag=frag, ttl=63, tos=0x02, options=list(ip_options))
                 / TCP(sport=5201, dport=40000, seq=seq, ack=777, flags=flags, window=501, options=list(tcp_options))
                 / payload)


def expected(payload: bytes, mss: int, seq: int = 1000, flags: str = "A", ident: int = 300, ip_options=(),
             tcp_options=TS) -> list[bytes]:
    """What a NIC's TSO makes of ``tcp(payload, ...)``: scapy computes every length and checksum."""
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)]
    out = []
    for i, chunk in enumerate(chunks):
        f = flags
        if i != len(chunks) - 1:
            f = f.replace("F", "").replace("P", "")
        if i != 0:
            f = f.replace("C", "")
        out.append(tcp(chunk, (seq + i * mss) & 0xFFFFFFFF, f, (ident + i) & 0xFFFF, ip_options, tcp_options))
    return out


@pytest.mark.parametrize("pkt, mtu, want", [
    (partial(tcp(PAYLOAD[:5000])), MTU, expected(PAYLOAD[:5000], 1398)),          # 3 full segments, 1 short
    (partial(tcp(PAYLOAD[:1398 * 4])), MTU, expected(PAYLOAD[:1398 * 4], 1398)),  # a multiple of the MSS
    (partial(tcp(PAYLOAD, flags="FPAC")), MTU, expected(PAYLOAD, 1398, flags="FPAC")),  # 60 KB; FIN/PSH/CWR
    (partial(tcp(PAYLOAD[:5000], seq=0xFFFFF000, ident=0xFFFF)), MTU,           # sequence and ID wrap
     expected(PAYLOAD[:5000], 1398, seq=0xFFFFF000, ident=0xFFFF)),
    (partial(tcp(PAYLOAD[:4000], tcp_options=())), MTU, expected(PAYLOAD[:4000], 1410, tcp_options=())),
    (partial(tcp(PAYLOAD[:4000], ip_options=[IPOption_RR()])), MTU,             # IP options: in every segment
     expected(PAYLOAD[:4000], 1450 - 24 - 32, ip_options=[IPOption_RR()])),
    (partial(tcp(PAYLOAD[:3000])), 1280, expected(PAYLOAD[:3000], 1228)),       # the MSS follows the MTU
])
def test_cut_superpacket(pkt, mtu, want):
    got = ether.cut_superpacket(pkt, mtu)
    assert [p.hex() for p in got] == [p.hex() for p in want]
    assert all(len(p) <= mtu for p in got)


UDP_SUPER = partial(bytes(IP(src=SRC, dst=DST) / UDP(sport=443, dport=50000) / PAYLOAD[:5000]))


@pytest.mark.parametrize("pkt, mtu", [
    (UDP_SUPER, MTU),                                                  # UDP GSO: its segment size is not on the wire
    (tcp(PAYLOAD[:5000]), MTU),                                        # complete checksum: not from an offloading VTEP
    (with_tcp_checksum(partial(tcp(PAYLOAD[:5000])), 0x1234), MTU),    # wrong, not the partial mark
    (partial(tcp(PAYLOAD[:5000], ip_flags="MF")), MTU),                # a fragment
    (partial(tcp(PAYLOAD[:5000], frag=100)), MTU),
    (bytes(IP(src=SRC, dst=DST) / ICMP() / PAYLOAD[:5000]), MTU),
    (partial(tcp(PAYLOAD[:5000])), 52),                                # no room for data after the headers
])
def test_cut_superpacket_drops(pkt, mtu):
    assert ether.cut_superpacket(pkt, mtu) is Drop.BAD_IP_HEADER


# --- tap_inbound and the codec: cut only what passed every check ---------------------------------

OWN = ipaddress.IPv4Network("10.244.1.0/24")
PEER_SUBNET = ipaddress.IPv4Network("10.244.5.0/24")
HELD = {int(PEER_SUBNET.network_address): Peer("198.18.0.15", ether.mac_to_bytes(PEER_MAC))}
SUPER = partial(tcp(PAYLOAD[:5000]))


def frame(pkt: bytes, dst_mac: str = OWN_MAC, src_mac: str = PEER_MAC) -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac, type=0x0800)) + pkt


def spoofed(pkt: bytes, src: str) -> bytes:
    ip = IP(pkt)
    ip.src = src
    del ip.chksum
    return partial(bytes(ip))


@pytest.mark.parametrize("data, mtu, want", [
    (frame(SUPER), MTU, [frame(p) for p in expected(PAYLOAD[:5000], 1398)]),
    (frame(SUPER), None, frame(tcp(PAYLOAD[:5000]))),            # no MTU given: completed, not cut
    (frame(partial(tcp(PAYLOAD[:1398]))), MTU, frame(tcp(PAYLOAD[:1398]))),  # exactly the MTU: one frame
    (frame(UDP_SUPER), MTU, Drop.BAD_IP_HEADER),
    (frame(spoofed(SUPER, "10.244.3.7")), MTU, Drop.SPOOFED_SOURCE),         # checks come first
    (frame(SUPER, src_mac="0e:00:00:00:00:66"), MTU, Drop.WRONG_SOURCE_MAC),
    (frame(SUPER, dst_mac="0e:00:00:00:00:99"), MTU, Drop.NOT_FOR_US),
    (frame(SUPER)[:3000], MTU, Drop.TRUNCATED),
])
def test_tap_inbound_superpackets(data, mtu, want):
    assert ether.tap_inbound(data, HELD, ether.mac_to_bytes(OWN_MAC), int(OWN.network_address),
                             int(OWN.netmask), mtu) == want


def codec() -> VxlanCodec:
    table = PeerTable(24)
    table.set(PEER_SUBNET, HELD[int(PEER_SUBNET.network_address)])
    return VxlanCodec(table, OWN, 1, ether.mac_to_bytes(OWN_MAC))


def test_the_codec_cuts_a_superpacket_to_the_mtu():
    dgram = bytes(VXLAN(flags=0x08, vni=1)) + frame(SUPER)
    assert codec().inbound(dgram, ("198.18.0.15", 41000), MTU) == \
        [frame(p) for p in expected(PAYLOAD[:5000], 1398)]
    assert codec().inbound(dgram, ("198.18.0.99", 41000), MTU) is Drop.UNKNOWN_SENDER


# --- the Python loop: big enough reads, every segment written ------------------------------------

class OneDatagram:
    """A socket stand-in that returns ``dgram`` once (cut to the size asked for), then EAGAIN."""

    def __init__(self, dgram: bytes, sender: tuple[str, int]):
        self.queue = [(dgram, sender)]

    def recvfrom(self, size: int):
        if not self.queue:
            raise BlockingIOError
        dgram, sender = self.queue.pop()
        return dgram[:size], sender


def test_the_python_loop_reads_a_64k_superpacket_whole_and_writes_every_segment():
    pkt = partial(tcp(PAYLOAD))
    assert len(pkt) == 65535
    dgram = bytes(VXLAN(flags=0x08, vni=1)) + frame(pkt)
    assert RECV_SIZE >= len(dgram)
    dev, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # a record per write, as a tap
    with dev, tap:
        dev.setblocking(False)  # a bug fails, not hangs
        tap.setblocking(False)
        counters = Counters()
        plane = DataPlane(dev.fileno(), OneDatagram(dgram, ("198.18.0.15", 41000)), codec(), None, counters, mtu=MTU)
        plane._socket_readable()
        written = []
        while True:
            try:
                written.append(tap.recv(1 << 16))
            except BlockingIOError:
                break
    want = [frame(p) for p in expected(PAYLOAD, 1398)]
    assert written == want
    stats = counters.snapshot()
    assert stats["rx_superpackets"] == 1 and stats["dev_tx_packets"] == len(want) == 47
