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

from ..dataplane.fast import FastDataPlane
from ..dataplane.loop import DataPlane, Sender
from ..dataplane.sockets import open_udp
from ..encap.drops import Counters
from ..encap.table import Peer, PeerTable
from ..errors import OverlayError, PlumbingError
from ..lease.watcher import Batch
from ..watchdog import LoopHeartbeat
from .base import Backend

log = logging.getLogger(__name__)

# The device's queue towards overlayd (the kernel's default is 500 packets). A
# TCP burst from the pods fills 500 faster than one wake-up of the loop drains
# it; every overflow is a drop and a retransmit. Measured with scripts/bench.
DEVICE_TXQUEUELEN = 5000


class EngineHeartbeat:
    """The C engine's threads turning, read like a :class:`~overlayd.watchdog.LoopHeartbeat` (``last``).

    An idle engine thread still turns twice a second; a wedged one stops
    updating its beat, and the watchdog sees the data plane stall.
    """

    def __init__(self):
        self._plane: FastDataPlane | None = None

    def start(self, plane: FastDataPlane) -> "EngineHeartbeat":
        self._plane = plane
        return self

    def stop(self) -> None:
        self._plane = None

    @property
    def last(self) -> float | None:
        plane = self._plane
        return plane.last_beat() if plane is not None else None


class UserspaceBackend(Backend):
    """Base of backends whose packets go through overlayd's own data plane."""

    device = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.table = PeerTable(self.config.subnet_len)
        self.counters = Counters()
        self.dev_fd: int | None = None
        self.vnet_hdr = False  # the device was opened with IFF_VNET_HDR (set by the backend's setup)
        self.codec = None
        self.sock = None
        self._dp_loop: asyncio.AbstractEventLoop | None = None
        self._plane: DataPlane | None = None  # the last data plane run (its counters outlive it)
        # the data plane turning (for the watchdog, /healthz): the engine's threads, or its event loop
        self.heartbeat = EngineHeartbeat() if self.datapath == "c" else LoopHeartbeat()

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
            if self._plane is not None:
                self._plane.peers_changed()

        if self._dp_loop is not None and self._dp_loop is not asyncio.get_running_loop():
            self._dp_loop.call_soon_threadsafe(update)
        else:
            update()

    def peer_subnets(self) -> list[str]:
        return self.table.subnets()

    def stats(self) -> dict:
        counts = self._plane.snapshot() if self._plane is not None else self.counters.snapshot()
        return {"peers": len(self.table), **counts}

    async def preflight(self) -> None:
        """Bind the encapsulation socket (kept for :meth:`run`): a port in use fails here."""
        if self.sock is None:
            self.sock = open_udp(str(self.underlay.address), self.config.backend.port,
                                 no_check=not self.options.udp_checksum)

    @property
    def datapath(self) -> str:
        """The data path in use: ``c`` (the C engine, for both userspace backends) or ``python``."""
        return "c" if self.options.datapath == "c" else "python"

    def _dataplane(self) -> DataPlane:
        sender = Sender(self.sock, self.config.backend.port, self.counters)
        if self.datapath == "c":
            return FastDataPlane(self.dev_fd, self.sock, self.codec, sender, self.counters,
                                    vnet_hdr=self.vnet_hdr, udp_gso=self.options.udp_checksum)
        return DataPlane(self.dev_fd, self.sock, self.codec, sender, self.counters, vnet_hdr=self.vnet_hdr)

    async def run(self) -> None:
        """Forward between the device (from :meth:`setup`) and the socket (from :meth:`preflight`)
        until cancelled, or until the data plane fails (raised here)."""
        dp = self._plane = self._dataplane()
        if self.datapath == "c":
            how = "C engine threads" + (f", {self.device} superpackets" if self.vnet_hdr else "") + \
                (", UDP GSO" if self.options.udp_checksum else "")
        else:
            how = f"Python data path, {'uvloop' if self.options.use_uvloop else 'asyncio'} loop"
        log.info("data plane: %s <-> udp %s:%d, UDP checksum %s (%s)", self.device, self.underlay.address,
                 self.config.backend.port, "on" if self.options.udp_checksum else "0", how)
        if self.options.use_uvloop and self.datapath == "python":
            await self._run_on_uvloop(dp)
            return
        loop = asyncio.get_running_loop()
        dp.start(loop)
        self.heartbeat.start(dp if self.datapath == "c" else loop)
        try:
            await dp.ended  # until cancelled, or the engine fails
        finally:
            dp.stop()
            self.heartbeat.stop()

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
                dp.ended.add_done_callback(lambda _: loop.stop())  # the plane cannot go on
                self.heartbeat.start(loop)
                try:
                    loop.run_forever()
                finally:
                    dp.stop()
                    self.heartbeat.stop()
                if dp.ended.done():
                    dp.ended.result()  # its one-line reason (the device is gone), raised below
            except Exception as exc:  # reported to the task below, which fails the daemon
                ended.set_exception(exc)
            else:
                ended.set_result(None)

        thread = threading.Thread(target=thread_main, name="overlayd-dataplane", daemon=True)
        thread.start()
        try:
            await asyncio.wrap_future(ended)
        except OverlayError:  # the data plane's own reason, already one clear line
            raise
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
