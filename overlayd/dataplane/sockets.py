"""The encapsulation socket: UDP on the node's public IP, checksum 0 (unless --udp-checksum), big buffers.

Over an IPv6 underlay (issue 17: a node without a PublicIP) the socket is AF_INET6 and its datagrams
always carry a UDP checksum. IPv6 makes it mandatory (RFC 8200 8.1); RFC 6935/6936 allow 0 for
tunnels, but only towards receivers that opted in (Linux: UDP_NO_CHECK6_RX on the receiving socket,
else the kernel drops them), and every peer of any version would have to. With checksums the kernel
also merges the datagrams with UDP GRO and can send UDP GSO, which 0 forbids (the docstring below).
"""

from __future__ import annotations

import errno
import os
import socket

from ..errors import PlumbingError

SO_NO_CHECK = 11  # Linux: send IPv4 UDP with checksum 0 ("no checksum")
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 4 << 20


def open_udp(bind_ip: str, port: int, no_check: bool = True) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind_ip:port`` (an IPv4 or IPv6 address).

    ``no_check`` sets SO_NO_CHECK on an IPv4 socket (an IPv6 one always checksums: see the
    module's docstring) so datagrams leave with UDP checksum 0, as
    the design asks (the inner packet has its own checksums). Note the kernel
    then refuses UDP GSO on this socket (EINVAL), so batching must use
    sendmmsg rather than UDP_SEGMENT; ``--udp-checksum`` opens it without
    (``no_check=False``) for the C engine's UDP GSO sends. No SO_REUSEADDR: UDP has no TIME_WAIT
    to skip, and with it a second overlayd (or anything else asking for
    reuse) could silently share the port. A port in use is a
    :class:`PlumbingError` naming what holds it, when that can be found.
    """
    v6 = ":" in bind_ip
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if no_check and not v6:
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
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = f" (held by {udp_port_holder(port)}; stop it or pick another Backend.Port)"
        where = f"[{bind_ip}]" if v6 else bind_ip
        raise PlumbingError(f"cannot open UDP {where}:{port}: {exc.strerror}{hint}") from None
    return sock


def udp_port_holder(port: int) -> str:
    """Who holds IPv4 UDP ``port`` in this network namespace, as words for an error message.

    Reads ``/proc/net/udp`` and ``udp6`` (a dual-stack socket on ``[::]``
    holds the IPv4 port too) for the port's socket inodes, then looks for a
    process with one of them open. A socket no process holds belongs to the
    kernel: on an overlay node, most likely a VXLAN device on that port.
    """
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()  # sl local_address rem_address st ... uid timeout inode
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, IndexError, ValueError):
            continue
    if not inodes:
        return "something this process cannot see"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        if any(_readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in _listdir(f"/proc/{pid}/fd")):
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                    return f"process {pid} ({f.read().strip()})"
            except OSError:
                return f"process {pid}"
    return "the kernel, not a process: a VXLAN device on that port? ('ip -d link show type vxlan')"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:  # the process is gone, or not ours to read
        return []


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile (our own listdir's fd, for one)
        return ""
