"""Superpackets for TCP over IPv6 (issue 17): the reference (overlayd.encap.gso) cuts a TSO6 read into
segments and coalesces IPv6 segments into one GSO write as the kernel would, with IPv6 pseudo-header
checksums (checked against scapy's); the C engine's twins (overlayd/csrc/gso.c) give exactly the same
on vectors, on IPv4/IPv6 mixes and on seeded mutations."""

from __future__ import annotations

import dataclasses
import os
import random
import struct

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from overlayd.encap import gso, ipv4, ipv6
from overlayd.encap.drops import Drop
from overlayd.encap.gso import GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, VnetHdr

from .test_gso_parity import ETH, S as S4, check_udp_runs, data, py_coalesce, tso as tso4

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")

MUTATION_ROUNDS = int(os.environ.get("OVERLAYD_MUTATION_ROUNDS", "1"))
SRC, DST = "fd00:10:244:1::5", "fd00:10:244:2::7"
ACK, PSH, FIN, CWR, SYN = 0x10, 0x08, 0x01, 0x80, 0x02
OPTS = b"\x01\x01\x08\x0a" + bytes(8)
ETH6 = ETH[:12] + b"\x86\xdd"


def tcp6(payload: bytes, seq: int = 1000, flags: int = ACK, options: bytes = b"", hlim: int = 64, tc: int = 0,
         fl: int = 0, partial: bool = False, src: str = SRC, dst: str = DST, ack: int = 5555,
         window: int = 502) -> bytes:
    """An IPv6 TCP packet built by scapy; ``partial``: the TCP checksum field holds the pseudo-header
    sum (as TSO reads do)."""
    pkt = bytes(IPv6(src=src, dst=dst, hlim=hlim, tc=tc, fl=fl)
                / TCP(sport=40000, dport=5201, seq=seq & 0xFFFFFFFF, ack=ack, flags=flags, window=window,
                      options=[]) / payload)
    if options:  # scapy pads options its own way: put these raw bytes in and fix the lengths and checksum
        pkt = bytearray(pkt[:60] + options + pkt[60:])
        pkt[4:6] = (len(pkt) - 40).to_bytes(2, "big")
        pkt[52] = ((20 + len(options)) // 4) << 4
        pkt[56:58] = b"\0\0"
        pkt[56:58] = (~ipv4.fold(ipv6.pseudo_sum(pkt[8:24], pkt[24:40], len(pkt) - 40, 6)
                                 + ipv4.ones_sum(bytes(pkt[40:]))) & 0xFFFF).to_bytes(2, "big")
        pkt = bytes(pkt)
    if partial:
        pkt = pkt[:56] + ipv6.pseudo_sum(pkt[8:24], pkt[24:40], len(pkt) - 40, 6).to_bytes(2, "big") + pkt[58:]
    return pkt


def tso6(payload: bytes, mss: int, flags: int = ACK | PSH, gso_type: int = GSO_TCPV6, **kw):
    pkt = tcp6(payload, flags=flags, partial=True, **kw)
    return VnetHdr(NEEDS_CSUM, gso_type, 40 + (pkt[52] >> 4) * 4, mss, 40, 16), pkt


def tcp6_ok(pkt: bytes) -> bool:
    """Whether scapy, recomputing it, gets the TCP checksum ``pkt`` carries."""
    p = IPv6(pkt)
    want = p[TCP].chksum
    del p[TCP].chksum
    return IPv6(bytes(p))[TCP].chksum == want


def c_segment(hdr: VnetHdr, pkt: bytes):
    return fastpath.segment(hdr.pack(), pkt)


def py_segment(hdr: VnetHdr, pkt: bytes):
    v = gso.segment(hdr, pkt)
    return v.value if isinstance(v, Drop) else v


def with_ext_header(pkt: bytes) -> bytes:
    """``pkt`` with an (empty) Destination Options header between the fixed header and TCP."""
    return bytes(IPv6(pkt[:40]) / IPv6ExtHdrDestOpt() / TCP(pkt[40:]))


def udp6_partial() -> bytes:
    pkt = bytearray(bytes(IPv6(src=SRC, dst=DST, nh=17, plen=12)) + struct.pack("!HHHH", 40000, 5201, 12, 0) + b"abcd")
    pkt[46:48] = ipv6.pseudo_sum(pkt[8:24], pkt[24:40], 12, 17).to_bytes(2, "big")
    return bytes(pkt)


SEGMENT_VECTORS = [
    tso6(data(64000), 1400),
    tso6(data(64000), 1400, gso_type=GSO_TCPV6 | GSO_ECN, flags=ACK | CWR | PSH),
    tso6(data(5000), 1388, options=OPTS, flags=ACK | PSH | FIN),
    tso6(data(2800), 1400, seq=0xFFFFF000),                    # sequence wraps
    tso6(data(100), 1400),                                      # one short segment
    tso6(b"", 1400, flags=ACK | FIN),                           # no payload
    tso6(data(3000), 1000, tc=0x2, fl=0x12345),                 # traffic class, flow label kept
    (VnetHdr(), tcp6(data(100))),                               # no offload at all
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 40, 16), tcp6(data(999), partial=True)),  # checksum to finish
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 40, 6), udp6_partial()),      # UDP: a zero sum is sent as 0xFFFF
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 40, 999), tcp6(data(10), partial=True)),  # checksum offset outside
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 20, 16), tcp6(data(10), partial=True)),   # start in the fixed header
    (VnetHdr(NEEDS_CSUM, GSO_TCPV4, 60, 1400, 40, 16), tcp6(data(3000), partial=True)),  # v4 GSO on v6
    (VnetHdr(NEEDS_CSUM, GSO_TCPV6, 40, 0, 40, 16), tcp6(data(3000), partial=True)),  # gso_size 0
    (VnetHdr(NEEDS_CSUM, GSO_TCPV6, 68, 1400, 48, 16), with_ext_header(tcp6(data(3000), partial=True))),
    (VnetHdr(NEEDS_CSUM, GSO_TCPV6, 60, 1400, 40, 16), tcp6(data(3000), partial=True)[:-1]),  # truncated
    (VnetHdr(NEEDS_CSUM, GSO_TCPV6, 60, 1400, 40, 16), tcp6(data(3000), partial=True)[:39]),
    (VnetHdr(NEEDS_CSUM, GSO_TCPV6, 60, 1400, 40, 16), b"\x60" + bytes(60)),  # a jumbogram's header
    tso4(data(3000), 1420, gso_type=GSO_TCPV6),                 # v6 GSO on v4
]


