"""What the userspace backends (udp, vxlan over a tap) share: the peer table,
the encapsulation socket and running the data plane, optionally on uvloop in
its own thread.

Why a thread for uvloop: uvloop cannot host pyroute2's netlink sockets
(``ValueError: cannot open a UDP handle, invalid family 16``), so the daemon
keeps netlink and etcd on a standard asyncio loop and, when asked for uvloop,
runs only the forwarding readers on a uvloop loop in a second thread. Peer
table changes are handed to that loop with ``call_soon_threadsafe`` so the
data plane never sees a half-applied batch. The thread reports how it ended
through a future: a failure to start fails the data-plane task, and the loop
ending by itself ends it (fatal to the daemon's supervisor), instead of
leaving the daemon waiting forever.

The encapsulation socket is bound in :meth:`UserspaceBackend.preflight`,
before a lease is taken: a port held by something else (a kernel VXLAN
device on 8472, another overlayd) stops the daemon before it leases a
subnet or tells systemd it is ready.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading

from ..dataplane.fast import FastUdpDataPlane
from ..dataplane.loop import DataPlane, Sender
from ..dataplane.sockets import open_udp
from ..encap.drops import Counters
from ..encap.table import Peer, PeerTable
from ..errors import PlumbingError
from ..lease.watcher import Batch
from ..watchdog import LoopHeartbeat
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
        self.heartbeat = LoopHeartbeat()  # the data-plane loop turning (for the watchdog, /healthz)

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

    async def preflight(self) -> None:
        """Bind the encapsulation socket (kept for :meth:`run`): a port in use fails here."""
        if self.sock is None:
            self.sock = open_udp(str(self.underlay.public_ip), self.config.backend.port)

    @property
    def datapath(self) -> str:
        """The data path in use: ``c`` or ``python`` (only the UDP backend has a C twin)."""
        return "c" if self.options.datapath == "c" and self.type_name == "udp" else "python"

    def _dataplane(self) -> DataPlane:
        sender = Sender(self.sock, self.config.backend.port, self.counters)
        cls = FastUdpDataPlane if self.datapath == "c" else DataPlane
        return cls(self.dev_fd, self.sock, self.codec, sender, self.counters)

    async def run(self) -> None:
        """Forward between the device (from :meth:`setup`) and the socket (from :meth:`preflight`)."""
        dp = self._dataplane()
        log.info("data plane: %s <-> udp %s:%d (%s data path, %s loop)", self.device,
                 self.underlay.public_ip, self.config.backend.port,
                 "C" if isinstance(dp, FastUdpDataPlane) else "Python",
                 "uvloop" if self.options.use_uvloop else "asyncio")
        if not self.options.use_uvloop:
            dp.start(asyncio.get_running_loop())
            self.heartbeat.start(asyncio.get_running_loop())
            try:
                await asyncio.Future()  # until cancelled
            finally:
                dp.stop()
                self.heartbeat.stop()
            return
        await self._run_on_uvloop(dp)

    async def _run_on_uvloop(self, dp: DataPlane) -> None:
        """Run ``dp`` on a uvloop loop in its own thread until cancelled, or until the thread ends
        (a failure there, e.g. ``dp.start`` raising, is raised here as a :class:`PlumbingError`)."""
        import uvloop
        loop = uvloop.new_event_loop()
        self._dp_loop = loop
        ended: concurrent.futures.Future = concurrent.futures.Future()

        def thread_main():
            try:
                asyncio.set_event_loop(loop)
                dp.start(loop)
                self.heartbeat.start(loop)
                try:
                    loop.run_forever()
                finally:
                    dp.stop()
                    self.heartbeat.stop()
            except Exception as exc:  # reported to the task below, which fails the daemon
                ended.set_exception(exc)
            else:
                ended.set_result(None)

        thread = threading.Thread(target=thread_main, name="overlayd-dataplane", daemon=True)
        thread.start()
        try:
            await asyncio.wrap_future(ended)
        except Exception as exc:
            raise PlumbingError(f"uvloop data-plane thread failed: {type(exc).__name__}: {exc}") from exc
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5)
            if not thread.is_alive():
                loop.close()
            self._dp_loop = None

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.dev_fd is not None:
            os.close(self.dev_fd)
            self.dev_fd = None
