"""Superpackets on the tun: the reference for ``overlayd/csrc/gso.c``.

A tun opened with ``IFF_VNET_HDR`` puts a 10-byte ``virtio_net_hdr`` in front
of every packet; with ``TUNSETOFFLOAD`` (CSUM, TSO4, TSO6) the kernel hands
us up to 64 KB of one TCP flow in one read, with a partial checksum, and
accepts such superpackets on write. The UDP backend sends checksum 0 (peers
must get finished packets) and its MTU is the wire's, so:

* :func:`segment` cuts what the kernel hands us into MSS-sized packets, as
  the kernel's TSO would: per segment the IPv4 total length, ID (the first's
  + index) and header checksum, or the IPv6 payload length, then the TCP
  sequence number and checksum; FIN and PSH only on the last segment, CWR
  only on the first. A packet with a
  partial checksum and no segmentation gets its checksum completed.
  :func:`tso_header` gives the header a TSO sender would pass for a given
  MTU: the userspace VXLAN receive path cuts a kernel VTEP's superpackets
  with it (:func:`overlayd.encap.ether.cut_superpacket`).
* :func:`coalesce` does on receive what the kernel's GRO would: consecutive
  segments of one flow (same addresses and ports, contiguous sequence, same
  ACK, window, options, TTL, TOS and DF; flags ACK or ACK|PSH, a PSH ends the
  run; every segment but the last of full size; at most 64 KB) become one
  superpacket with a GSO header (NEEDS_CSUM, the TCP checksum field holding
  the pseudo-header sum). Every inner IPv4 checksum is verified first, and the
  TCP checksum of every packet not ``verified`` by the wire: the kernel will
  not check a NEEDS_CSUM packet, and UDP checksum 0 protected nothing. A
  datagram that came in a UDP_GRO buffer is verified: the kernel's UDP GRO
  merges only datagrams whose (non-zero) UDP checksum it validated
  (``udp4_gro_receive``, ``udp_gro_receive_segment`` in
  net/ipv4/udp_offload.c), and that checksum covers the whole inner packet.
  A lone datagram may have had checksum 0: its TCP checksum is checked.
  UDP datagrams (``udp``, where the kernel takes UDP GSO writes: Linux 6.2's
  USO) are coalesced the same way, as one UDP_L4 GSO write that the kernel
  cuts back into the very datagrams (at the latest at the receiving socket,
  ``udp_rcv_segment``), so a flood of small datagrams crosses the forwarding
  path once per run instead of once per datagram: consecutive datagrams of
  one flow (same addresses, ports, TTL, TOS and DF; IPv4 IDs counting up by
  one, as the kernel's segmentation numbers them), every one but the last of
  the first one's size, none empty, none an IPv4 fragment, each with a UDP
  checksum (not 0: the kernel's segments carry one) that is right unless
  ``verified``; the header's checksum field holds the pseudo-header sum.
  Anything else goes alone with an empty header.

IPv6 (issue 17) takes the same paths with ``GSO_TCPV6``: TCP right behind
the fixed header (a packet with extension headers goes alone, unsegmented
and uncoalesced, as the kernel's GRO would not merge it either: its TSO
does not hand us one); no ID and no header checksum; a run also needs one
version/traffic class/flow label word, next header and hop limit (what
``ipv6_gro_receive`` compares). The TCP checksums use the IPv6
pseudo-header (RFC 8200 8.1).

On a tap (userspace VXLAN on the C engine) the same happens to Ethernet
frames: :func:`segment_frame` and :func:`coalesce_frames` wrap the two with
the 14-byte Ethernet header in front (the kernel's virtio offsets then count
from the frame's start).

Pure: bytes in, bytes out. The C engine runs the twin of each function; the
parity tests compare them vector by vector.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct

from . import ipv4, ipv6
from .drops import Drop

HEADER_LEN = 10
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 4, 5, 0x80
UDP_HEADER_LEN = 8
SUPER_MAX = 65535
GRO_MAX_SEGS = 64  # segments merged into one write, at most (the C writer's iovec array holds that many)
PROTO_TCP, PROTO_UDP = 6, 17
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80
_HDR = struct.Struct("=BBHHHH")  # the host's byte order, as a legacy tun uses


@dataclasses.dataclass(frozen=True)
class VnetHdr:
    """struct virtio_net_hdr."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                         self.csum_offset)

    @classmethod
    def unpack(cls, data: bytes) -> "VnetHdr":
        return cls(*_HDR.unpack_from(data))


NO_OFFLOAD = VnetHdr()
NO_OFFLOAD_HEADER = NO_OFFLOAD.pack()



