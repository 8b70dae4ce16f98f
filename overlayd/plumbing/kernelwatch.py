"""Kernel change notices: whether the state drift repair checks may have changed since it last looked.

Design note. Drift repair lists what this node owns (routes, neighbours, FDB entries, addresses,
links, the nft tables) and compares it with what should be. At 5000 peers one pass is five
iproute2 listings of 5000 entries and an nft listing: about 0.4% of a CPU every 10 s, on a node
where nothing changes. The kernel announces every change to those tables on rtnetlink's and
nfnetlink's multicast groups, so a node that heard nothing has nothing to repair. A pass is due
(:meth:`KernelWatch.due`, asked once per period) when a notice came since the last pass began,
and in any case every :data:`FULL_EVERY` periods: what no notice covers (a sysctl written with
no netconf notice, a WireGuard peer edited with ``wg``, a notice lost) is still found within a
minute at the default period. A group that cannot be joined, or a socket that overflows
(ENOBUFS: notices were lost), counts as a change at every period: the old behaviour.

Notices that cannot concern us are dropped at the header (:func:`concerns_us`): neighbour and
FDB entries in the states ARP/NDP and bridge learning move through under traffic (incomplete,
reachable, stale, delay, probe), and neither permanent nor NOARP: overlayd writes permanent
entries only (a neighbour deleted by hand is announced as FAILED, not with its old state: FAILED
counts); addresses of link or host scope (IPv6 link-local addresses, which every new link gets a
second after it comes up, and loopback's) and routes of the ``local`` table (the kernel's, one per
address): overlayd's addresses are global and its routes are in ``main``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

log = logging.getLogger(__name__)

FULL_EVERY = 6  # periods: a pass at least this often, notices or not

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7

# rtnetlink groups (linux/rtnetlink.h): links, neighbours (and FDB), addresses, routes, netconf
RTNLGRP = (1, 3, 5, 7, 9, 11, 24, 25)  # LINK, NEIGH, IPV4_IFADDR, IPV4_ROUTE, IPV6_IFADDR, IPV6_ROUTE, IPV4/6_NETCONF

RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 20, 21, 24, 25, 28, 29
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NUD_TRAFFIC = 0x01 | 0x02 | 0x04 | 0x08 | 0x10  # INCOMPLETE, REACHABLE, STALE, DELAY, PROBE
RT_SCOPE_LINK = 253  # and RT_SCOPE_HOST, 254
RT_TABLE_LOCAL = 255
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_HEADER = _NLMSGHDR.size
_NDM_STATE = struct.Struct("=H")  # ndmsg: family u8, pad u8 u16, ifindex s32, state u16 (at 8), ...
# what a notice's own header holds past the netlink header, by kind: (offset, format)
_FIELD = {RTM_NEWNEIGH: (8, _NDM_STATE), RTM_DELNEIGH: (8, _NDM_STATE),
          RTM_NEWADDR: (3, struct.Struct("=B")), RTM_DELADDR: (3, struct.Struct("=B")),  # ifaddrmsg scope
          RTM_NEWROUTE: (4, struct.Struct("=B")), RTM_DELROUTE: (4, struct.Struct("=B"))}  # rtmsg table


def _ignored(kind: int, value: int) -> bool:
    """Whether a notice of ``kind`` whose :data:`_FIELD` holds ``value`` cannot concern drift repair."""
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
        return bool(value & NUD_TRAFFIC) and not value & (NUD_PERMANENT | NUD_NOARP)
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        return value >= RT_SCOPE_LINK
    return value == RT_TABLE_LOCAL


def concerns_us(data: bytes) -> bool:
    """Whether any notice in ``data`` (one datagram from a notice socket: netlink messages back to
    back) may touch state overlayd owns: anything but what the module's note lists. A truncated
    message counts (better a pass for nothing than a miss)."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER:
            return True
        length, kind, *_ = _NLMSGHDR.unpack_from(data, offset)
        if length < _HEADER or offset + length > len(data) or kind not in _FIELD:
            return True
        at, field = _FIELD[kind]
        if length < _HEADER + at + field.size or not _ignored(kind, field.unpack_from(data, offset + _HEADER + at)[0]):
            return True
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return False


class KernelWatch:
    """Listens to the kernel's change notices (rtnetlink's with ``route``, nftables' with ``nft``)
    in the current network namespace, and says when a drift pass is due."""

    def __init__(self, route: bool = True, nft: bool = True, full_every: int = FULL_EVERY):
        self.route, self.nft, self.full_every = route, nft, full_every
        self.changed = True  # the first pass is always due
        self.blind = False  # a group could not be joined, or notices were lost: always changed
        self.quiet = 0  # periods since the last pass
        self.checks = {"change": 0, "periodic": 0, "unwatched": 0}  # passes due, by why (status, metrics)
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Join the groups and read notices on ``loop`` (the running loop by default). A group
        that cannot be joined is logged once, at debug: drift repair then runs every period."""
        self._loop = loop or asyncio.get_running_loop()
        if self.route:
            self._join(socket.NETLINK_ROUTE, sum(1 << (group - 1) for group in RTNLGRP), ())
        if self.nft:
            self._join(NETLINK_NETFILTER, 0, (NFNLGRP_NFTABLES,))

    def _join(self, protocol: int, groups: int, memberships: tuple[int, ...]) -> None:
        sock = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
            sock.bind((0, groups))
            for group in memberships:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            self._go_blind(f"netlink protocol {protocol}: {exc.strerror}")
            return
        self._socks.append(sock)
        self._loop.add_reader(sock.fileno(), self._read, sock)

    def _go_blind(self, why: str) -> None:
        log.debug("no kernel change notices (%s): drift repair checks every period", why)
        self.blind = True

    def _read(self, sock: socket.socket) -> None:
        """Drain ``sock``: notices that concern us (or lost ones) mark a change."""
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped notices: we cannot know what they said
                    self.changed = True
                    continue
                self._loop.remove_reader(sock.fileno())  # not read again: no busy loop on a broken socket
                self._go_blind(f"reading: {exc.strerror}")
                return
            if not self.changed and concerns_us(data):
                self.changed = True

    def due(self) -> bool:
        """Whether a pass is due at this period's end (asked once per period, the pass follows at
        once): a change was noticed since the last pass began, notices are not available, or
        :attr:`full_every` periods went by without a pass (counted in :attr:`checks` by that reason)."""
        self.quiet += 1
        reason = "change" if self.changed else "unwatched" if self.blind else \
            "periodic" if self.quiet >= self.full_every else None
        if reason is None:
            return False
        self.checks[reason] += 1
        self.changed, self.quiet = False, 0
        return True

    def __enter__(self) -> KernelWatch:
        """:meth:`open` on the running loop, :meth:`close` on the way out."""
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Leave the groups (the watch then says nothing more)."""
        for sock in self._socks:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
