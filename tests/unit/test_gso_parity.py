"""Superpackets: the C engine's segmentation and coalescing (overlayd/csrc/gso.c) give
exactly what the pure Python reference (overlayd.encap.gso) gives, on a table of
vectors and on seeded mutations of them; and the reference itself is checked
against what TCP needs (segments that reassemble into the original byte stream,
valid checksums everywhere, flags where the kernel's TSO puts them)."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import struct

import pytest

from overlayd.encap import gso, ipv4
from overlayd.encap.drops import Drop
from overlayd.encap.gso import NEEDS_CSUM, VnetHdr

fastpath = pytest.importorskip("overlayd._fastpath", reason="the C fast path is not built")

# The seeded random cases run this many times over (the same stream, longer): scripts/test-sanitizers
# raises it, so more mutated inputs cross the sanitized C code.
MUTATION_ROUNDS = int(os.environ.get("OVERLAYD_MUTATION_ROUNDS", "1"))

SRC, DST = "10.244.1.5", "10.244.2.7"
ACK, PSH, FIN, CWR, SYN = 0x10, 0x08, 0x01, 0x80, 0x02


def tcp(payload: bytes, seq: int = 1000, flags: int = ACK, options: bytes = b"", ttl: int = 64, tos: int = 0,
        ident: int = 7, partial: bool = False, src: str = SRC, dst: str = DST, ack: int = 5555,
        window: int = 502) -> bytes:
    """An IPv4 TCP packet; ``partial``: the TCP checksum field holds the pseudo-header sum (as TSO reads do)."""
    thl = 20 + len(options)
    th = struct.pack("!HHIIBBHHH", 40000, 5201, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags, window, 0, 0) + options
    total = 20 + thl + len(payload)
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000, ttl, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ih = ih[:10] + struct.pack("!H", ipv4.internet_checksum(ih)) + ih[12:]
    pseudo = ih[12:20] + struct.pack("!BBH", 0, 6, thl + len(payload))
    if partial:
        value = ~ipv4.internet_checksum(pseudo) & 0xFFFF
    else:
        value = ipv4.internet_checksum(pseudo + th + payload)
    return ih + th[:16] + struct.pack("!H", value) + th[18:] + payload


def tso(payload: bytes, mss: int, flags: int = ACK | PSH, gso_type: int = gso.GSO_TCPV4, **kw):
    pkt = tcp(payload, flags=flags, partial=True, **kw)
    hlen = 20 + (pkt[32] >> 4) * 4
    return VnetHdr(NEEDS_CSUM, gso_type, hlen, mss, 20, 16), pkt


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def tcp_ok(pkt: bytes) -> bool:
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - 20)
    return ipv4.internet_checksum(pkt[:20]) == 0 and ipv4.internet_checksum(pseudo + pkt[20:]) == 0


def c_segment(hdr: VnetHdr, pkt: bytes):
    return fastpath.segment(hdr.pack(), pkt)


def py_segment(hdr: VnetHdr, pkt: bytes):
    v = gso.segment(hdr, pkt)
    return v.value if isinstance(v, Drop) else v


def py_coalesce(pkts, verified=None, udp=True):
    return [(h.pack(), p) for h, p in gso.coalesce(pkts, verified, udp)]


OPTS = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamp
SEGMENT_VECTORS = [
    tso(data(64000), 1420),
    tso(data(64000), 1420, gso_type=gso.GSO_TCPV4 | gso.GSO_ECN, flags=ACK | CWR | PSH),
    tso(data(5000), 1408, options=OPTS, flags=ACK | PSH | FIN),
    tso(data(2840), 1420, seq=0xFFFFF000),                     # sequence wraps
    tso(data(100), 1420),                                       # one short segment
    tso(b"", 1420, flags=ACK | FIN),                            # no payload
    tso(data(3000), 1000, ident=0xFFFF),                        # IP ID wraps
    (VnetHdr(), tcp(data(100))),                                # no offload at all
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 20, 16), tcp(data(999), partial=True)),  # checksum to finish
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 20, 6), bytes.fromhex("450000200001400040110000") + socket.inet_aton(SRC)
     + socket.inet_aton(DST) + bytes.fromhex("9c40145100 0c0000 00 61626364".replace(" ", ""))),  # UDP
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 20, 999), tcp(data(10), partial=True)),  # checksum offset outside
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 4, 16), tcp(data(10), partial=True)),    # checksum start in the IP header
    (VnetHdr(NEEDS_CSUM, gso.GSO_TCPV6, 40, 1420, 20, 16), tcp(data(3000), partial=True)),  # v6 GSO on v4
    (VnetHdr(NEEDS_CSUM, 5, 28, 1420, 20, 6), tcp(data(3000), partial=True)),  # UDP_L4 not asked for
    (VnetHdr(NEEDS_CSUM, gso.GSO_TCPV4, 40, 0, 20, 16), tcp(data(3000), partial=True)),  # gso_size 0
    (VnetHdr(NEEDS_CSUM, gso.GSO_TCPV4, 40, 1420, 20, 16), b"\x60" + bytes(60)),  # IPv6
]


def mutated(rng: random.Random, vectors) -> tuple[VnetHdr, bytes]:
    """One of ``vectors`` (virtio header, packet or frame) with up to two of its bytes changed and,
    three times in ten, one byte of its header."""
    hdr, data = rng.choice(vectors)
    data = bytearray(data)
    for _ in range(rng.randrange(0, 3)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    raw = bytearray(hdr.pack())
    if rng.random() < 0.3:
        raw[rng.randrange(10)] = rng.randrange(256)
    return VnetHdr.unpack(bytes(raw)), bytes(data)


@pytest.mark.parametrize("hdr,pkt", SEGMENT_VECTORS)
def test_segment_vectors(hdr, pkt):
    assert c_segment(hdr, pkt) == py_segment(hdr, pkt)


def test_segments_rebuild_the_stream_with_tso_flags_and_valid_checksums():
    payload = data(64000, 1)
    hdr, pkt = tso(payload, 1420, flags=ACK | PSH | FIN | CWR, seq=0xFFFFFF00)
    segs = gso.segment(hdr, pkt)
    assert len(segs) == 46 and all(len(s) <= 20 + 20 + 1420 for s in segs)
    assert b"".join(s[40:] for s in segs) == payload
    assert all(tcp_ok(s) for s in segs)
    seqs = [int.from_bytes(s[24:28], "big") for s in segs]
    assert seqs == [(0xFFFFFF00 + i * 1420) & 0xFFFFFFFF for i in range(46)]
    assert [int.from_bytes(s[4:6], "big") for s in segs] == [7 + i for i in range(46)]
    flags = [s[33] for s in segs]
    assert flags[0] == ACK | CWR and flags[-1] == ACK | PSH | FIN and set(flags[1:-1]) == {ACK}


def test_a_partial_checksum_is_completed():
    hdr, pkt = SEGMENT_VECTORS[8]
    assert not tcp_ok(pkt) and tcp_ok(gso.segment(hdr, pkt)[0])


def stream(n: int, mss: int = 1420, seq: int = 1000, **kw) -> list[bytes]:
    """n full-sized segments of one flow, as a peer sends them."""
    return [tcp(data(mss, i), seq=seq + i * mss, ident=i, **kw) for i in range(n)]


def corrupt(pkt: bytes, at: int) -> bytes:
    return pkt[:at] + bytes([pkt[at] ^ 0x01]) + pkt[at + 1:]


def other_flow(pkt: bytes) -> bytes:
    return tcp(pkt[40:], seq=int.from_bytes(pkt[24:28], "big"), src="10.244.1.6")


S = stream(6)
COALESCE_VECTORS = [
    S,                                                       # one run
    stream(46),                                              # 46 x 1420 < 64 KB
    stream(47) + stream(3, seq=1000 + 47 * 1420),            # runs capped at 64 KB
    S[:3] + [tcp(data(500), seq=1000 + 3 * 1420, flags=ACK | PSH)] + stream(2, seq=1000 + 3 * 1420 + 500),
    S[:2] + [tcp(data(500), seq=1000 + 2 * 1420)] + stream(2, seq=1000 + 2 * 1420 + 500),  # short ends a run
    S[:2] + [tcp(S[2][40:], seq=1000 + 2 * 1420, flags=ACK | PSH)] + S[3:],                 # PSH ends a run
    [S[0], S[2], S[1]],                                      # out of order
    [S[0], S[1], other_flow(S[2])],                          # another flow
    [S[0], corrupt(S[1], 100), S[2]],                        # bad TCP checksum: alone, unmerged
    [S[0], corrupt(S[1], 12), S[2]],                         # bad IP checksum (a source address bit)
    [S[0], corrupt(S[1], 10), S[2]],                         # bad IP header checksum field
    [S[0], tcp(S[1][40:], seq=1000 + 1420, ttl=63)],
    [S[0], tcp(S[1][40:], seq=1000 + 1420, tos=2)],          # ECN differs
    [S[0], tcp(S[1][40:], seq=1000 + 1420, ack=6666)],
    [S[0], tcp(S[1][40:], seq=1000 + 1420, window=1)],
    [S[0], tcp(S[1][40:], seq=1000 + 1420, options=OPTS)],
    [tcp(S[0][40:], options=OPTS), tcp(S[1][40:], seq=1000 + 1420, options=OPTS)],  # options alike: merge
    [S[0], tcp(S[1][40:], seq=1000 + 1420, flags=ACK | FIN)],
    [tcp(S[0][40:], flags=ACK | CWR), S[1]],
    [tcp(S[0][40:], flags=SYN), S[1]],
    [tcp(b"", flags=ACK), tcp(b"", flags=ACK)],              # pure ACKs
    [S[0], S[1][:-1]],                                       # total length beyond the bytes
    [S[0], S[1] + b"\0"],                                    # trailing bytes
    [S[0][:39], S[1]], [b"", S[0]], [],
    stream(3, seq=0xFFFFFA00),                               # sequence wraps inside the run
]


@pytest.mark.parametrize("pkts", COALESCE_VECTORS)
def test_coalesce_vectors(pkts):
    assert fastpath.coalesce(pkts) == py_coalesce(pkts)


def bad_tcp_checksum(pkt: bytes) -> bytes:
    """``pkt`` with a wrong TCP checksum field (the IP header and the payload untouched)."""
    return corrupt(pkt, 36)


def runs(writes) -> list[int]:
    """The segments of S-sized packets (1420 bytes of payload) in each write."""
    return [max(1, (len(p) - 40) // 1420) for _, p in writes]


T, F = True, False
# (packets, verified, the run lengths): a datagram that came in a UDP_GRO buffer (verified) had its UDP
# checksum, which covers the whole inner packet, validated by the kernel: its TCP checksum is not checked
# again; a lone one's still is, and every IP header checksum too.
VERIFIED_VECTORS = [
    ([S[0], bad_tcp_checksum(S[1]), S[2]], [T] * 3, [3]),
    ([bad_tcp_checksum(p) for p in S], [T] * 6, [6]),
    ([S[0], bad_tcp_checksum(S[1]), S[2], bad_tcp_checksum(S[3]), S[4], S[5]], [T, T, T, F, F, F], [3, 1, 2]),
    ([S[0], bad_tcp_checksum(S[1]), S[2], corrupt(S[3], 10), S[4], S[5]], [T] * 6, [3, 1, 2]),  # IP: checked
    ([S[0], bad_tcp_checksum(S[1]), S[2], corrupt(S[3], 12), S[4], S[5]], [T] * 6, [3, 1, 2]),
    ([bad_tcp_checksum(S[0]), S[1], S[2]], [T, F, F], [3]),            # a verified head, lone good ones
    ([bad_tcp_checksum(S[0]), bad_tcp_checksum(S[1]), S[2]], [F, T, T], [1, 2]),  # an unverified bad head
]


@pytest.mark.parametrize("pkts,verified,want", VERIFIED_VECTORS)
def test_a_udp_verified_packet_keeps_its_tcp_checksum_unchecked(pkts, verified, want):
    assert runs(gso.coalesce(pkts, verified)) == want
    assert fastpath.coalesce(pkts, verified) == py_coalesce(pkts, verified)
    frames = [ETH + p for p in pkts]
    assert runs(gso.coalesce_frames(frames, verified)) == want
    assert fastpath.coalesce_frames(frames, verified) == py_coalesce_frames(frames, verified)


def test_verified_takes_one_flag_per_packet():
    assert fastpath.coalesce(S[:2], None) == fastpath.coalesce(S[:2]) == py_coalesce(S[:2])
    with pytest.raises(ValueError):
        fastpath.coalesce(S[:2], [True])
    with pytest.raises(TypeError):
        fastpath.coalesce(S[:2], 1)


def test_coalesced_superpacket_is_what_the_kernel_expects():
    (hdr, sp), = gso.coalesce(S)
    assert hdr == VnetHdr(NEEDS_CSUM, gso.GSO_TCPV4, 40, 1420, 20, 16)
    assert len(sp) == int.from_bytes(sp[2:4], "big") == 40 + 6 * 1420
    assert ipv4.internet_checksum(sp[:20]) == 0 and sp[40:] == b"".join(s[40:] for s in S)
    pseudo = sp[12:20] + struct.pack("!BBH", 0, 6, len(sp) - 20)
    assert int.from_bytes(sp[36:38], "big") == ~ipv4.internet_checksum(pseudo) & 0xFFFF
    # segmenting it again (as the kernel's TSO would) gives the payloads and headers back
    assert gso.segment(hdr, sp) == S


def test_corrupted_segments_are_never_merged():
    rng = random.Random(5)
    for _ in range(200):
        i = rng.randrange(len(S))
        pkts = list(S)
        pkts[i] = corrupt(pkts[i], rng.randrange(20, len(pkts[i])))
        merged = [p for h, p in gso.coalesce(pkts) if h.gso_type]
        assert all(pkts[i][40:] not in p for p in merged)


def test_random_mutations_agree():
    rng = random.Random(10)
    for _ in range(400 * MUTATION_ROUNDS):
        pkts = [bytearray(p) for p in rng.choice(COALESCE_VECTORS[:6])]
        for _ in range(rng.randrange(0, 3)):
            if pkts:
                p = rng.choice(pkts)
                p[rng.randrange(len(p))] = rng.randrange(256)
        pkts = [bytes(p) for p in pkts]
        assert fastpath.coalesce(pkts) == py_coalesce(pkts)
        verified = [rng.random() < 0.5 for _ in pkts]
        assert fastpath.coalesce(pkts, verified) == py_coalesce(pkts, verified)
        hdr, pkt = mutated(rng, SEGMENT_VECTORS)
        assert c_segment(hdr, pkt) == py_segment(hdr, pkt), (hdr, pkt.hex())


def test_many_small_segments_make_runs_of_at_most_gro_max_segs():
    """200 contiguous 100-byte segments (well under 64 KB): a run used to take all of them,
    and the engine's writer has room for GRO_MAX_SEGS iovecs: a stack overflow any sender
    of small segments could cause. Runs are cut at GRO_MAX_SEGS, in C and in Python alike."""
    pkts = [tcp(data(100), seq=1000 + i * 100) for i in range(200)]
    writes = fastpath.coalesce(pkts)
    assert writes == py_coalesce(pkts)
    runs = [gso.VnetHdr.unpack(h) for h, _ in writes]
    assert [r.gso_type != gso.GSO_NONE for r in runs].count(True) == 4  # 64 + 64 + 64 + 8
    assert sum((len(p) - 40) // 100 for _, p in writes) == 200


# ---- UDP runs (issue 20: a flood of small datagrams crosses the forwarding path once per run) -------

def udp4(payload: bytes, ident: int = 7, sport: int = 40000, dport: int = 5201, ttl: int = 64, tos: int = 0,
         flags: int = 0x4000, checksum: bool = True, src: str = SRC, dst: str = DST) -> bytes:
    """An IPv4 UDP datagram; ``checksum`` False: UDP checksum 0 (none)."""
    ulen = 8 + len(payload)
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + ulen, ident & 0xFFFF, flags, ttl, 17, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ih = ih[:10] + struct.pack("!H", ipv4.internet_checksum(ih)) + ih[12:]
    uh = struct.pack("!HHHH", sport, dport, ulen, 0)
    value = ipv4.internet_checksum(ih[12:20] + struct.pack("!BBH", 0, 17, ulen) + uh + payload) or 0xFFFF
    return ih + uh[:6] + struct.pack("!H", value if checksum else 0) + payload


def flood(n: int, size: int = 64, ident: int = 100, **kw) -> list[bytes]:
    """n datagrams of one flow, ``size`` bytes of payload each, IDs counting up (as Linux numbers them)."""
    return [udp4(data(size, i), ident=ident + i, **kw) for i in range(n)]


def kernel_udp_segments(hdr: VnetHdr, sp: bytes) -> list[bytes]:
    """What the kernel makes of a UDP_L4 GSO write (__udp_gso_segment after inet_gso_segment): gso_size
    bytes of payload per datagram, the IPv4 ID counting up from the header's, lengths and checksums
    computed (an IPv6 one: the payload length)."""
    iphl = 40 if sp[0] >> 4 == 6 else 20
    body, out = sp[iphl + 8:], []
    for i in range(0, len(body), hdr.gso_size):
        chunk = body[i:i + hdr.gso_size]
        ip, uh = bytearray(sp[:iphl]), bytearray(sp[iphl:iphl + 8])
        uh[4:6] = (8 + len(chunk)).to_bytes(2, "big")
        uh[6:8] = b"\0\0"
        if iphl == 40:
            ip[4:6] = (8 + len(chunk)).to_bytes(2, "big")
            pseudo = bytes(ip[8:40]) + struct.pack("!IxxxB", 8 + len(chunk), 17)
        else:
            ip[2:4] = (28 + len(chunk)).to_bytes(2, "big")
            ip[4:6] = ((int.from_bytes(sp[4:6], "big") + i // hdr.gso_size) & 0xFFFF).to_bytes(2, "big")
            ip[10:12] = b"\0\0"
            ip[10:12] = ipv4.internet_checksum(bytes(ip)).to_bytes(2, "big")
            pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 17, 8 + len(chunk))
        uh[6:8] = (ipv4.internet_checksum(pseudo + bytes(uh) + chunk) or 0xFFFF).to_bytes(2, "big")
        out.append(bytes(ip) + bytes(uh) + chunk)
    return out


U = flood(10)
UDP_VECTORS = [  # (packets, datagrams per write)
    (U, [10]),
    (flood(9) + [udp4(data(20), ident=109)], [10]),                                  # the last may be shorter
    (U[:3] + [udp4(data(20), ident=103)] + flood(3, ident=104), [4, 3]),             # a short one ends a run
    (U[:3] + [udp4(data(80), ident=103)] + flood(3, ident=104), [3, 2, 2]),          # a longer one starts anew
    (flood(70), [64, 6]),                                                            # GRO_MAX_SEGS
    (flood(50, size=1400), [46, 4]),                                                 # 64 KB
    ([U[0], U[2], U[1]], [1, 1, 1]),                                                 # IDs must count up by one
    (flood(3, ident=0xFFFE), [3]),                                                   # ... and may wrap
    (U[:2] + [udp4(data(64, 2), ident=102, checksum=False)] + U[3:5], [2, 1, 2]),    # no checksum: alone
    (U[:2] + [corrupt(U[2], 40)] + U[3:5], [2, 1, 2]),                               # a wrong one: alone
    (U[:2] + [corrupt(U[2], 10)] + U[3:5], [2, 1, 2]),                               # a bad IP header: alone
    (U[:2] + [udp4(data(64, 2), ident=102, sport=40001)], [2, 1]),                   # another flow
    (U[:2] + [udp4(data(64, 2), ident=102, dport=53)], [2, 1]),
    (U[:2] + [udp4(data(64, 2), ident=102, src="10.244.1.6")], [2, 1]),
    (U[:2] + [udp4(data(64, 2), ident=102, ttl=63)], [2, 1]),
    (U[:2] + [udp4(data(64, 2), ident=102, tos=1)], [2, 1]),
    (U[:2] + [udp4(data(64, 2), ident=102, flags=0)], [2, 1]),                       # DF differs
    (flood(3, flags=0), [3]),                                                        # without DF alike
    ([udp4(data(64), ident=1, flags=0x2000), udp4(data(64, 1), ident=2, flags=0x2000)], [1, 1]),  # fragments
    ([udp4(b"", ident=1), udp4(b"", ident=2)], [1, 1]),                              # empty datagrams
    (U[:2] + [U[2][:-1]] + U[3:4], [2, 1, 1]),                                       # total length beyond the bytes
    (U[:2] + S[:2] + U[2:4], [2, 2, 2]),                                             # TCP between UDP runs...
    (S[:2] + U[:3], [2, 3]),                                                         # ...after TCP
]


def packets(writes) -> list[int]:
    """The packets each write carries (a superpacket's: its payload in gso_size pieces)."""
    return [1 if hdr.gso_type == gso.GSO_NONE else -(-(len(p) - hdr.hdr_len) // hdr.gso_size) for hdr, p in writes]


def check_udp_runs(pkts: list[bytes], want: list[int], eth: bytes, ip_header: int) -> None:
    """``pkts`` coalesce into writes of ``want`` packets each, the C engine agrees (on ``pkts`` and
    on them as frames behind ``eth``), and every UDP superpacket (its IP header ``ip_header``
    bytes) is what the kernel cuts back into the very datagrams."""
    writes = gso.coalesce(pkts)
    assert packets(writes) == want
    assert fastpath.coalesce(pkts) == py_coalesce(pkts)
    frames = [eth + p for p in pkts]
    assert fastpath.coalesce_frames(frames) == py_coalesce_frames(frames)
    at = 0
    for (hdr, p), n in zip(writes, want):
        if hdr.gso_type == gso.GSO_UDP_L4:
            hdr_len = ip_header + 8
            assert hdr == VnetHdr(NEEDS_CSUM, gso.GSO_UDP_L4, hdr_len, len(pkts[at]) - hdr_len, ip_header, 6)
            assert kernel_udp_segments(hdr, p) == pkts[at:at + n]
        at += n


@pytest.mark.parametrize("pkts,want", UDP_VECTORS)
def test_udp_runs_agree_and_end_where_the_kernel_could_not_cut_them_back(pkts, want):
    check_udp_runs(pkts, want, ETH, 20)


def test_udp_runs_only_when_asked():
    """A device that takes no UDP GSO writes (Linux < 6.2) gets every datagram alone; TCP runs stay."""
    pkts = S[:3] + U
    assert [h.gso_type for h, _ in gso.coalesce(pkts, udp=False)] == [gso.GSO_TCPV4] + [gso.GSO_NONE] * 10
    assert fastpath.coalesce(pkts, None, False) == py_coalesce(pkts, udp=False)
    frames = [ETH + p for p in pkts]
    assert fastpath.coalesce_frames(frames, None, False) == py_coalesce_frames(frames, udp=False)
    assert [h.gso_type for h, _ in gso.coalesce_frames(frames, udp=False)] == [gso.GSO_TCPV4] + [gso.GSO_NONE] * 10


def test_a_verified_datagram_keeps_its_udp_checksum_unchecked():
    """As for TCP: a datagram that came in a UDP_GRO buffer was covered by the wire's UDP checksum."""
    pkts = U[:2] + [corrupt(U[2], 40)] + U[3:5]
    assert packets(gso.coalesce(pkts, [True] * 5)) == [5]
    assert fastpath.coalesce(pkts, [True] * 5) == py_coalesce(pkts, [True] * 5)


def test_random_udp_mutations_agree():
    rng = random.Random(20)
    vectors = [v for v, _ in UDP_VECTORS[:6]]
    for _ in range(400 * MUTATION_ROUNDS):
        pkts = [bytearray(p) for p in rng.choice(vectors)]
        for _ in range(rng.randrange(0, 3)):
            p = rng.choice(pkts)
            p[rng.randrange(len(p))] = rng.randrange(256)
        pkts = [bytes(p) for p in pkts]
        verified = [rng.random() < 0.5 for _ in pkts]
        assert fastpath.coalesce(pkts, verified) == py_coalesce(pkts, verified)
        frames = [ETH + p for p in pkts]
        assert fastpath.coalesce_frames(frames, verified) == py_coalesce_frames(frames, verified)


# ---- frames on a vnet_hdr tap (userspace VXLAN on the C engine) -----------------------------------

ETH = bytes.fromhex("02aa00000001" "02aa0000000c" "0800")  # to our VtepMAC, from a peer's
ETH_BCAST = b"\xff" * 6 + ETH[6:]


def on_tap(hdr: VnetHdr, pkt: bytes, eth: bytes = ETH) -> tuple[VnetHdr, bytes]:
    """A tun vector as the tap reads it: the Ethernet header in front, csum_start counting it."""
    return dataclasses.replace(hdr, csum_start=hdr.csum_start + 14 if hdr.flags else hdr.csum_start), eth + pkt


def c_segment_frame(hdr: VnetHdr, frame: bytes):
    return fastpath.segment_frame(hdr.pack(), frame)


def py_segment_frame(hdr: VnetHdr, frame: bytes):
    v = gso.segment_frame(hdr, frame)
    return v.value if isinstance(v, Drop) else v


FRAME_SEGMENT_VECTORS = [on_tap(h, p) for h, p in SEGMENT_VECTORS] + [
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 30, 16), ETH + tcp(data(10), partial=True)),    # start inside the IP header
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 6, 16), ETH + tcp(data(10), partial=True)),     # ... inside the Ethernet one
    (VnetHdr(NEEDS_CSUM, 0, 0, 0, 20, 16), ETH + tcp(data(10), partial=True)),    # tun offsets on a tap
    (VnetHdr(), b""), (VnetHdr(), ETH[:10]), (VnetHdr(), ETH), (VnetHdr(), ETH + b"\x45"),
]