@pytest.mark.parametrize("hdr,pkt", SEGMENT_VECTORS)
def test_segment_vectors(hdr, pkt):
    assert c_segment(hdr, pkt) == py_segment(hdr, pkt)


def test_segments_rebuild_the_stream_with_tso_flags_and_valid_ipv6_checksums():
    payload = data(64000, 1)
    hdr, pkt = tso6(payload, 1400, flags=ACK | PSH | FIN | CWR, seq=0xFFFFFF00, tc=4, fl=77)
    segs = gso.segment(hdr, pkt)
    assert len(segs) == 46 and all(len(s) <= 40 + 20 + 1400 for s in segs)
    assert b"".join(s[60:] for s in segs) == payload
    assert all(tcp6_ok(s) for s in segs)
    assert all(ipv6.check(s) is None and ipv6.length(s) == len(s) for s in segs)
    assert all(s[:4] == pkt[:4] and s[6:40] == pkt[6:40] for s in segs)  # nothing else in the header moves
    seqs = [int.from_bytes(s[44:48], "big") for s in segs]
    assert seqs == [(0xFFFFFF00 + i * 1400) & 0xFFFFFFFF for i in range(46)]
    flags = [s[53] for s in segs]
    assert flags[0] == ACK | CWR and flags[-1] == ACK | PSH | FIN and set(flags[1:-1]) == {ACK}


