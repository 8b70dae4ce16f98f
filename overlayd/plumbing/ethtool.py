"""Transmit checksum offload, through the SIOCETHTOOL ioctl (no ethtool binary needed).

With it on (the kernel's default), the kernel leaves the inner TCP/UDP
checksum of what a VXLAN device sends for "the hardware" to fill in, and
sends TCP as GSO superpackets for it to cut; on a veth or bridge underlay
(containers, this project's lab) no hardware ever does. A kernel peer trusts
the offload marks it received and never notices; a userspace peer reads the
raw bytes: ours completes the checksums and cuts the superpackets (see
:mod:`overlayd.encap.ether`), so the kernel VXLAN backend leaves offload on
everywhere (see :mod:`overlayd.backend.vxlan`). flannel documents turning it
off ("ethtool -K flannel.1 tx-checksum-ip-generic off") where a kernel
corrupts checksums behind NAT; operators also do for receivers that cannot
take partial checksums: 3-5x the cost in throughput between kernel nodes.

``python -m overlayd.plumbing.ethtool DEV [on|off]`` prints (or sets) it
where no ethtool binary is installed (scripts/bench, the tests, operators).
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import sys

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


def main(argv: list[str]) -> int:
    """``DEV``: print ``on`` or ``off``; ``DEV on|off``: set it. Exit 2 on bad usage, 1 on failure."""
    if len(argv) not in (1, 2) or argv[1:] not in ([], ["on"], ["off"]):
        print("usage: python -m overlayd.plumbing.ethtool DEV [on|off]", file=sys.stderr)
        return 2
    try:
        if len(argv) == 2:
            set_tx_checksum_offload(argv[0], argv[1] == "on")
        print("on" if tx_checksum_offload(argv[0]) else "off")
    except PlumbingError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