@pytest.mark.parametrize("hdr,frame", FRAME_SEGMENT_VECTORS)
def test_segment_frame_vectors(hdr, frame):
    assert c_segment_frame(hdr, frame) == py_segment_frame(hdr, frame)


def test_a_tap_superpacket_becomes_the_tun_segments_behind_its_ethernet_header():
    hdr, pkt = tso(data(64000, 3), 1398, flags=ACK | PSH | FIN, options=OPTS)
    tap_hdr, frame = on_tap(dataclasses.replace(hdr, hdr_len=hdr.hdr_len + 14), pkt)
    frames = fastpath.segment_frame(tap_hdr.pack(), frame)
    assert frames == [ETH + s for s in gso.segment(hdr, pkt)] and len(frames) == 46
    assert all(tcp_ok(f[14:]) and len(f) <= 14 + 1450 for f in frames)


def c_coalesce_frames(frames, verified=None):
    return fastpath.coalesce_frames(frames, verified)


def py_coalesce_frames(frames, verified=None, udp=True):
    return [(h.pack(), f) for h, f in gso.coalesce_frames(frames, verified, udp)]


FRAME_COALESCE_VECTORS = [[ETH + p for p in v] for v in COALESCE_VECTORS] + [
    [ETH + S[0], ETH + S[1], ETH_BCAST + S[2], ETH_BCAST + S[3], ETH + S[4]],  # the Ethernet header splits runs
    [ETH + S[0], ETH[:6] + bytes(6) + ETH[12:] + S[1]],                      # another source MAC
    [ETH_BCAST + p for p in S],
    [ETH + p for p in [tcp(data(100), seq=1000 + i * 100) for i in range(200)]],  # runs cut at GRO_MAX_SEGS
]


