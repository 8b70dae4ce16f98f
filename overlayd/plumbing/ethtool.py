"""Transmit checksum offload, through the SIOCETHTOOL ioctl (no ethtool binary needed).

Why the kernel VXLAN backend turns it off on its device: with it on, the
kernel leaves the inner TCP/UDP checksum for "the hardware" to fill in, and
on a veth or bridge underlay (containers, this project's lab) no hardware
ever does: the frame leaves with a partial inner checksum. A kernel peer
trusts the offload flag it received and never notices; a userspace peer
(or a VM's NIC in between) reads the raw bytes and delivers a segment the
pod then drops, so pings work and TCP stalls. flannel's users meet this as
"ethtool -K flannel.1 tx-checksum-ip-generic off"; we do it on setup.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct

from ..errors import PlumbingError

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17


def _ethtool_value(dev: str, cmd: int, value: int = 0) -> int:
    buf = array.array("I", [cmd, value])
    ifreq = struct.pack("16sP", dev.encode(), buf.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s, SIOCETHTOOL, ifreq)
        except OSError as exc:
            raise PlumbingError(f"ethtool on {dev}: {exc.strerror}") from None
    return buf[1]


def tx_checksum_offload(dev: str) -> bool:
    """Whether ``dev`` offloads transmit checksums."""
    return bool(_ethtool_value(dev, ETHTOOL_GTXCSUM))


def set_tx_checksum_offload(dev: str, enabled: bool) -> None:
    """Turn transmit checksum offload on ``dev`` on or off (no-op when already so)."""
    if tx_checksum_offload(dev) != enabled:
        _ethtool_value(dev, ETHTOOL_STXCSUM, int(enabled))
