"""The forwarding loop on an asyncio event loop.

Design note. Two level-triggered readers (``loop.add_reader``), one on the
device fd and one on the UDP socket, each draining up to ``BUDGET`` packets
per wake-up before yielding back to the loop (so etcd and netlink work stays
responsive). Measured here, callbacks that drain until EAGAIN read as many
packets per second on the standard loop as on uvloop; protocol objects
(``DatagramProtocol``) cost an extra allocation and call per packet for
nothing we need. What to do with a packet is the codec's job (pure code in
:mod:`overlayd.encap`); sending goes through one :class:`Sender` so that
sending strategies can be swapped and measured without touching the loop.
The C engine (:mod:`.fast`) replaces the two readers with threads of its
own and keeps the codec's ICMP answers here. A device opened with
IFF_VNET_HDR (``vnet_hdr``) is read and written with an empty 10-byte
virtio header: this plane never asks for offloads, so it never reads a
superpacket from the device nor writes one to it. From the underlay it can
receive one (a kernel VTEP with offload on, over a virtual underlay): the
codec cuts it to the device's MTU, read from the device at start. A device
read failing with EBADFD (the tun or tap deleted under us) or EBADF fails
:attr:`DataPlane.ended`: the plane cannot go on, and the device a drift
repair or restart would create is not the one this fd holds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from typing import Protocol

from ..encap import ether, gso, vxlan
from ..encap.drops import Counters, Drop
from ..errors import PlumbingError
from ..plumbing.tuntap import device_mtu

BUDGET = 256  # packets per wake-up and direction
READ_SIZE = 65535
# the largest datagram: a VXLAN header and an Ethernet header around a 64 KB IP packet (a kernel
# VTEP's TCP superpacket, over a virtual underlay)
RECV_SIZE = READ_SIZE + vxlan.HEADER_LEN + ether.ETH_HEADER_LEN


def error_counter(prefix: str, code: int | None) -> str:
    """The counter for a failed syscall: ``prefix`` + the errno's name (``tx_error_enetunreach``)."""
    return prefix + errno.errorcode.get(code, "other").lower()


class Codec(Protocol):
    """Per-backend packet decisions (pure)."""

    def outbound(self, frame: bytes) -> tuple[str, bytes] | Drop:
        """A frame read from the device -> (peer node IP, UDP payload), or why not."""

    def inbound(self, payload: bytes, sender: tuple[str, int], mtu: int | None = None) -> bytes | list[bytes] | Drop:
        """A UDP payload from ``sender`` (address, port) -> the frame (or frames, a superpacket cut to the
        device's ``mtu``) to write to the device, or why not."""

    def answer(self, drop: Drop, frame: bytes, now: float) -> bytes | None:
        """A frame to write back to the device for a dropped outbound frame (ICMP), if any."""


class Sender:
    """Per-packet ``sendto``: the baseline strategy. ``flush`` is a no-op here."""

    def __init__(self, sock: socket.socket, port: int, counters: Counters):
        self.sock, self.port, self.counters = sock, port, counters

    def send(self, payload: bytes, dst_ip: str) -> None:
        try:
            self.sock.sendto(payload, (dst_ip, self.port))
        except (BlockingIOError, InterruptedError):
            self.counters.count("tx_dropped")  # socket buffer full: UDP semantics, drop
        except OSError as exc:
            self.counters.count(error_counter("tx_error_", exc.errno))
        else:
            self.counters.tx(len(payload))

    def flush(self) -> None:
        return None


