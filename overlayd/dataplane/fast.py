"""The UDP backend's data plane on the C fast path (``overlayd._fastpath``).

Design note. :class:`FastUdpDataPlane` is a :class:`~.loop.DataPlane` with
the same readers, codec and counters; only the work per wake-up moves to C,
in batches of up to ``_fastpath.BATCH`` packets until ``BUDGET``:
outbound, non-blocking tun reads and ONE ``sendmmsg`` per batch; inbound,
ONE ``recvmmsg`` and the tun writes. The C code decides like
:mod:`overlayd.encap.udp` (the parity tests hold it to identical verdicts);
packets it drops outbound come back here, so the codec answers NO_LEASE with
ICMP exactly as on the Python loop, and every counter keeps its name.

Only the UDP backend has a C twin: the userspace VXLAN backend stays on the
Python :class:`~.loop.DataPlane` (its frames need the VTEP MAC rewrite and the
VXLAN header). The pure Python loop remains the reference and the fallback
when the extension was not built (see ``setup.py``).
"""

from __future__ import annotations

import time

from ..encap.drops import Counters, Drop
from .loop import BUDGET, DataPlane, error_counter

try:
    from .. import _fastpath
except ImportError:  # not built: only the Python data plane is available
    _fastpath = None


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _fastpath is not None


def _count(counters: Counters, **counts: int) -> None:
    for name, n in counts.items():
        if n:
            counters.count(name, n)


def _count_errors(counters: Counters, prefix: str, by_errno: dict[int, int]) -> None:
    for code, n in by_errno.items():
        counters.count(error_counter(prefix, code), n)


class FastUdpDataPlane(DataPlane):
    """:class:`~.loop.DataPlane` for the UDP backend with batched forwarding in C.

    Takes the same arguments; of the ``sender`` only the port is used, since
    the C code sends itself (``sendmmsg``).
    """

    def __init__(self, *args, **kwargs):
        if not available():
            raise RuntimeError("the C fast path (overlayd._fastpath) is not built")
        super().__init__(*args, **kwargs)

    def _device_readable(self) -> None:
        counters, table = self.counters, self.codec.table
        done = 0
        while done < BUDGET:
            want = min(_fastpath.BATCH, BUDGET - done)
            (read, read_bytes, read_errors, sent, sent_bytes, tx_dropped, send_errors,
             dropped) = _fastpath.forward_out(self.dev_fd, self.sock.fileno(), self.sender.port,
                                              table, want)
            _count(counters, dev_rx_packets=read, dev_rx_bytes=read_bytes, dev_read_error=read_errors,
                   tx_packets=sent, tx_bytes=sent_bytes, tx_dropped=tx_dropped)
            _count_errors(counters, "tx_error_", send_errors)
            for reason, frame in dropped:
                self._dropped_outbound(Drop(reason), frame, time.monotonic())
            done += read
            if read < want:
                break

    def _socket_readable(self) -> None:
        codec, counters = self.codec, self.counters
        done = 0
        while done < BUDGET:
            want = min(_fastpath.BATCH, BUDGET - done)
            received, rx_bytes, recv_errors, written, write_errors, drops = _fastpath.forward_in(
                self.sock.fileno(), self.dev_fd, codec.table, codec.subnet_int, codec.mask, codec.port, want)
            _count(counters, rx_packets=received, rx_bytes=rx_bytes, sock_read_error=recv_errors,
                   dev_tx_packets=written)
            _count_errors(counters, "dev_write_error_", write_errors)
            for reason, n in drops.items():
                counters.count("drop_" + reason, n)
            done += received + recv_errors
            if received + recv_errors < want:
                break
