"""The few IPv6 header facts the data plane needs (issue 17): the fixed header only.

The data plane routes an IPv6 packet by its fixed header alone: the
destination picks the peer, the source is checked against the sender's
leases, the payload length against the bytes held. Extension headers are
payload to a tunnel, as to a router that does not process them. Jumbograms
(payload length 0 with a Hop-by-Hop header) do not fit a tunnel datagram and
are refused as a bad header.
"""

from __future__ import annotations

from . import ipv4
from .drops import Drop

HEADER_LEN = 40
PROTO_HOP_BY_HOP = 0
PROTO_ICMPV6 = 58


def check(pkt: bytes) -> Drop | None:
    """Why ``pkt`` is not a usable IPv6 packet, or None if it is.

    Version 6, the whole fixed header, a payload length that fits the bytes
    held (trailing bytes are fine, as for IPv4), and not a jumbogram.
    """
    if pkt and pkt[0] >> 4 != 6:
        return Drop.NOT_IPV4
    if len(pkt) < HEADER_LEN:
        return Drop.TRUNCATED
    payload = (pkt[4] << 8) | pkt[5]
    if payload == 0 and pkt[6] == PROTO_HOP_BY_HOP:
        return Drop.BAD_IP_HEADER
    if HEADER_LEN + payload > len(pkt):
        return Drop.TRUNCATED
    return None


def length(pkt: bytes) -> int:
    """The length a checked packet says it has (fixed header and payload)."""
    return HEADER_LEN + ((pkt[4] << 8) | pkt[5])


def src_int(pkt: bytes) -> int:
    """The source address of a checked packet, as an integer."""
    return int.from_bytes(pkt[8:24], "big")


def dst_int(pkt: bytes) -> int:
    """The destination address of a checked packet, as an integer."""
    return int.from_bytes(pkt[24:40], "big")


def pseudo_sum(src: bytes, dst: bytes, l4len: int, proto: int) -> int:
    """The folded sum of the upper-layer pseudo-header (RFC 8200 8.1) for ``l4len`` bytes of ``proto``."""
    return ipv4.fold(ipv4.ones_sum(src + dst) + (l4len >> 16) + (l4len & 0xFFFF) + proto)