class DataPlane:
    """Forwards between ``dev_fd`` (tun or tap) and ``sock`` using ``codec``."""

    def __init__(self, dev_fd: int, sock: socket.socket, codec: Codec, sender: Sender,
                 counters: Counters, vnet_hdr: bool = False, mtu: int | None = None):
        self.dev_fd = dev_fd
        self.sock = sock
        self.codec = codec
        self.sender = sender
        self.counters = counters
        self.vnet_hdr = vnet_hdr  # the device was opened with IFF_VNET_HDR (no offloads asked for here)
        self.mtu = mtu  # the device's (read from it at start unless given): longer inbound packets are cut or dropped
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ended: asyncio.Future | None = None  # fails when the data plane cannot go on

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the readers on ``loop``."""
        self.loop = loop
        self.ended = loop.create_future()
        if self.mtu is None:
            try:
                self.mtu = device_mtu(self.dev_fd)
            except PlumbingError:  # not a tun/tap (a test's socketpair): no limit
                pass
        os.set_blocking(self.dev_fd, False)
        self.sock.setblocking(False)
        loop.add_reader(self.dev_fd, self._device_readable)
        loop.add_reader(self.sock.fileno(), self._socket_readable)

    def peers_changed(self) -> None:
        """The codec's peer table changed (the Python plane reads it directly: nothing to do)."""

    def snapshot(self) -> dict[str, int]:
        """Every counter that is not zero."""
        return self.counters.snapshot()

    def stop(self) -> None:
        """Unregister the readers (the fds stay open: their owner closes them)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.dev_fd)
            self.loop.remove_reader(self.sock.fileno())
        self.loop = None

    def _device_readable(self) -> None:
        codec, counters, sender = self.codec, self.counters, self.sender
        for _ in range(BUDGET):
            try:
                frame = os.read(self.dev_fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                counters.count("dev_read_error")
                if exc.errno in (errno.EBADFD, errno.EBADF):
                    self._device_gone(exc)
                    break
                continue
            if self.vnet_hdr:  # no offloads were asked for: the header is empty
                frame = frame[gso.HEADER_LEN:]
            counters.rx_dev(len(frame))
            verdict = codec.outbound(frame)
            if isinstance(verdict, Drop):
                self._dropped_outbound(verdict, frame, time.monotonic())
                continue
            sender.send(verdict[1], verdict[0])
        sender.flush()

    def _device_gone(self, exc: OSError) -> None:
        """The device fd reaches no device any more (the tun or tap was deleted, the fd closed):
        stop reading it (a dead tun stays readable, and the reader would spin) and fail
        :attr:`ended`, which ends the data-plane task and so the daemon, as the C engine does."""
        self.loop.remove_reader(self.dev_fd)
        if not self.ended.done():
            self.ended.set_exception(PlumbingError(f"data plane: the device is gone (read: {exc.strerror})"))

    def _socket_readable(self) -> None:
        codec, counters, mtu = self.codec, self.counters, self.mtu
        for _ in range(BUDGET):
            try:
                payload, sender = self.sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                counters.count("sock_read_error")  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                continue
            counters.rx(len(payload))
            verdict = codec.inbound(payload, sender, mtu)
            if isinstance(verdict, Drop):
                counters.drop(verdict)
            elif isinstance(verdict, list):  # a superpacket, cut to the device's MTU
                counters.count("rx_superpackets")
                for frame in verdict:
                    self._write_device(frame)
            else:
                self._write_device(verdict)

    def _dropped_outbound(self, drop: Drop, frame: bytes, now: float) -> None:
        """Count a dropped device frame and write the codec's answer (ICMP), if any."""
        self.counters.drop(drop)
        self._answer(drop, frame, now)

    def _answer(self, drop: Drop, frame: bytes, now: float) -> None:
        """Write the codec's answer (ICMP) to a dropped device frame, if any."""
        reply = self.codec.answer(drop, frame, now)
        if reply is not None:
            self._write_device(reply)

    def _write_device(self, frame: bytes) -> None:
        try:
            os.write(self.dev_fd, gso.NO_OFFLOAD_HEADER + frame if self.vnet_hdr else frame)
        except OSError as exc:  # EIO: link down; EINVAL: malformed for the device
            self.counters.count(error_counter("dev_write_error_", exc.errno))
        else:
            self.counters.tx_dev(len(frame))
