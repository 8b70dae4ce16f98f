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
import ipaddress
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
from ..plumbing import sysctl
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
        ipv4, ipv6 = self.config.ipv4, self.config.ipv6  # dual stack (issue 17): both families share the table
        self.table = PeerTable(ipv4.subnet_len if ipv4 is not None else None,
                               ipv6.subnet_len if ipv6 is not None else None)
        self.counters = Counters()
        self.dev_fd: int | None = None
        self.vnet_hdr = False  # the device was opened with IFF_VNET_HDR (set by the backend's setup)
        self.codec = None
        self.sock = None
        self._dp_loop: asyncio.AbstractEventLoop | None = None
        self._plane: DataPlane | None = None  # the last data plane run (its counters outlive it)
        # the data plane turning (for the watchdog, /healthz): the engine's threads, or its event loop
        self.heartbeat = EngineHeartbeat() if self.datapath == "c" else LoopHeartbeat()

    @property
    def underlay_version(self) -> int:
        """The one underlay family this node's tunnels use for both inner families (issue 17): IPv4 when
        the node has a PublicIP, else IPv6."""
        return 4 if self.underlay.public_ip is not None else 6

    @property
    def mtu(self) -> int:
        """The overlay MTU (:attr:`Backend.mtu`), 20 bytes less over an IPv6 underlay: its header is 40
        bytes where flannel's overheads count IPv4's 20 (a datagram past the underlay's MTU would be
        fragmented by the sending kernel)."""
        return super().mtu - (20 if self.underlay_version == 6 else 0)

    @property
    def udp_checksum(self) -> bool:
        """Whether our datagrams carry UDP checksums (the C engine then sends superpackets with UDP GSO):
        with ``--udp-checksum``, and always over an IPv6 underlay (:mod:`overlayd.dataplane.sockets`)."""
        return self.options.udp_checksum or self.underlay_version == 6

    def peer_address(self, lease) -> str | None:
        """Where a peer is sent to: its lease's PublicIP over an IPv4 underlay, its PublicIPv6 over an
        IPv6 one (None: it has no address of our underlay's family, counted as an incompatible peer)."""
        address = lease.attrs.public_ip if self.underlay_version == 4 else lease.attrs.public_ip6
        if address is None:
            log.warning("peer %s has no IPv%d public address, as our underlay needs: not reachable from here",
                        lease.subnet, self.underlay_version)
            self.counters.count("incompatible_peers")
            return None
        return str(address)

    def peer_for(self, lease) -> Peer | None:
        """The data-plane peer for a lease, or None if we cannot talk to it."""
        if lease.attrs.backend_type != self.type_name:
            log.warning("peer %s on %s uses backend %s, not %s: not reachable from here",
                        lease.subnet, lease.public_ip, lease.attrs.backend_type, self.type_name)
            self.counters.count("incompatible_peers")
            return None
        address = self.peer_address(lease)
        return None if address is None else Peer(address, None)

    def own_subnet6(self):
        """Our IPv6 subnet (an ``IPv6Network``) when the network has an IPv6 pool: the device then carries
        IPv6 too (issue 17); else None."""
        return self.lease.subnet6 if self.table.subnet_len6 is not None else None

    def own_subnet4(self):
        """Our IPv4 subnet (an ``IPv4Network``), None on an IPv6-only network."""
        return self.lease.subnet if self.lease.subnet.version == 4 else None

    def set_device_ipv6(self) -> None:
        """IPv6 on the device when it carries IPv6 (:meth:`own_subnet6`), else off (it would only send
        IPv6 noise): from setup, once the device exists."""
        (sysctl.disable_ipv6 if self.own_subnet6() is None else sysctl.enable_ipv6)(self.device)

    async def ensure_device_addresses(self, nl) -> None:
        """Reconcile's addresses and routes, per family the network has: the subnet's network address as
        a host address (IPv4 ``.0/32``, IPv6 ``::/128``) and one ``<Network> dev <device>`` route for
        every remote subnet of that family."""
        own4 = self.own_subnet4()
        if own4 is not None:
            await nl.ensure_address(self.device, ipaddress.IPv4Interface(f"{own4.network_address}/32"))
            await nl.ensure_route(self.config.network, self.device)
        own6 = self.own_subnet6()
        if own6 is not None:
            await nl.ensure_address(self.device, ipaddress.IPv6Interface(f"{own6.network_address}/128"))
            await nl.ensure_route(self.config.ipv6.network, self.device)

    def _subnets(self, lease) -> list:
        """The subnets of ``lease`` the table holds: its IPv4 one, and its IPv6 one when the network has an
        IPv6 pool (an IPv6-only lease's ``subnet`` is its ``subnet6``: listed once)."""
        both = dict.fromkeys(s for s in (lease.subnet, lease.subnet6) if s is not None)
        return [s for s in both if s.version == 4 or self.table.subnet_len6 is not None]

    async def apply(self, batch: Batch) -> None:
        changes = [(s, None) for l in batch.removed for s in self._subnets(l)]
        for l in batch.added:
            peer = self.peer_for(l)
            changes += [(s, peer) for s in self._subnets(l)]

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
            address = self.underlay.address if self.underlay_version == 4 else self.underlay.address6
            self.sock = open_udp(str(address), self.config.backend.port,
                                 no_check=not self.options.udp_checksum)

    @property
    def datapath(self) -> str:
        """The data path in use: ``c`` (the C engine, for both userspace backends) or ``python``."""
        return "c" if self.options.datapath == "c" else "python"

    def _dataplane(self) -> DataPlane:
        sender = Sender(self.sock, self.config.backend.port, self.counters)
        if self.datapath == "c":
            return FastDataPlane(self.dev_fd, self.sock, self.codec, sender, self.counters,
                                    vnet_hdr=self.vnet_hdr, udp_gso=self.udp_checksum)
        return DataPlane(self.dev_fd, self.sock, self.codec, sender, self.counters, vnet_hdr=self.vnet_hdr)

    async def run(self) -> None:
        """Forward between the device (from :meth:`setup`) and the socket (from :meth:`preflight`)
        until cancelled, or until the data plane fails (raised here)."""
        dp = self._plane = self._dataplane()
        if self.datapath == "c":
            how = "C engine threads" + (f", {self.device} superpackets" if self.vnet_hdr else "") + \
                (", UDP GSO" if self.udp_checksum else "")
        else:
            how = f"Python data path, {'uvloop' if self.options.use_uvloop else 'asyncio'} loop"
        log.info("data plane: %s <-> udp %s, UDP checksum %s (%s)", self.device, self.sock.getsockname()[:2],
                 "on" if self.udp_checksum else "0", how)
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
