"""Open tun/tap devices with the TUNSETIFF ioctl (no PI header).

Done directly rather than through python-pytun: it is a dozen lines, and
python-pytun raises its own ``pytun.Error`` (errno 11) instead of
BlockingIOError on an empty non-blocking read, which the forwarding loop
would have to special-case on every wake-up. The fd is non-persistent: the
device goes away when overlayd exits and is recreated on start; while it is
gone, the guard route (:mod:`.guard`) keeps pod traffic from leaving in clear.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from ..errors import PlumbingError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6  # what an offload device hands us: TCP superpackets
IFF_VNET_HDR = 0x4000
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
IFNAMSIZ = 16


def _open(name: str, flags: int) -> int:
    if not name or len(name) >= IFNAMSIZ:
        raise PlumbingError(f"bad device name {name!r}")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise PlumbingError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise PlumbingError(f"cannot create {name}: {exc.strerror}") from None
    return fd


def _open_offloaded(name: str, flags: int, vnet_hdr: bool, offload: bool) -> int:
    """:func:`_open` with IFF_VNET_HDR when ``vnet_hdr``, then TUNSETOFFLOAD (CSUM, TSO4, TSO6) when ``offload``."""
    if offload and not vnet_hdr:
        raise ValueError("tun/tap offloads need vnet_hdr")
    fd = _open(name, flags | (IFF_VNET_HDR if vnet_hdr else 0))
    try:
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except OSError as exc:
        os.close(fd)
        raise PlumbingError(f"cannot enable offloads on {name}: {exc.strerror}") from None
    return fd


def takes_udp_superpackets(fd: int) -> bool:
    """Whether the kernel takes UDP superpackets (VIRTIO_NET_HDR_GSO_UDP_L4 writes) on ``fd``, a tun or
    tap opened with ``offload``: whether TUNSETOFFLOAD knows USO4 and USO6 (Linux >= 6.2), probed the
    way the kernel means new flags to be probed (it refuses unknown ones, EINVAL). The offloads are
    then set back to :data:`OFFLOADS`: the engine does not segment UDP superpackets, so reads must not
    hand it any. False for anything that is no such device."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS | TUN_F_USO4 | TUN_F_USO6)
    except OSError:
        return False
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    return True


def _ifreq(name: str, what: str, request: int, payload: bytes, verb: str = "set") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return fcntl.ioctl(s, request, struct.pack("16s", name.encode()) + payload)
        except OSError as exc:
            raise PlumbingError(f"cannot {verb} {what} on {name}: {exc.strerror}") from None


def _configured(fd: int, name: str, mtu: int, mac: str | None = None) -> int:
    """``fd`` (device ``name``) once its MAC (a tap's, when given) and ``mtu`` are set; on failure
    it is closed, and with it the non-persistent device, before the error is raised."""
    try:
        if mac is not None:
            hwaddr = struct.pack("H", ARPHRD_ETHER) + bytes.fromhex(mac.replace(":", ""))
            _ifreq(name, f"MAC {mac}", SIOCSIFHWADDR, hwaddr.ljust(24, b"\0"))
        _ifreq(name, f"MTU {mtu}", SIOCSIFMTU, struct.pack("i", mtu).ljust(24, b"\0"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_tun(name: str, mtu: int, vnet_hdr: bool = False, offload: bool = False) -> int:
    """A tun device ``name`` (IFF_TUN|IFF_NO_PI) with ``mtu``; returns its fd.

    ``vnet_hdr``: every read and write starts with a 10-byte virtio_net_hdr
    (IFF_VNET_HDR). ``offload`` (needs ``vnet_hdr``): the kernel may hand us
    TCP superpackets with partial checksums and take them back
    (TUNSETOFFLOAD: CSUM, TSO4, TSO6); only a reader that segments them
    (the C engine) may ask for it.
    """
    return _configured(_open_offloaded(name, IFF_TUN, vnet_hdr, offload), name, mtu)


def open_tap(name: str, mac: str, mtu: int, vnet_hdr: bool = False, offload: bool = False) -> int:
    """A tap device ``name`` with MAC ``mac`` and ``mtu``; returns its fd.

    ``vnet_hdr`` and ``offload`` as for :func:`open_tun`: reads and writes
    then carry Ethernet frames behind the virtio header, whose checksum
    offsets count from the frame's start.
    """
    return _configured(_open_offloaded(name, IFF_TAP, vnet_hdr, offload), name, mtu, mac)


def device_mtu(fd: int) -> int:
    """The MTU of the tun/tap device open on ``fd``."""
    try:
        name = fcntl.ioctl(fd, TUNGETIFF, bytes(40))[:16].rstrip(b"\0").decode()
    except OSError as exc:
        raise PlumbingError(f"fd {fd} is no tun/tap device: {exc.strerror}") from None
    return struct.unpack_from("i", _ifreq(name, "the MTU", SIOCGIFMTU, bytes(24), verb="read"), 16)[0]