def _with_ip_checksum(header: bytearray) -> bytearray:
    """``header`` (IPv4, then anything) with its IP header checksum recomputed."""
    header[10:12] = b"\0\0"
    header[10:12] = ipv4.internet_checksum(bytes(header[:(header[0] & 0x0F) * 4])).to_bytes(2, "big")
    return header


def check(pkt: bytes) -> Drop | None:
    """Why ``pkt`` is no packet to segment: :func:`.ipv6.check` for version 6, else :func:`.ipv4.check`."""
    return ipv6.check(pkt) if _is_v6(pkt) else ipv4.check(pkt)


def _is_v6(pkt: bytes) -> bool:
    return bool(pkt) and pkt[0] >> 4 == 6


def _ip_len(pkt: bytes) -> int:
    """The IP header's length of a checked packet (IPv6: the fixed header)."""
    return ipv6.HEADER_LEN if _is_v6(pkt) else (pkt[0] & 0x0F) * 4


def _total(pkt: bytes) -> int:
    """The length a checked packet says it has."""
    return ipv6.length(pkt) if _is_v6(pkt) else int.from_bytes(pkt[2:4], "big")


def _proto(pkt: bytes) -> int:
    """The protocol after the IP header (IPv6: the fixed header's next header)."""
    return pkt[6] if _is_v6(pkt) else pkt[9]


def _pseudo(ip: bytes, l4len: int) -> int:
    """The folded TCP/UDP pseudo-header sum for IP header ``ip`` and ``l4len`` bytes of L4."""
    if _is_v6(ip):
        return ipv6.pseudo_sum(ip[8:24], ip[24:40], l4len, ip[6])
    return ipv4.pseudo_sum(ip, l4len)


def _tso_type(pkt: bytes) -> int:
    return GSO_TCPV6 if _is_v6(pkt) else GSO_TCPV4


def _tcp_layout(pkt: bytes) -> tuple[int, int] | None:
    """(headers length, payload length) of a checked TCP packet we can segment, or None: TCP right
    behind the IP header, not an IPv4 fragment."""
    iphl, total = _ip_len(pkt), _total(pkt)
    if _proto(pkt) != PROTO_TCP or iphl + 20 > total:
        return None
    if not _is_v6(pkt) and int.from_bytes(pkt[6:8], "big") & 0x3FFF:
        return None
    thl = (pkt[iphl + 12] >> 4) * 4
    if thl < 20 or iphl + thl > total:
        return None
    return iphl + thl, total - iphl - thl


def tso_header(pkt: bytes, mtu: int) -> VnetHdr | None:
    """The header a TSO sender would pass with TCP packet ``pkt`` for :func:`segment` to cut it
    into packets of at most ``mtu`` bytes, or None when ``pkt`` is not one :func:`segment` can cut.

    ``pkt`` is a checked packet (:func:`check`). The MSS is ``mtu`` less the IP and TCP
    headers (options included), as the sender's own MSS for that MTU would be.
    """
    layout = _tcp_layout(pkt)
    if layout is None or layout[0] >= mtu:
        return None
    return VnetHdr(NEEDS_CSUM, _tso_type(pkt), layout[0], mtu - layout[0], _ip_len(pkt), 16)


