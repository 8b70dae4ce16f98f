"""Kernel change notices (pure: messages and periods are made up): which notices concern drift
repair, and when a pass is due."""

from __future__ import annotations

import errno
import struct

import pytest

from overlayd.plumbing import kernelwatch
from overlayd.plumbing.kernelwatch import KernelWatch, concerns_us

RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = \
    16, 20, 21, 24, 25, 28, 29
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


def message(kind: int, body: bytes) -> bytes:
    """One netlink message, padded to 4 bytes as the kernel sends them."""
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def address(kind: int, scope: int) -> bytes:
    """An address notice (ifaddrmsg: family, prefixlen, flags, scope, index)."""
    return message(kind, struct.pack("=BBBBI", 10, 64, 0, scope, 5))


def route(kind: int, table: int) -> bytes:
    """A route notice (rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags)."""
    return message(kind, struct.pack("=BBBBBBBBI", 2, 16, 0, 0, table, 4, 0, 1, 0))


def neigh(kind: int, state: int, family: int = 2) -> bytes:
    """A neighbour notice (ndmsg, then an NDA_DST attribute): ``family`` 7 is a bridge FDB entry."""
    return message(kind, struct.pack("=BxxxiHBB", family, 5, state, 0, 0) + struct.pack("=HH4s", 8, 1, b"\xc6\x12\0\x02"))


@pytest.mark.parametrize("data, concerns", [
    (neigh(RTM_NEWNEIGH, NUD_REACHABLE), False),  # ARP under traffic
    (neigh(RTM_NEWNEIGH, NUD_STALE), False),
    (neigh(RTM_NEWNEIGH, NUD_REACHABLE, family=7), False),  # bridge learning
    (neigh(RTM_DELNEIGH, NUD_STALE), False),  # garbage-collected
    (neigh(RTM_NEWNEIGH, NUD_INCOMPLETE), False),
    (neigh(RTM_NEWNEIGH, NUD_DELAY), False),
    (neigh(RTM_NEWNEIGH, NUD_PROBE), False),
    (neigh(RTM_NEWNEIGH, NUD_FAILED), True),  # how `ip neigh del` of a permanent entry is announced
    (neigh(RTM_DELNEIGH, NUD_FAILED), True),
    (neigh(RTM_NEWNEIGH, 0), True),
    (neigh(RTM_NEWNEIGH, NUD_PERMANENT), True),  # ours: a VXLAN peer's neighbour
    (neigh(RTM_DELNEIGH, NUD_PERMANENT | NUD_NOARP, family=7), True),  # ours: its FDB entry, deleted
    (neigh(RTM_NEWNEIGH, NUD_NOARP), True),
    (route(RTM_NEWROUTE, 254), True),  # main: ours
    (route(RTM_DELROUTE, 254), True),
    (route(RTM_NEWROUTE, 252), True),  # a table past 255 (its id in an attribute)
    (route(RTM_NEWROUTE, 255), False),  # local: the kernel's, one per address
    (route(RTM_DELROUTE, 255), False),
    (address(RTM_NEWADDR, 0), True),  # global: cni0's gateway
    (address(RTM_DELADDR, 0), True),
    (address(RTM_NEWADDR, 253), False),  # link: IPv6 link-local
    (address(RTM_DELADDR, 254), False),  # host: loopback
    (message(RTM_NEWROUTE, b"\0" * 4), True),  # too short to hold a table
    (message(RTM_NEWLINK, b"\0" * 16), True),
    (neigh(RTM_NEWNEIGH, NUD_STALE) + neigh(RTM_NEWNEIGH, NUD_STALE), False),
    (neigh(RTM_NEWNEIGH, NUD_STALE) + neigh(RTM_DELNEIGH, NUD_PERMANENT), True),  # the second of two
    (neigh(RTM_NEWNEIGH, NUD_STALE) + message(RTM_NEWROUTE, b"\0" * 12), True),
    (b"", False),
    (neigh(RTM_NEWNEIGH, NUD_STALE)[:20], True),  # truncated: better a pass for nothing than a miss
    (b"\x08\0\0\0" + b"\0" * 12, True),  # a length shorter than its header
    (struct.pack("=IHHII", 64, RTM_NEWNEIGH, 0, 0, 0), True),  # a length past the datagram
    (message(RTM_NEWNEIGH, b"\0" * 4), True),  # too short to hold a state
])
def test_notices_that_concern_drift_repair(data, concerns):
    assert concerns_us(data) is concerns


def test_a_pass_is_due_first_then_on_changes_and_every_few_periods():
    watch = KernelWatch(full_every=3)
    due = []
    for changed in (False, False, False, False, False, True, False, False, False, False):
        watch.changed = watch.changed or changed
        due.append(watch.due())
    #               first, quiet, quiet, periodic, quiet, change, quiet, quiet, periodic, quiet
    assert due == [True, False, False, True, False, True, False, False, True, False]
    assert watch.checks == {"change": 2, "periodic": 2, "unwatched": 0}


def test_without_notices_every_period_is_due():
    watch = KernelWatch(full_every=6)
    watch.blind = True
    assert [watch.due() for _ in range(4)] == [True] * 4
    assert watch.checks == {"change": 1, "periodic": 0, "unwatched": 3}


class FakeSocket:
    """Gives ``reads`` (bytes, or an OSError to raise) then would block."""

    def __init__(self, *reads):
        self.reads = list(reads)

    def recv(self, size):
        if not self.reads:
            raise BlockingIOError(errno.EAGAIN, "would block")
        item = self.reads.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self):
        return 99


class FakeLoop:
    def __init__(self):
        self.removed = []

    def remove_reader(self, fd):
        self.removed.append(fd)


def quiet_watch() -> KernelWatch:
    watch = KernelWatch()
    watch._loop = FakeLoop()
    watch.due()  # the first pass
    return watch


def test_reading_drains_the_socket_and_marks_only_notices_that_concern_us():
    watch = quiet_watch()
    sock = FakeSocket(neigh(RTM_NEWNEIGH, NUD_STALE), neigh(RTM_NEWNEIGH, NUD_REACHABLE))
    watch._read(sock)
    assert sock.reads == [] and not watch.changed
    watch._read(FakeSocket(neigh(RTM_NEWNEIGH, NUD_STALE), message(RTM_NEWROUTE, b"\0" * 12)))
    assert watch.changed


def test_lost_notices_count_as_a_change():
    watch = quiet_watch()
    watch._read(FakeSocket(OSError(errno.ENOBUFS, "No buffer space available")))
    assert watch.changed and not watch.blind


def test_a_broken_socket_is_not_read_again_and_every_period_is_due(caplog):
    watch = quiet_watch()
    with caplog.at_level("DEBUG", logger=kernelwatch.__name__):
        watch._read(FakeSocket(OSError(errno.EBADF, "Bad file descriptor")))
    assert watch._loop.removed == [99] and watch.blind
    assert "no kernel change notices (reading: Bad file descriptor)" in caplog.text
    assert [watch.due() for _ in range(3)] == [True] * 3
