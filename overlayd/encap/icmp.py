"""ICMP destination unreachable for packets to subnets nobody leases, rate-limited.

The answer comes from the node itself: the gateway address of its subnet
(``.1``, which cni0 carries and the pods route through), as a router's answer
would. Design history: flannel's UDP proxy used tun0's own address, which
the kernel receiving it from tun0 drops as a martian (rp_filter); our first
answer came "from" the unreachable destination itself, which arrives but
tells the sender the destination host answered (``From 10.244.9.9 ...
Destination Host Unreachable``: a traceroute or an operator reading it sees
the destination, not the node that gave up). ``.1`` is a local address too,
so the userspace backends set ``accept_local`` on their device: the kernel
then takes the answer from tun0/the tap (rp_filter is loose there). Peers
cannot use that to send us our own addresses: :func:`.receive.admit` refuses
every inner source outside the sender's own leases first.

IPv6 (issue 17, RFC 4443): the same answer as ICMPv6 Destination Unreachable
(type 1, code 0: no route to destination) from the node's IPv6 gateway
(:func:`gateway6`, ``subnet6[1]``, cni0's), and Packet Too Big (type 2, the
tunnel MTU) for a packet over the tunnel MTU: IPv6 routers never fragment,
so without it path MTU discovery black-holes large transfers. An ICMPv6 error
quotes as much of the invoking packet as fits in 1280 bytes, the IPv6
minimum MTU, and is never sent for an ICMPv6 error, nor from or to an
address that names no single node (unspecified or multicast source; a
multicast destination, except for Packet Too Big).
"""

from __future__ import annotations

import struct

from . import ipv4, ipv6

TYPE_DEST_UNREACHABLE = 3
CODE_HOST_UNREACHABLE = 1
_ERROR_TYPES = {3, 4, 5, 11, 12}  # never answer an ICMP error with one (RFC 1122 3.2.2)
TYPE6_DEST_UNREACHABLE = 1
CODE6_NO_ROUTE = 0
TYPE6_PACKET_TOO_BIG = 2
MIN_MTU6 = 1280  # an ICMPv6 error is at most this long (RFC 4443 2.4 (c))


def gateway(subnet_int: int) -> bytes:
    """The node's own address in its subnet (network address ``subnet_int`` + 1, cni0's): an answer's source."""
    return ((subnet_int + 1) & 0xFFFFFFFF).to_bytes(4, "big")


def dest_unreachable(pkt: bytes, source: bytes, code: int = CODE_HOST_UNREACHABLE) -> bytes | None:
    """The ICMP error answering the checked IPv4 packet ``pkt``, from address ``source`` (4 bytes: the
    node's, :func:`gateway`), or None when none may be sent.

    None for ICMP errors, non-initial fragments and broadcast/multicast
    sources, which RFC 1122 forbids answering.
    """
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[9] == ipv4.PROTO_ICMP and len(pkt) > ihl and pkt[ihl] in _ERROR_TYPES:
        return None
    if ((pkt[6] & 0x1F) << 8 | pkt[7]) != 0:  # fragment offset
        return None
    if pkt[12] >= 224 or pkt[12:16] == b"\xff\xff\xff\xff" or pkt[12:16] == b"\x00\x00\x00\x00":
        return None
    quoted = pkt[:ihl + 8]
    body = struct.pack("!BBHI", TYPE_DEST_UNREACHABLE, code, 0, 0) + quoted
    body = body[:2] + struct.pack("!H", ipv4.internet_checksum(body)) + body[4:]
    total = ipv4.HEADER_LEN + len(body)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, total, 0, 0, 64, ipv4.PROTO_ICMP, 0,
                         source, pkt[12:16])
    header = header[:10] + struct.pack("!H", ipv4.internet_checksum(header)) + header[12:]
    return header + body


def gateway6(subnet6_int: int) -> bytes:
    """The node's own address in its IPv6 subnet (network address + 1, cni0's): an ICMPv6 answer's source."""
    return ((subnet6_int + 1) & ((1 << 128) - 1)).to_bytes(16, "big")


def _icmp6_error(pkt: bytes, source: bytes, type_: int, code: int, word: int, to_multicast: bool) -> bytes | None:
    """The ICMPv6 error ``type_``/``code`` (its 4-byte field ``word``) answering checked IPv6 packet
    ``pkt`` from ``source``, or None when RFC 4443 2.4 (e) forbids one (``to_multicast``: a packet to
    a multicast group may be answered)."""
    if pkt[6] == ipv6.PROTO_ICMPV6 and len(pkt) > ipv6.HEADER_LEN and pkt[ipv6.HEADER_LEN] < 128:
        return None  # an ICMPv6 error (types 0-127); a later extension header is not looked through
    if pkt[8] == 0xFF or pkt[8:24] == bytes(16):
        return None
    if pkt[24] == 0xFF and not to_multicast:
        return None
    quoted = pkt[:min(ipv6.length(pkt), MIN_MTU6 - ipv6.HEADER_LEN - 8)]
    body = struct.pack("!BBHI", type_, code, 0, word) + quoted
    dst = pkt[8:24]
    csum = ~ipv4.fold(ipv4.ones_sum(body) + ipv6.pseudo_sum(source, dst, len(body), ipv6.PROTO_ICMPV6)) & 0xFFFF
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), ipv6.PROTO_ICMPV6, 64, source, dst)
    return header + body


def dest_unreachable6(pkt: bytes, source: bytes) -> bytes | None:
    """ICMPv6 Destination Unreachable, no route (type 1 code 0), answering the checked IPv6 packet
    ``pkt`` from ``source`` (16 bytes: the node's, :func:`gateway6`), or None when none may be sent."""
    return _icmp6_error(pkt, source, TYPE6_DEST_UNREACHABLE, CODE6_NO_ROUTE, 0, to_multicast=False)


def packet_too_big(pkt: bytes, source: bytes, mtu: int) -> bytes | None:
    """ICMPv6 Packet Too Big (type 2) carrying ``mtu``, answering the checked IPv6 packet ``pkt`` from
    ``source``, or None when none may be sent."""
    return _icmp6_error(pkt, source, TYPE6_PACKET_TOO_BIG, 0, mtu, to_multicast=True)


class RateLimiter:
    """A token bucket: ``rate`` events a second on average, bursts up to ``burst``.

    The caller passes the time, so this stays pure and testable.
    """

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        """Spend a token if one is left at time ``now``."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