def test_a_partial_checksum_is_completed():
    hdr, pkt = SEGMENT_VECTORS[8]
    assert not tcp6_ok(pkt) and tcp6_ok(gso.segment(hdr, pkt)[0])
    hdr, pkt = SEGMENT_VECTORS[9]
    (done,) = gso.segment(hdr, pkt)
    assert int.from_bytes(done[46:48], "big") == ~ipv4.fold(
        ipv6.pseudo_sum(pkt[8:24], pkt[24:40], 12, 17) + ipv4.ones_sum(pkt[40:46] + b"\0\0" + pkt[48:])) & 0xFFFF


def test_tso_header_cuts_an_ipv6_superpacket_to_the_mtu():
    pkt = tcp6(data(9000), partial=True, options=OPTS)
    hdr = gso.tso_header(pkt, 1450)
    assert hdr == VnetHdr(NEEDS_CSUM, GSO_TCPV6, 72, 1450 - 72, 40, 16)
    assert all(len(s) <= 1450 and tcp6_ok(s) for s in gso.segment(hdr, pkt))
    assert gso.tso_header(with_ext_header(pkt), 1450) is None  # TCP not right behind the fixed header


def stream(n: int, mss: int = 1400, seq: int = 1000, **kw) -> list[bytes]:
    """n full-sized segments of one IPv6 flow, as a peer sends them."""
    return [tcp6(data(mss, i), seq=seq + i * mss, **kw) for i in range(n)]


def corrupt(pkt: bytes, at: int) -> bytes:
    return pkt[:at] + bytes([pkt[at] ^ 0x01]) + pkt[at + 1:]


def follow(pkt: bytes, i: int = 1, **kw) -> bytes:
    """Segment i of S's flow (the same payload), with the changes kw."""
    return tcp6(pkt[60:], seq=1000 + i * 1400, **kw)


S = stream(6)
NOT_ONE_FLOW = [                                             # pairs GRO keeps apart
    [S[0], follow(S[1], src="fd00:10:244:1::6")],            # another flow
    [S[0], follow(S[1], dst="fd00:10:244:3::7")],
    [S[0], corrupt(S[1], 100)],                              # bad TCP checksum: alone, unmerged
    [S[0], corrupt(S[1], 20)],                               # a source address bit: the checksum fails
    [S[0], follow(S[1], hlim=63)],
    [S[0], follow(S[1], tc=2)],                              # ECN differs
    [S[0], follow(S[1], fl=9)],                              # another flow label
    [S[0], follow(S[1], ack=6666)],
    [S[0], follow(S[1], window=1)],
    [S[0], follow(S[1], options=OPTS)],
    [S[0], follow(S[1], flags=ACK | FIN)],
    [tcp6(S[0][60:], flags=ACK | CWR), S[1]],
    [tcp6(S[0][60:], flags=SYN), S[1]],
    [tcp6(b""), tcp6(b"")],                                  # pure ACKs
    [S[0], S[1][:-1]],                                       # payload length beyond the bytes
    [S[0], S[1] + b"\0"],                                    # trailing bytes
    [with_ext_header(S[0]), with_ext_header(S[1])],          # extension headers: alone
    [S[0], S[2]],                                            # a gap
    [S[0], S[1][:40] + S4[1][20:]],                          # an IPv4 TCP segment behind an IPv6 header
]
COALESCE_VECTORS = NOT_ONE_FLOW + [
    S,                                                       # one run
    stream(46),                                              # 46 x 1400 < 64 KB
    stream(47) + stream(3, seq=1000 + 47 * 1400),            # runs capped at 64 KB
    S[:2] + [tcp6(data(500), seq=1000 + 2 * 1400)] + stream(2, seq=1000 + 2 * 1400 + 500),  # short ends a run
    S[:2] + [tcp6(S[2][60:], seq=1000 + 2 * 1400, flags=ACK | PSH)] + S[3:],                # PSH ends a run
    [S[0], S[2], S[1]],                                      # out of order
    [tcp6(S[0][60:], options=OPTS), follow(S[1], options=OPTS)],  # options alike: merge
    [S[0][:59], S[1]], [b"\x60", S[0]],
    stream(3, seq=0xFFFFFA00),                               # sequence wraps inside the run
    [S4[0], S[0], S[1], S4[1], S4[2]],                       # the families' runs apart
]


