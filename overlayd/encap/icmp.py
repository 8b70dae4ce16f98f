"""ICMP destination unreachable for packets to subnets nobody leases, rate-limited.

The answer's source is the unreachable destination itself. flannel's UDP
proxy used tun0's own address, which the sending host then drops as a martian
(rp_filter), so the sender never learns anything; answering "from" the
destination makes the error arrive like one from a router next to it.
"""

from __future__ import annotations

import struct

from . import ipv4

TYPE_DEST_UNREACHABLE = 3
CODE_HOST_UNREACHABLE = 1
_ERROR_TYPES = {3, 4, 5, 11, 12}  # never answer an ICMP error with one (RFC 1122 3.2.2)


def dest_unreachable(pkt: bytes, code: int = CODE_HOST_UNREACHABLE) -> bytes | None:
    """The ICMP error answering the checked IPv4 packet ``pkt``, or None when none may be sent.

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
                         pkt[16:20], pkt[12:16])
    header = header[:10] + struct.pack("!H", ipv4.internet_checksum(header)) + header[12:]
    return header + body


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
