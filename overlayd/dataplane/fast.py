"""The userspace backends' data plane as a C engine (``overlayd._fastpath.Engine``).

Design note. :class:`FastDataPlane` keeps the :class:`~.loop.DataPlane`
interface (start, stop, counters, the codec's ICMP answers) but forwards in
two C threads, one per direction, that block in the kernel with the GIL
released: no asyncio wake-up between a packet's arrival and its departure
(that wake-up cost ~0.4 ms per round trip and a good share of the CPU). The
design of the threads, the peer-table swap and the superpacket handling is
in the note at the top of ``overlayd/_fastpath.c``. What stays here, on the
event loop:

* peer-table changes: :meth:`peers_changed` hands the engine a new C table
  built from the codec's :class:`~overlayd.encap.table.PeerTable`;
* ICMP answers for packets to nobody's subnet: the engine queues their first
  bytes and signals an eventfd; the codec answers them (rate-limited) as on
  the Python plane;
* failures: a thread that cannot go on (the tun deleted, an fd closed under
  it) signals the same eventfd; :attr:`ended` then fails with a
  :class:`~overlayd.errors.PlumbingError`, which ends the backend's
  data-plane task and so the daemon (its supervisor treats that as fatal);
* counters: :meth:`snapshot` sums the engine's with the few kept here
  (ICMP answers written), under the Python plane's names.

Both userspace backends run on it: the codec says which wire. A
:class:`~.codecs.UdpCodec` makes a tun <-> IP-in-UDP engine; a
:class:`~.codecs.VxlanCodec` makes a tap <-> VXLAN engine (its VNI and
VtepMAC handed over: the header, the VNI check, the destination MAC rewrite,
the VtepMAC and anti-spoofing checks and the partial-checksum completion all
in C, ``overlayd/csrc/vxlan.c``), with the same threads, table, batching
and counters. With ``vnet_hdr`` the tap has superpackets too (the Ethernet
header in front of each segment and coalesced run), and the engine needs the
tap's MTU: a kernel VTEP with transmit offload sends whole TCP superpackets
in one datagram, written to the tap as one GSO write that the kernel cuts
to that MTU.

The C code decides like :mod:`overlayd.encap.udp`, :mod:`overlayd.encap.ether`,
:mod:`overlayd.encap.vxlan` and :mod:`overlayd.encap.gso`; the parity tests
hold it to identical verdicts.
"""

from __future__ import annotations

import os
import time

from ..encap.drops import Drop
from ..errors import PlumbingError
from ..plumbing.tuntap import device_mtu, takes_udp_superpackets
from .codecs import VxlanCodec
from .loop import DataPlane, error_counter

try:
    from .. import _fastpath
    IMPORT_ERROR = None
except ImportError as exc:  # not built, or does not load: only the Python data plane is available
    _fastpath = None
    IMPORT_ERROR = str(exc)


def available() -> bool:
    """Whether the C extension was built and imports (else :data:`IMPORT_ERROR` says why not)."""
    return _fastpath is not None


class FastDataPlane(DataPlane):
    """:class:`~.loop.DataPlane` for a userspace backend, forwarding in the C engine's threads.

    Takes the same arguments; the ``sender`` is not used (the engine sends
    itself). The codec is a :class:`~.codecs.UdpCodec` (tun) or a
    :class:`~.codecs.VxlanCodec` (tap). With ``vnet_hdr`` the device must have been opened with
    IFF_VNET_HDR; the engine then segments and coalesces superpackets (a tap's ``mtu``: read from the
    device unless given). With
    ``udp_gso`` (``--udp-checksum``; the socket must not have SO_NO_CHECK) a
    superpacket's segments leave in UDP GSO sends; on the UDP wire, UDP_GRO
    buffers are taken and split in either mode (not on VXLAN's: see
    engine_start in overlayd/csrc/engine.c). With ``udp_runs`` (default: whether the device takes UDP
    superpackets, :func:`~overlayd.plumbing.tuntap.takes_udp_superpackets`) a vnet_hdr device gets
    runs of one flow's datagrams as one UDP GSO write too (:func:`overlayd.encap.gso.coalesce`).
    """

    def __init__(self, *args, udp_gso: bool = False, udp_runs: bool | None = None, **kwargs):
        if not available():
            raise RuntimeError("the C fast path (overlayd._fastpath) is not built")
        super().__init__(*args, **kwargs)
        codec = self.codec
        wire = {}
        if isinstance(codec, VxlanCodec):
            wire = {"vni": codec.vni, "own_mac": codec.own_mac, "subnet6_int": codec.subnet6_int}
            if self.vnet_hdr:
                if self.mtu is None:
                    self.mtu = device_mtu(self.dev_fd)
                wire["mtu"] = self.mtu
        elif codec.subnet6_int is not None:  # IPv6 on the UDP wire (issue 17)
            wire = {"subnet6_int": codec.subnet6_int, "tunnel_mtu": codec.mtu or 0}
        if udp_runs is None:
            udp_runs = self.vnet_hdr and takes_udp_superpackets(self.dev_fd)
        self.engine = _fastpath.Engine(self.dev_fd, self.sock.fileno(), codec.port, codec.subnet_int, codec.mask,
                                       codec.table, self.vnet_hdr, udp_gso, udp_runs=udp_runs, **wire)

    def start(self, loop) -> None:
        """Start the engine's threads; watch its eventfd on ``loop``."""
        self.loop = loop
        self.ended = loop.create_future()
        os.set_blocking(self.dev_fd, False)
        self.sock.setblocking(False)
        self.engine.set_peers(self.codec.table)
        loop.add_reader(self.engine.notify_fd, self._engine_news)
        try:
            self.engine.start()
        except BaseException:  # no threads: nothing to watch either
            loop.remove_reader(self.engine.notify_fd)
            raise

    def stop(self) -> None:
        """Stop and join the threads (the fds stay open: their owner closes them)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.engine.notify_fd)
        self.engine.stop()
        self.loop = None

    def peers_changed(self) -> None:
        """Swap a table built from the codec's PeerTable into the engine."""
        self.engine.set_peers(self.codec.table)

    def last_beat(self) -> float | None:
        """``time.monotonic()`` of the older thread's last turn (None when stopped)."""
        return self.engine.last_beat()

    def snapshot(self) -> dict[str, int]:
        counts, tx_errors, write_errors = self.engine.counters()
        merged = dict(self.counters.snapshot())
        for name, n in counts.items():
            merged[name] = merged.get(name, 0) + n
        for prefix, by_errno in (("tx_error_", tx_errors), ("dev_write_error_", write_errors)):
            for code, n in by_errno.items():
                name = error_counter(prefix, code)
                merged[name] = merged.get(name, 0) + n
        return merged

    def _engine_news(self) -> None:
        """The engine's eventfd: answer the packets it dropped for no lease or too big; notice a failed thread."""
        now = time.monotonic()
        for reason, frame in self.engine.take_answers():
            self._answer(Drop(reason), frame, now)
        error = self.engine.error()
        if error is not None and not self.ended.done():
            where, code = error
            self.ended.set_exception(PlumbingError(f"data plane engine: {where} failed: {os.strerror(code)}"))