def segment(hdr: VnetHdr, pkt: bytes) -> list[bytes] | Drop:
    """The packets to send for ``pkt`` read with ``hdr``, or why it is dropped."""
    bad = check(pkt)
    if bad is not None:
        return bad
    total, ihl = _total(pkt), _ip_len(pkt)
    if hdr.gso_type == GSO_NONE:
        if not hdr.flags & NEEDS_CSUM:
            return [pkt]
        at = hdr.csum_start + hdr.csum_offset
        if hdr.csum_start < ihl or at + 2 > total:
            return Drop.BAD_IP_HEADER
        c = ipv4.internet_checksum(pkt[hdr.csum_start:total])
        if c == 0 and _proto(pkt) == PROTO_UDP:
            c = 0xFFFF
        return [pkt[:at] + c.to_bytes(2, "big") + pkt[at + 2:]]
    layout = _tcp_layout(pkt)
    if hdr.gso_type & ~GSO_ECN != _tso_type(pkt) or hdr.gso_size == 0 or layout is None:
        return Drop.BAD_IP_HEADER
    hlen, payload = layout
    mss, v6 = hdr.gso_size, _is_v6(pkt)
    count = max(1, -(-payload // mss))
    ident, seq = int.from_bytes(pkt[4:6], "big"), int.from_bytes(pkt[ihl + 4:ihl + 8], "big")
    out = []
    for i in range(count):
        data = pkt[hlen + i * mss:min(hlen + payload, hlen + (i + 1) * mss)]
        ip = bytearray(pkt[:ihl])
        if v6:
            ip[4:6] = (hlen - ihl + len(data)).to_bytes(2, "big")
        else:
            ip[2:4] = (hlen + len(data)).to_bytes(2, "big")
            ip[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
            ip = _with_ip_checksum(ip)
        tcp = bytearray(pkt[ihl:hlen])
        tcp[4:8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        if i != count - 1:
            tcp[13] &= ~(FIN | PSH) & 0xFF
        if i != 0:
            tcp[13] &= ~CWR & 0xFF
        tcp[16:18] = b"\0\0"
        l4 = bytes(tcp) + data
        tcp[16:18] = (~ipv4.fold(_pseudo(bytes(ip), len(l4)) + ipv4.ones_sum(l4)) & 0xFFFF).to_bytes(2, "big")
        out.append(bytes(ip) + bytes(tcp) + data)
    return out


def _candidate(pkt: bytes, verified: bool, udp: bool) -> int:
    """The GSO type of the runs ``pkt`` may join, GSO_NONE when it goes alone: a plain TCP segment with
    data (IPv4 without options, or IPv6 with TCP right behind the fixed header), flags ACK or ACK|PSH;
    or when ``udp`` a UDP datagram with data right behind the IP header (not an IPv4 fragment), its
    UDP length the packet's, its checksum not 0. Its IPv4 header checksum must be right, and its L4
    checksum too unless ``verified`` (the UDP checksum that carried it covered it)."""
    if _is_v6(pkt):
        if len(pkt) < ipv6.HEADER_LEN + UDP_HEADER_LEN or ipv6.length(pkt) != len(pkt):
            return GSO_NONE
    elif len(pkt) < 20 + UDP_HEADER_LEN or pkt[0] != 0x45 or int.from_bytes(pkt[2:4], "big") != len(pkt) \
            or ipv4.ones_sum(pkt[:20]) != 0xFFFF:
        return GSO_NONE
    iphl = _ip_len(pkt)
    l4 = pkt[iphl:]
    if _proto(pkt) == PROTO_UDP:
        if not udp or len(l4) == UDP_HEADER_LEN or int.from_bytes(l4[4:6], "big") != len(l4) \
                or l4[6:8] == b"\0\0" or not _is_v6(pkt) and int.from_bytes(pkt[6:8], "big") & 0x3FFF:
            return GSO_NONE
        kind = GSO_UDP_L4
    else:
        layout = _tcp_layout(pkt)
        if layout is None or layout[1] == 0 or pkt[iphl + 13] & ~PSH != ACK:
            return GSO_NONE
        kind = _tso_type(pkt)
    return kind if verified or ipv4.fold(_pseudo(pkt, len(l4)) + ipv4.ones_sum(l4)) == 0xFFFF else GSO_NONE


def _headers_len(pkt: bytes) -> int:
    """The IP and L4 header bytes of a candidate."""
    return _ip_len(pkt) + UDP_HEADER_LEN if _proto(pkt) == PROTO_UDP else _tcp_layout(pkt)[0]


def _same_ip(head: bytes, pkt: bytes) -> bool:
    """The IP fields GRO compares: IPv4 TOS, TTL, DF and addresses; IPv6 the version/traffic
    class/flow label word, next header, hop limit and addresses."""
    if _is_v6(head):
        return head[0:4] == pkt[0:4] and head[6:40] == pkt[6:40]
    return (not _is_v6(pkt) and head[1] == pkt[1] and head[8] == pkt[8] and head[6] & 0x40 == pkt[6] & 0x40
            and head[12:20] == pkt[12:20])


def _extends(run: list[bytes], pkt: bytes, run_bytes: int) -> bool:
    """Whether candidate ``pkt``, of the run's GSO type, continues ``run`` (``run_bytes`` long)."""
    head, last = run[0], run[-1]
    iphl = _ip_len(head)
    hlen, qlen = _headers_len(head), len(pkt) - _headers_len(pkt)
    ht, lt, qt = head[iphl:], last[iphl:], pkt[iphl:]
    if not (_same_ip(head, pkt) and ht[0:4] == qt[0:4] and len(last) - hlen == len(head) - hlen
            and qlen <= len(head) - hlen and run_bytes + qlen <= SUPER_MAX):  # same ports, full segments
        return False
    if _proto(head) == PROTO_UDP:  # the kernel's segments count the IPv4 ID up from the first's
        return _is_v6(head) or int.from_bytes(pkt[4:6], "big") == (int.from_bytes(last[4:6], "big") + 1) & 0xFFFF
    thl = hlen - iphl
    return (not lt[13] & PSH and (qt[12] >> 4) * 4 == thl
            and ht[8:12] == qt[8:12] and ht[14:16] == qt[14:16] and ht[20:thl] == qt[20:thl]
            and int.from_bytes(qt[4:8], "big")
            == (int.from_bytes(lt[4:8], "big") + len(last) - hlen) & 0xFFFFFFFF)


def _join(run: list[bytes]) -> tuple[VnetHdr, bytes]:
    if len(run) == 1:
        return NO_OFFLOAD, run[0]
    head = run[0]
    iphl, hlen = _ip_len(head), _headers_len(head)
    body = b"".join(p[hlen:] for p in run)
    total = hlen + len(body)
    header = bytearray(head[:hlen])
    if _is_v6(head):
        header[4:6] = (total - iphl).to_bytes(2, "big")
    else:
        header[2:4] = total.to_bytes(2, "big")
        header = _with_ip_checksum(header)
    if _proto(head) == PROTO_UDP:
        header[iphl + 4:iphl + 6] = (total - iphl).to_bytes(2, "big")
        header[iphl + 6:iphl + 8] = _pseudo(bytes(header), total - iphl).to_bytes(2, "big")
        return VnetHdr(NEEDS_CSUM, GSO_UDP_L4, hlen, len(head) - hlen, iphl, 6), bytes(header) + body
    header[iphl + 13] |= run[-1][iphl + 13] & PSH
    header[iphl + 16:iphl + 18] = _pseudo(bytes(header), total - iphl).to_bytes(2, "big")
    return VnetHdr(NEEDS_CSUM, _tso_type(head), hlen, len(head) - hlen, iphl, 16), bytes(header) + body


def coalesce(pkts: list[bytes], verified: list[bool] | None = None, udp: bool = True) -> list[tuple[VnetHdr, bytes]]:
    """The writes for accepted packets ``pkts`` (in order): superpackets where GRO would merge, and
    with ``udp`` UDP runs too (see the module's note). ``verified[i]``: packet i came in a UDP_GRO
    buffer, its UDP checksum validated by the kernel (None: none did)."""
    verified = verified or [False] * len(pkts)
    out, i = [], 0
    while i < len(pkts):
        run, run_bytes = [pkts[i]], len(pkts[i])
        kind = _candidate(pkts[i], verified[i], udp)
        if kind != GSO_NONE:
            while i + len(run) < len(pkts) and len(run) < GRO_MAX_SEGS \
                    and _candidate(nxt := pkts[i + len(run)], verified[i + len(run)], udp) == kind \
                    and _extends(run, nxt, run_bytes):
                run_bytes += len(nxt) - _headers_len(nxt)
                run.append(nxt)
        out.append(_join(run))
        i += len(run)
    return out


ETH_LEN = 14  # a tap frame's Ethernet header (ether.ETH_HEADER_LEN: not imported, ether imports this module)


def segment_frame(hdr: VnetHdr, frame: bytes) -> list[bytes] | Drop:
    """:func:`segment` for an Ethernet frame read from a vnet_hdr tap (one :func:`.ether.tap_outbound`
    accepted): ``hdr.csum_start`` counts from the frame's start (a start inside the Ethernet header is
    refused like one inside the IP header), and every segment keeps the frame's Ethernet header."""
    inner = dataclasses.replace(hdr, csum_start=max(0, hdr.csum_start - ETH_LEN))
    segs = segment(inner, frame[ETH_LEN:])
    return segs if isinstance(segs, Drop) else [frame[:ETH_LEN] + s for s in segs]


def coalesce_frames(frames: list[bytes], verified: list[bool] | None = None,
                    udp: bool = True) -> list[tuple[VnetHdr, bytes]]:
    """:func:`coalesce` for accepted Ethernet frames (at least 14 bytes each) to a vnet_hdr tap: a run
    also needs one Ethernet header throughout (the kernel's GRO compares it too), which leads the
    superpacket; its header's csum_start and hdr_len then count from the frame's start."""
    verified = verified or [False] * len(frames)
    out = []
    for eth, group in itertools.groupby(zip(frames, verified), key=lambda fv: fv[0][:ETH_LEN]):
        group = list(group)
        for hdr, pkt in coalesce([f[ETH_LEN:] for f, _ in group], [v for _, v in group], udp):
            if hdr.gso_type != GSO_NONE:
                hdr = dataclasses.replace(hdr, hdr_len=hdr.hdr_len + ETH_LEN, csum_start=hdr.csum_start + ETH_LEN)
            out.append((hdr, eth + pkt))
    return out
