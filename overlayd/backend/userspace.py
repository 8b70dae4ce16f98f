"""What the userspace backends (udp, vxlan over a tap) share: the peer table,
the encapsulation socket and running the data plane, optionally on uvloop in
its own thread.

Why a thread for uvloop: uvloop cannot host pyroute2's netlink sockets
(``ValueError: cannot open a UDP handle, invalid family 16``), so the daemon
keeps netlink and etcd on a standard asyncio loop and, when asked for uvloop,
runs only the forwarding readers on a uvloop loop in a second thread. Peer
table changes are handed to that loop with ``call_soon_threadsafe`` so the
data plane never sees a half-applied batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from ..dataplane.fast import FastUdpDataPlane
from ..dataplane.loop import DataPlane, Sender
from ..dataplane.sockets import open_udp
from ..encap.drops import Counters
from ..encap.table import Peer, PeerTable
from ..lease.watcher import Batch
from .base import Backend

log = logging.getLogger(__name__)

# The device's queue towards overlayd (the kernel's default is 500 packets). A
# TCP burst from the pods fills 500 faster than one wake-up of the loop drains
# it; every overflow is a drop and a retransmit. Measured with scripts/bench.
DEVICE_TXQUEUELEN = 5000


class UserspaceBackend(Backend):
    """Base of backends whose packets go through overlayd's own data plane."""

    device = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.table = PeerTable(self.config.subnet_len)
        self.counters = Counters()
        self.dev_fd: int | None = None
        self.codec = None
        self.sock = None
        self._dp_loop: asyncio.AbstractEventLoop | None = None

    def peer_for(self, lease) -> Peer | None:
        """The data-plane peer for a lease, or None if we cannot talk to it."""
        if lease.attrs.backend_type != self.type_name:
            log.warning("peer %s on %s uses backend %s, not %s: not reachable from here",
                        lease.subnet, lease.public_ip, lease.attrs.backend_type, self.type_name)
            self.counters.count("incompatible_peers")
            return None
        return Peer(str(lease.public_ip), None)

    async def apply(self, batch: Batch) -> None:
        changes = [(l.subnet, None) for l in batch.removed]
        changes += [(l.subnet, self.peer_for(l)) for l in batch.added]

        def update():
            for subnet, peer in changes:
                if peer is None:
                    self.table.remove(subnet)
                else:
                    self.table.set(subnet, peer)

        if self._dp_loop is not None and self._dp_loop is not asyncio.get_running_loop():
            self._dp_loop.call_soon_threadsafe(update)
        else:
            update()

    def peer_subnets(self) -> list[str]:
        return self.table.subnets()

    def stats(self) -> dict:
        return {"peers": len(self.table), **self.counters.snapshot()}

    def _dataplane(self) -> DataPlane:
        self.sock = open_udp(str(self.underlay.public_ip), self.config.backend.port)
        sender = Sender(self.sock, self.config.backend.port, self.counters)
        # only the UDP backend has a C twin; VXLAN stays on the Python loop
        cls = FastUdpDataPlane if self.options.datapath == "c" and self.type_name == "udp" else DataPlane
        return cls(self.dev_fd, self.sock, self.codec, sender, self.counters)

    async def run(self) -> None:
        dp = self._dataplane()
        log.info("data plane: %s <-> udp %s:%d (%s data path, %s loop)", self.device,
                 self.underlay.public_ip, self.config.backend.port,
                 "C" if isinstance(dp, FastUdpDataPlane) else "Python",
                 "uvloop" if self.options.use_uvloop else "asyncio")
        if not self.options.use_uvloop:
            dp.start(asyncio.get_running_loop())
            try:
                await asyncio.Future()  # until cancelled
            finally:
                dp.stop()
            return
        await self._run_on_uvloop(dp)

    async def _run_on_uvloop(self, dp: DataPlane) -> None:
        import uvloop
        loop = uvloop.new_event_loop()
        self._dp_loop = loop
        ready = threading.Event()

        def thread_main():
            asyncio.set_event_loop(loop)
            dp.start(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            dp.stop()
            loop.close()

        thread = threading.Thread(target=thread_main, name="overlayd-dataplane", daemon=True)
        thread.start()
        try:
            await asyncio.to_thread(ready.wait)
            await asyncio.Future()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5)
            self._dp_loop = None

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.dev_fd is not None:
            os.close(self.dev_fd)
            self.dev_fd = None
