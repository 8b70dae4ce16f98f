"""Superpackets on the tun: the reference for ``overlayd/csrc/gso.c``.

A tun opened with ``IFF_VNET_HDR`` puts a 10-byte ``virtio_net_hdr`` in front
of every packet; with ``TUNSETOFFLOAD`` (CSUM, TSO4, TSO6) the kernel hands
us up to 64 KB of one TCP flow in one read, with a partial checksum, and
accepts such superpackets on write. The UDP backend sends checksum 0 (peers
must get finished packets) and its MTU is the wire's, so:

* :func:`segment` cuts what the kernel hands us into MSS-sized IPv4 packets,
  as the kernel's TSO would: per segment the IP total length, ID (the first's
  + index) and header checksum, the TCP sequence number and checksum; FIN and
  PSH only on the last segment, CWR only on the first. A packet with a
  partial checksum and no segmentation gets its checksum completed.
  :func:`tso_header` gives the header a TSO sender would pass for a given
  MTU: the userspace VXLAN receive path cuts a kernel VTEP's superpackets
  with it (:func:`overlayd.encap.ether.cut_superpacket`).
* :func:`coalesce` does on receive what the kernel's GRO would: consecutive
  segments of one flow (same addresses and ports, contiguous sequence, same
  ACK, window, options, TTL, TOS and DF; flags ACK or ACK|PSH, a PSH ends the
  run; every segment but the last of full size; at most 64 KB) become one
  superpacket with a GSO header (NEEDS_CSUM, the TCP checksum field holding
  the pseudo-header sum). Every inner IP checksum is verified first, and the
  TCP checksum of every packet not ``verified`` by the wire: the kernel will
  not check a NEEDS_CSUM packet, and UDP checksum 0 protected nothing. A
  datagram that came in a UDP_GRO buffer is verified: the kernel's UDP GRO
  merges only datagrams whose (non-zero) UDP checksum it validated
  (``udp4_gro_receive``, ``udp_gro_receive_segment`` in
  net/ipv4/udp_offload.c), and that checksum covers the whole inner packet.
  A lone datagram may have had checksum 0: its TCP checksum is checked.
  Anything else goes alone with an empty header.

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

from . import ipv4
from .drops import Drop

HEADER_LEN = 10
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0, 1, 4, 0x80
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


def _tcp_layout(pkt: bytes) -> tuple[int, int] | None:
    """(headers length, payload length) of an IPv4 TCP packet we can segment, or None."""
    ihl, total = (pkt[0] & 0x0F) * 4, int.from_bytes(pkt[2:4], "big")
    if pkt[9] != PROTO_TCP or int.from_bytes(pkt[6:8], "big") & 0x3FFF or ihl + 20 > total:
        return None
    thl = (pkt[ihl + 12] >> 4) * 4
    if thl < 20 or ihl + thl > total:
        return None
    return ihl + thl, total - ihl - thl


def tso_header(pkt: bytes, mtu: int) -> VnetHdr | None:
    """The header a TSO sender would pass with TCP/IPv4 packet ``pkt`` for :func:`segment` to cut it
    into packets of at most ``mtu`` bytes, or None when ``pkt`` is not one :func:`segment` can cut.

    ``pkt`` is a checked IPv4 packet (:func:`.ipv4.check`). The MSS is ``mtu`` less the IP and TCP
    headers (options included), as the sender's own MSS for that MTU would be.
    """
    layout = _tcp_layout(pkt)
    if layout is None or layout[0] >= mtu:
        return None
    return VnetHdr(NEEDS_CSUM, GSO_TCPV4, layout[0], mtu - layout[0], (pkt[0] & 0x0F) * 4, 16)


def segment(hdr: VnetHdr, pkt: bytes) -> list[bytes] | Drop:
    """The packets to send for ``pkt`` read with ``hdr``, or why it is dropped."""
    bad = ipv4.check(pkt)
    if bad is not None:
        return bad
    total = int.from_bytes(pkt[2:4], "big")
    if hdr.gso_type == GSO_NONE:
        if not hdr.flags & NEEDS_CSUM:
            return [pkt]
        at = hdr.csum_start + hdr.csum_offset
        if hdr.csum_start < (pkt[0] & 0x0F) * 4 or at + 2 > total:
            return Drop.BAD_IP_HEADER
        c = ipv4.internet_checksum(pkt[hdr.csum_start:total])
        if c == 0 and pkt[9] == PROTO_UDP:
            c = 0xFFFF
        return [pkt[:at] + c.to_bytes(2, "big") + pkt[at + 2:]]
    layout = _tcp_layout(pkt)
    if hdr.gso_type & ~GSO_ECN != GSO_TCPV4 or hdr.gso_size == 0 or layout is None:
        return Drop.BAD_IP_HEADER
    hlen, payload = layout
    ihl, mss = (pkt[0] & 0x0F) * 4, hdr.gso_size
    count = max(1, -(-payload // mss))
    ident, seq = int.from_bytes(pkt[4:6], "big"), int.from_bytes(pkt[ihl + 4:ihl + 8], "big")
    out = []
    for i in range(count):
        data = pkt[hlen + i * mss:min(hlen + payload, hlen + (i + 1) * mss)]
        ip = bytearray(pkt[:ihl])
        ip[2:4] = (hlen + len(data)).to_bytes(2, "big")
        ip[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
        tcp = bytearray(pkt[ihl:hlen])
        tcp[4:8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        if i != count - 1:
            tcp[13] &= ~(FIN | PSH) & 0xFF
        if i != 0:
            tcp[13] &= ~CWR & 0xFF
        tcp[16:18] = b"\0\0"
        ip = _with_ip_checksum(ip)
        l4 = bytes(tcp) + data
        tcp[16:18] = (~ipv4.fold(ipv4.pseudo_sum(bytes(ip), len(l4)) + ipv4.ones_sum(l4)) & 0xFFFF).to_bytes(2, "big")
        out.append(bytes(ip) + bytes(tcp) + data)
    return out


def _candidate(pkt: bytes, verified: bool) -> bool:
    """A plain IPv4 TCP segment with data, flags ACK or ACK|PSH, its IP checksum right and its TCP
    checksum too unless ``verified`` (the UDP checksum that carried it covered it)."""
    if len(pkt) < 40 or pkt[0] != 0x45 or int.from_bytes(pkt[2:4], "big") != len(pkt):
        return False
    layout = _tcp_layout(pkt)
    if layout is None or layout[1] == 0 or pkt[33] & ~PSH != ACK or ipv4.ones_sum(pkt[:20]) != 0xFFFF:
        return False
    l4 = pkt[20:]
    return verified or ipv4.fold(ipv4.pseudo_sum(pkt, len(l4)) + ipv4.ones_sum(l4)) == 0xFFFF


def _extends(run: list[bytes], pkt: bytes, run_bytes: int) -> bool:
    head, last = run[0], run[-1]
    thl = (head[32] >> 4) * 4
    mss = len(head) - 20 - thl
    return (not last[33] & PSH and len(last) - 20 - thl == mss and (pkt[32] >> 4) * 4 == thl
            and len(pkt) - 20 - thl <= mss and run_bytes + len(pkt) - 20 - thl <= SUPER_MAX
            and head[1] == pkt[1] and head[8] == pkt[8] and head[6] & 0x40 == pkt[6] & 0x40
            and head[12:20] == pkt[12:20] and head[20:24] == pkt[20:24]
            and head[28:32] == pkt[28:32] and head[34:36] == pkt[34:36] and head[40:20 + thl] == pkt[40:20 + thl]
            and int.from_bytes(pkt[24:28], "big") ==
            (int.from_bytes(last[24:28], "big") + len(last) - 20 - thl) & 0xFFFFFFFF)


def _join(run: list[bytes]) -> tuple[VnetHdr, bytes]:
    if len(run) == 1:
        return NO_OFFLOAD, run[0]
    head = run[0]
    hlen = 20 + (head[32] >> 4) * 4
    body = b"".join(p[hlen:] for p in run)
    total = hlen + len(body)
    header = bytearray(head[:hlen])
    header[2:4] = total.to_bytes(2, "big")
    header = _with_ip_checksum(header)
    header[33] |= run[-1][33] & PSH
    header[36:38] = ipv4.pseudo_sum(bytes(header), total - 20).to_bytes(2, "big")
    return VnetHdr(NEEDS_CSUM, GSO_TCPV4, hlen, len(head) - hlen, 20, 16), bytes(header) + body


def coalesce(pkts: list[bytes], verified: list[bool] | None = None) -> list[tuple[VnetHdr, bytes]]:
    """The writes for accepted packets ``pkts`` (in order): superpackets where GRO would merge.
    ``verified[i]``: packet i came in a UDP_GRO buffer, its UDP checksum validated by the kernel
    (None: none did)."""
    verified = verified or [False] * len(pkts)
    out, i = [], 0
    while i < len(pkts):
        run, run_bytes = [pkts[i]], len(pkts[i])
        if _candidate(pkts[i], verified[i]):
            while i + len(run) < len(pkts) and len(run) < GRO_MAX_SEGS \
                    and _candidate(nxt := pkts[i + len(run)], verified[i + len(run)]) \
                    and _extends(run, nxt, run_bytes):
                run_bytes += len(nxt) - 20 - (nxt[32] >> 4) * 4
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


def coalesce_frames(frames: list[bytes], verified: list[bool] | None = None) -> list[tuple[VnetHdr, bytes]]:
    """:func:`coalesce` for accepted Ethernet frames (at least 14 bytes each) to a vnet_hdr tap: a run
    also needs one Ethernet header throughout (the kernel's GRO compares it too), which leads the
    superpacket; its header's csum_start and hdr_len then count from the frame's start."""
    verified = verified or [False] * len(frames)
    out = []
    for eth, group in itertools.groupby(zip(frames, verified), key=lambda fv: fv[0][:ETH_LEN]):
        group = list(group)
        for hdr, pkt in coalesce([f[ETH_LEN:] for f, _ in group], [v for _, v in group]):
            if hdr.gso_type != GSO_NONE:
                hdr = dataclasses.replace(hdr, hdr_len=hdr.hdr_len + ETH_LEN, csum_start=hdr.csum_start + ETH_LEN)
            out.append((hdr, eth + pkt))
    return out