@pytest.mark.parametrize("frames", FRAME_COALESCE_VECTORS)
def test_coalesce_frames_vectors(frames):
    assert c_coalesce_frames(frames) == py_coalesce_frames(frames)


def test_a_coalesced_frame_is_what_the_tap_expects():
    (hdr, frame), = gso.coalesce_frames([ETH + p for p in S])
    assert hdr == VnetHdr(NEEDS_CSUM, gso.GSO_TCPV4, 14 + 40, 1420, 14 + 20, 16)
    assert frame == ETH + gso.coalesce(S)[0][1]
    assert gso.segment_frame(hdr, frame) == [ETH + p for p in S]  # the kernel's TSO gives the frames back
    with pytest.raises(TypeError):
        fastpath.coalesce_frames([ETH[:13]])


def test_random_frame_mutations_agree():
    rng = random.Random(14)
    for _ in range(300 * MUTATION_ROUNDS):
        frames = [bytearray(f) for f in rng.choice(FRAME_COALESCE_VECTORS[:6] + FRAME_COALESCE_VECTORS[-4:-1])]
        for _ in range(rng.randrange(0, 3)):
            if frames:
                f = rng.choice(frames)
                f[rng.randrange(len(f))] = rng.randrange(256)
        frames = [bytes(f) for f in frames]
        verified = [rng.random() < 0.5 for _ in frames]
        assert c_coalesce_frames(frames, verified) == py_coalesce_frames(frames, verified)
        hdr, frame = mutated(rng, FRAME_SEGMENT_VECTORS)
        assert c_segment_frame(hdr, frame) == py_segment_frame(hdr, frame), (hdr, frame.hex())
