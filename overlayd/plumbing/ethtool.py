"""Transmit checksum offload, through the SIOCETHTOOL ioctl (no ethtool binary needed).

With it on, the kernel leaves the inner TCP/UDP checksum of what a VXLAN
device sends for "the hardware" to fill in, and on a veth or bridge underlay
(containers, this project's lab) no hardware ever does: the frame leaves
with a partial inner checksum. A kernel peer trusts the offload flag it
received and never notices; a userspace peer reads the raw bytes. flannel's
users meet this as "ethtool -K flannel.1 tx-checksum-ip-generic off", at
3-5x the cost in throughput. The kernel VXLAN backend keeps it on where that
is safe (see :mod:`overlayd.backend.vxlan`).

Whether that is safe depends on the underlay: :func:`underlay_completes_checksums`.

``python -m overlayd.plumbing.ethtool DEV [on|off]`` prints (or sets) it
where no ethtool binary is installed (scripts/bench, the tests, operators).
"""

from __future__ import annotations

import array
import fcntl
import os
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


# Paravirtual NIC drivers: they can hand a partial checksum (virtio: and a GSO superpacket) on
# to another guest of the same host as they got it, as veth does between namespaces.
PARAVIRTUAL_DRIVERS = frozenset({"virtio_net", "vif", "hv_netvsc", "vmxnet3"})
MAX_STACK = 8  # device stacking depth followed (vlan on bond on NICs is 2)


def underlay_completes_checksums(dev: str, sysfs: str = "/sys/class/net", depth: int = 0) -> bool:
    """Whether everything sent through ``dev`` leaves this kernel with complete checksums, cut to MTU.

    True for a NIC on a bus (PCI, USB, ...) that is not paravirtual: its
    hardware (or the kernel's software fallback, when it lacks the offload)
    finishes partial checksums and segments GSO packets. A stacked device
    (bond, VLAN, bridge, macvlan: ``lower_*`` links in sysfs) qualifies when
    every device below it does. False for anything else: veth, a bridge with
    a veth port, tun/tap, paravirtual NICs, an unknown device.
    """
    base = os.path.join(sysfs, dev)
    lowers = [n[len("lower_"):] for n in _listdir(base) if n.startswith("lower_")]
    if lowers:
        return depth < MAX_STACK and all(underlay_completes_checksums(l, sysfs, depth + 1) for l in lowers)
    driver = os.path.join(base, "device", "driver")
    return os.path.exists(driver) and os.path.basename(os.path.realpath(driver)) not in PARAVIRTUAL_DRIVERS


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


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
