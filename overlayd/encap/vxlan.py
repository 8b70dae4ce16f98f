"""The VXLAN header (RFC 7348 section 5).

::

    flags (8: only I = 0x08) | reserved (24) | VNI (24) | reserved (8)

Sending sets I and zero reserved bits; receiving requires I and ignores the
reserved bits, as the RFC says.
"""

from __future__ import annotations

import struct

from ..errors import EncapError
from .drops import Drop
from .ether import ETH_HEADER_LEN

HEADER_LEN = 8
FLAG_I = 0x08
VNI_MAX = (1 << 24) - 1
_HEADER = struct.Struct("!B3xI")


def pack_header(vni: int) -> bytes:
    """The 8-byte header for ``vni`` (0..2^24-1), I flag set."""
    if not 0 <= vni <= VNI_MAX:
        raise EncapError(f"VNI {vni} is outside 0..{VNI_MAX}")
    return _HEADER.pack(FLAG_I, vni << 8)


def unpack_header(data: bytes) -> tuple[int, int]:
    """(flags, VNI) from the first 8 bytes of ``data``."""
    if len(data) < HEADER_LEN:
        raise EncapError(f"VXLAN header needs {HEADER_LEN} bytes, got {len(data)}")
    flags, word = _HEADER.unpack_from(data)
    return flags, word >> 8


def encapsulate(frame: bytes, vni: int) -> bytes:
    """The UDP payload carrying Ethernet ``frame`` on ``vni``."""
    return pack_header(vni) + frame


def decapsulate(dgram: bytes, vni: int) -> bytes | Drop:
    """The Ethernet frame inside ``dgram`` if it is VXLAN on ``vni``, else why not."""
    if len(dgram) < HEADER_LEN + ETH_HEADER_LEN:
        return Drop.TRUNCATED
    flags, got = _HEADER.unpack_from(dgram)
    if not flags & FLAG_I:
        return Drop.BAD_VXLAN
    if got >> 8 != vni:
        return Drop.WRONG_VNI
    return dgram[HEADER_LEN:]
