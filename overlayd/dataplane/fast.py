"""The UDP backend's data plane on the C fast path (``overlayd._fastpath``).

Same readers, same codec, same counters as :class:`~overlayd.dataplane.loop.DataPlane`;
only the per-wake-up work moves to C: up to ``BATCH`` tun reads and one
``sendmmsg`` outbound, one ``recvmmsg`` and the tun writes inbound. Drop
decisions are made in C by the twin of :mod:`overlayd.encap.udp` (held to
identical verdicts by the parity tests); packets dropped outbound come back
to Python so the codec answers NO_LEASE with ICMP exactly as before.

Only the UDP backend has a C twin: the userspace VXLAN backend stays on the
Python loop (its frames need the VTEP MAC rewrite and the VXLAN header).
"""

from __future__ import annotations

import time

from ..encap.drops import Drop
from .loop import BUDGET, DataPlane

try:
    from .. import _fastpath
except ImportError:  # not built: the Python data plane is used
    _fastpath = None


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _fastpath is not None


class FastUdpDataPlane(DataPlane):
    """:class:`DataPlane` for the UDP backend with the batched C forwarding steps."""

    def _device_readable(self) -> None:
        codec, counters = self.codec, self.counters
        done = 0
        while done < BUDGET:
            want = min(_fastpath.BATCH, BUDGET - done)
            (dev_packets, dev_bytes, tx_packets, tx_bytes, tx_dropped, tx_errors, read_errors,
             dropped) = _fastpath.forward_out(self.dev_fd, self.sock.fileno(), self.sender.port,
                                             codec.table, want)
            counters.count("dev_rx_packets", dev_packets)
            counters.count("dev_rx_bytes", dev_bytes)
            counters.count("tx_packets", tx_packets)
            counters.count("tx_bytes", tx_bytes)
            if tx_dropped:
                counters.count("tx_dropped", tx_dropped)
            if tx_errors:
                counters.count("tx_error", tx_errors)
            if read_errors:
                counters.count("dev_read_error", read_errors)
            for reason, frame in dropped:
                self._dropped_outbound(Drop(reason), frame, time.monotonic())
            done += dev_packets
            if dev_packets < want:
                break

    def _socket_readable(self) -> None:
        codec, counters = self.codec, self.counters
        done = 0
        while done < BUDGET:
            want = min(_fastpath.BATCH, BUDGET - done)
            rx_packets, rx_bytes, written, write_errors, drops = _fastpath.forward_in(
                self.sock.fileno(), self.dev_fd, codec.table, codec.subnet_int, codec.mask, want)
            counters.count("rx_packets", rx_packets)
            counters.count("rx_bytes", rx_bytes)
            counters.count("dev_tx_packets", written)
            if write_errors:
                counters.count("dev_write_error", write_errors)
            for reason, n in drops.items():
                counters.count("drop_" + reason, n)
            done += rx_packets
            if rx_packets < want:
                break
