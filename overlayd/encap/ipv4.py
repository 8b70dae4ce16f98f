"""The few IPv4 header facts the data plane needs, and the Internet checksum."""

from __future__ import annotations

import struct

from .drops import Drop

HEADER_LEN = 20
PROTO_ICMP = 1


def fold(total: int) -> int:
    """Fold a ones'-complement sum to 16 bits (end-around carry), not complemented."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes) -> int:
    """The ones'-complement sum of ``data``, folded, not complemented."""
    return ~internet_checksum(data) & 0xFFFF


def pseudo_sum(pkt: bytes, l4len: int) -> int:
    """The folded sum of IPv4 packet ``pkt``'s TCP/UDP pseudo-header for ``l4len`` bytes of L4."""
    return fold(ones_sum(pkt[12:20]) + pkt[9] + l4len)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones'-complement sum of ``data`` (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    return ~fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def check(pkt: bytes) -> Drop | None:
    """Why ``pkt`` is not a usable IPv4 packet, or None if it is.

    Checks what forwarding relies on: version 4, a sane IHL, and a total
    length that fits both the header and the bytes we hold. The header
    checksum is left to the receiving kernel, as a router would.
    """
    if len(pkt) < HEADER_LEN:
        return Drop.NOT_IPV4 if pkt and pkt[0] >> 4 != 4 else Drop.TRUNCATED
    if pkt[0] >> 4 != 4:
        return Drop.NOT_IPV4
    ihl = (pkt[0] & 0x0F) * 4
    total = (pkt[2] << 8) | pkt[3]
    if ihl < HEADER_LEN or total < ihl:
        return Drop.BAD_IP_HEADER
    if total > len(pkt):
        return Drop.TRUNCATED
    return None


def src_int(pkt: bytes) -> int:
    """The source address of a checked packet, as an integer."""
    return int.from_bytes(pkt[12:16], "big")


def dst_int(pkt: bytes) -> int:
    """The destination address of a checked packet, as an integer."""
    return int.from_bytes(pkt[16:20], "big")
