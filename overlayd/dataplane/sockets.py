"""The encapsulation socket: UDP on the node's public IP, checksum 0, big buffers."""

from __future__ import annotations

import socket

from ..errors import PlumbingError

SO_NO_CHECK = 11  # Linux: send IPv4 UDP with checksum 0 ("no checksum")
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 4 << 20


def open_udp(bind_ip: str, port: int, no_check: bool = True) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind_ip:port``.

    ``no_check`` sets SO_NO_CHECK so datagrams leave with UDP checksum 0, as
    the design asks (the inner packet has its own checksums). Note the kernel
    then refuses UDP GSO on this socket (EINVAL), so batching must use
    sendmmsg rather than UDP_SEGMENT.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if no_check:
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
        sock.bind((bind_ip, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = " (a kernel VXLAN device on this node may hold it)" if exc.errno == 98 else ""
        raise PlumbingError(f"cannot open UDP {bind_ip}:{port}: {exc.strerror}{hint}") from None
    return sock