@pytest.mark.parametrize("pkts", COALESCE_VECTORS)
def test_coalesce_vectors(pkts):
    assert fastpath.coalesce(pkts) == py_coalesce(pkts)


def runs(writes) -> list[int]:
    return [max(1, (len(p) - 60) // 1400) for _, p in writes]


def test_coalesce_merges_what_gro_would_and_no_more():
    assert runs(gso.coalesce(S)) == [6]
    assert runs(gso.coalesce(stream(47) + stream(3, seq=1000 + 47 * 1400))) == [46, 4]
    assert runs(gso.coalesce(S[:2] + [tcp6(S[2][60:], seq=1000 + 2 * 1400, flags=ACK | PSH)] + S[3:])) == [3, 3]
    assert runs(gso.coalesce(stream(3, seq=0xFFFFFA00))) == [3]
    assert runs(gso.coalesce([tcp6(S[0][60:], options=OPTS), follow(S[1], options=OPTS)])) == [2]
    for pkts in NOT_ONE_FLOW:
        assert [h.gso_type for h, _ in gso.coalesce(pkts)] == [GSO_NONE, GSO_NONE], pkts
    assert [h.gso_type for h, _ in gso.coalesce([S4[0], S[0], S[1], S4[1], S4[2]])] == [GSO_NONE, GSO_TCPV6, GSO_TCPV4]


def test_coalesced_superpacket_is_what_the_kernel_expects():
    (hdr, sp), = gso.coalesce(S)
    assert hdr == VnetHdr(NEEDS_CSUM, GSO_TCPV6, 60, 1400, 40, 16)
    assert len(sp) == ipv6.length(sp) == 60 + 6 * 1400 and sp[60:] == b"".join(s[60:] for s in S)
    assert int.from_bytes(sp[56:58], "big") == ipv6.pseudo_sum(sp[8:24], sp[24:40], len(sp) - 40, 6)
    assert gso.segment(hdr, sp) == S  # the kernel's TSO gives the segments back


@pytest.mark.parametrize("verified,want", [([True] * 3, [3]), ([False] * 3, [1, 1, 1]), ([True, True, False], [2, 1])])
def test_a_udp_verified_packet_keeps_its_tcp_checksum_unchecked(verified, want):
    pkts = [S[0], corrupt(S[1], 56), corrupt(S[2], 56)]
    assert runs(gso.coalesce(pkts, verified)) == want
    assert fastpath.coalesce(pkts, verified) == py_coalesce(pkts, verified)


FRAME_SEGMENT_VECTORS = [
    (dataclasses.replace(h, csum_start=h.csum_start + 14 if h.flags else 0), ETH6 + p) for h, p in SEGMENT_VECTORS
]
FRAME_COALESCE_VECTORS = [[ETH6 + p for p in v] for v in COALESCE_VECTORS]


def test_frames_agree_and_a_coalesced_frame_is_what_the_tap_expects():
    for hdr, frame in FRAME_SEGMENT_VECTORS:
        want = gso.segment_frame(hdr, frame)
        assert fastpath.segment_frame(hdr.pack(), frame) == (want.value if isinstance(want, Drop) else want)
    for frames in FRAME_COALESCE_VECTORS:
        assert fastpath.coalesce_frames(frames) == [(h.pack(), f) for h, f in gso.coalesce_frames(frames)]
    (hdr, frame), = gso.coalesce_frames([ETH6 + p for p in S])
    assert hdr == VnetHdr(NEEDS_CSUM, GSO_TCPV6, 14 + 60, 1400, 14 + 40, 16)
    assert gso.segment_frame(hdr, frame) == [ETH6 + p for p in S]


def test_random_mutations_agree():
    rng = random.Random(17)
    for _ in range(400 * MUTATION_ROUNDS):
        pkts = [bytearray(p) for p in rng.choice(COALESCE_VECTORS[len(NOT_ONE_FLOW):])]
        for _ in range(rng.randrange(0, 3)):
            p = rng.choice(pkts)
            if p:
                p[rng.randrange(min(len(p), 80) if rng.random() < 0.7 else len(p))] = rng.randrange(256)
        pkts = [bytes(p) for p in pkts]
        verified = [rng.random() < 0.5 for _ in pkts]
        assert fastpath.coalesce(pkts, verified) == py_coalesce(pkts, verified)
        frames = [ETH6 + p for p in pkts]
        want = [(h.pack(), f) for h, f in gso.coalesce_frames(frames, verified)]
        assert fastpath.coalesce_frames(frames, verified) == want
        hdr, pkt = rng.choice(SEGMENT_VECTORS)
        pkt = bytearray(pkt)
        for _ in range(rng.randrange(0, 3)):
            if pkt:
                pkt[rng.randrange(min(len(pkt), 80))] = rng.randrange(256)  # mostly the headers
        raw = bytearray(hdr.pack())
        if rng.random() < 0.3:
            raw[rng.randrange(10)] = rng.randrange(256)
        hdr = VnetHdr.unpack(bytes(raw))
        assert c_segment(hdr, bytes(pkt)) == py_segment(hdr, bytes(pkt)), (hdr, bytes(pkt).hex())


def udp6(payload: bytes, sport: int = 40000, hlim: int = 64, tc: int = 0, fl: int = 0, checksum: bool = True) -> bytes:
    """An IPv6 UDP datagram (``checksum`` False: a zero checksum field, which IPv6 does not allow)."""
    ulen = 8 + len(payload)
    pkt = bytearray(bytes(IPv6(src=SRC, dst=DST, nh=17, plen=ulen, hlim=hlim, tc=tc, fl=fl))
                    + struct.pack("!HHHH", sport, 5201, ulen, 0) + payload)
    if checksum:
        value = ~ipv4.fold(ipv6.pseudo_sum(pkt[8:24], pkt[24:40], ulen, 17) + ipv4.ones_sum(bytes(pkt[40:]))) & 0xFFFF
        pkt[46:48] = (value or 0xFFFF).to_bytes(2, "big")
    return bytes(pkt)


U6 = [udp6(data(64, i)) for i in range(8)]


@pytest.mark.parametrize("pkts,want", [
    (U6, [8]),
    (U6[:3] + [udp6(data(64, 3), hlim=63)] + U6[4:], [3, 1, 4]),     # hop limit differs
    (U6[:3] + [udp6(data(64, 3), fl=5)] + U6[4:], [3, 1, 4]),        # flow label differs
    (U6[:3] + [udp6(data(64, 3), sport=1)] + U6[4:], [3, 1, 4]),     # another flow
    (U6[:3] + [udp6(data(64, 3), checksum=False)] + U6[4:], [3, 1, 4]),
    (U6[:3] + [corrupt(U6[3], 60)] + U6[4:], [3, 1, 4]),             # a wrong checksum
    (U6[:3] + [udp6(data(10, 3))] + U6[4:], [4, 4]),                  # a shorter one ends a run
    ([S4[0]] + U6 + [S[0]], [1, 8, 1]),
])
def test_ipv6_udp_runs_agree_and_are_what_the_kernel_cuts_back(pkts, want):
    check_udp_runs(pkts, want, ETH6, 40)
