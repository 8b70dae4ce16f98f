"""The kernel VXLAN backend: flannel's default, done by a Linux VXLAN device.

Design history (as flannel's ``vxlan.go`` keeps one): flannel first used L3
misses to program neighbours on demand, then switched to static entries per
peer, which is what we do. The device ``flannel.<VNI>`` is created with
``nolearning``, the VNI, the port, ``local`` = the public IP, ``dev`` = the
underlay interface, and the UDP checksum OFF set explicitly (pyroute2 and
iproute2 both create it with the checksum on here unless told otherwise).
For each peer: a route ``<subnet> via <subnet>.0 dev flannel.N onlink``, a
permanent neighbour ``<subnet>.0 -> VtepMAC`` and an FDB entry ``VtepMAC ->
public IP``; all three go when the lease goes. Our userspace VXLAN backend
publishes the same BackendData, so nodes of either kind are peers.

Port check: the device opens its UDP socket (on every address) only when it
is set up, after the lease. :meth:`KernelVxlanBackend.preflight` therefore
binds the port once, before any lease, and refuses when a process or a
non-VXLAN kernel socket holds it. A VXLAN device already up on the port (our
own ``flannel.<VNI>`` from before a restart, or another VNI's) is no
conflict: the kernel shares one socket per port among VXLAN devices.

Transmit checksum offload (issue 10 item 5): left as the kernel sets it, on,
as flannel does. With it on a kernel VTEP sends the inner TCP/UDP checksum
partial (CHECKSUM_PARTIAL: the field holds the pseudo-header sum, for a NIC
to finish) and TCP as 64 KB GSO superpackets, for a NIC to cut. Turning it
off costs 3-5x between two kernel nodes (it turns TSO off too: every 1.4 KB
segment is encapsulated alone; scripts/bench: kernel-vxlan against
kvx-tx-off). A NIC finishes and cuts both; a veth, a bridge with veth ports
(containers as nodes, this project's lab) or a paravirtual NIC hands them on
as they are to a neighbour namespace or guest of the same host. A kernel
receiver does not mind (the skb keeps its offload marks); a userspace VTEP
reads raw bytes, and ours takes both: it completes a partial checksum
(:func:`overlayd.encap.ether.complete_partial_checksum`) and cuts a TCP
superpacket to its tap's MTU (:func:`overlayd.encap.ether.cut_superpacket`;
the C engine writes it to its vnet_hdr tap as one GSO write). So nothing
needs it off any more. History: until the userspace receiver took
superpackets, offload was turned off over anything but NICs (bonds, VLANs,
bridges of NICs), at 0.19x a hand-built kernel VXLAN pair in the lab.
Weighed and left then: turning it on only when no peer is a userspace VTEP
(leases do not tell, and an older overlayd would not say); turning tunnel
segmentation off on the underlay instead (every receiver then pays per
packet).

A pod's UDP GSO send (UDP_SEGMENT, e.g. QUIC) also leaves as one VXLAN
datagram, whose segment size is not on the wire: our userspace receivers'
sockets do not ask for UDP_GRO on the VXLAN wire, so their kernel cuts it
into proper datagrams before they read it (tests/e2e/test_vxlan_offload.py).
What is still lost with offload on, over a virtual underlay: a third-party
userspace VTEP may take neither partial checksums nor superpackets.
The operator's way out, as flannel documents it: turn it off on the kernel
nodes (``ethtool -K flannel.<VNI> tx-checksum-ip-generic off``, or ``python
-m overlayd.plumbing.ethtool flannel.<VNI> off`` where no ethtool binary is
installed), made to last with a udev rule that runs it when the device is
added (``ACTION=="add"``, ``ENV{INTERFACE}=="flannel.1"``): we never touch the
setting, so it stays while the device lives, and a device that drift repair
or a reboot recreates comes back with the kernel's default (on), then the
rule's setting. A device kept from an older overlayd keeps that version's
setting (off over virtual underlays); setup logs when it finds it off.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket

from ..dataplane.sockets import udp_port_holder
from ..encap.ether import mac_to_bytes, mac_to_str, stable_mac
from ..errors import EncapError, PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..netconf import NetworkConfig
from ..plumbing import ethtool, sysctl
from ..plumbing.netlink import DeviceState, Netlink
from .base import Backend
from .hostgw import delete_peer_routes

log = logging.getLogger(__name__)


def vtep_mac(public_ip: ipaddress.IPv4Address, vni: int) -> str:
    """This node's VTEP MAC: derived from its public IP and the VNI, so it survives restarts."""
    return mac_to_str(stable_mac(public_ip.packed + vni.to_bytes(3, "big")))


def vxlan_peer_mac(lease: Lease, vni: int) -> str | None:
    """The lease's VtepMAC if it is a usable VXLAN peer on ``vni``, else None.

    Leases can be written by hand (or by other software): a missing or
    malformed MAC, or another VNI, makes the peer unusable, never the daemon crash.
    """
    data = lease.attrs.backend_data
    if lease.attrs.backend_type != "vxlan" or not isinstance(data, dict):
        return None
    if data.get("VNI", vni) != vni:
        return None
    try:
        return mac_to_str(mac_to_bytes(data.get("VtepMAC")))
    except EncapError:
        return None


def vtep_gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The peer-side address routes point at: the subnet's network address (flannel's ``.0``)."""
    return subnet.network_address


async def direct_device(nl: Netlink, config: NetworkConfig, public_ip: ipaddress.IPv4Address) -> str | None:
    """With ``config``'s DirectRouting, the device a peer at ``public_ip`` is reached on without a gateway
    (flannel's test: the kernel's route to it has none, so it is on our L2 segment); else None. Both
    VXLAN implementations decide with it, so a kernel and a userspace node route to each other alike."""
    if not config.backend.direct_routing:
        return None
    route = await nl.route_to(str(public_ip))
    return route.iface if route is not None and route.gateway is None else None


class KernelVxlanBackend(Backend):
    """VXLAN by the kernel, programmed per peer."""

    type_name = "vxlan"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vni = self.config.backend.vni
        self.device = f"flannel.{self.vni}"
        self.mac = vtep_mac(self.underlay.public_ip, self.vni)
        # peer subnet -> (public IP, VtepMAC, the underlay device of its direct route or None: encapsulated)
        self.peers: dict[ipaddress.IPv4Network, tuple[str, str, str | None]] = {}
        self.skipped = 0
        self._lock = asyncio.Lock()  # apply and reconcile: a peer being removed is never put back

    def backend_data(self) -> dict:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    async def preflight(self) -> None:
        """Refuse a UDP port held by anything but a VXLAN device (see the module's port check)."""
        port = self.config.backend.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))  # where the device's socket will bind
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise PlumbingError(f"cannot probe UDP port {port}: {exc.strerror}") from None
        async with Netlink() as nl:
            if await nl.vxlan_devices(port):
                return
        raise PlumbingError(f"cannot open UDP {self.underlay.public_ip}:{port} for {self.device}: port in use "
                            f"(held by {udp_port_holder(port)}; stop it or pick another Backend.Port)")

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        async with Netlink() as nl:
            await self._ensure_device(nl)
            if not ethtool.tx_checksum_offload(self.device):  # see the module's note
                log.info("%s: transmit checksum offload is off (an operator's choice, or kept from an older "
                         "overlayd): 3-5x slower between kernel nodes; 'python -m overlayd.plumbing.ethtool %s on' "
                         "turns it back on", self.device, self.device)
            stale = await nl.flush_peer_state(self.device)  # the first listing re-adds live peers
            if self.config.backend.direct_routing:
                await delete_peer_routes(nl, self)
            if stale:
                log.info("%s: removed %d route/neighbour/FDB entries left from before", self.device, stale)

    async def _ensure_device(self, nl: Netlink) -> None:
        await nl.ensure_vxlan(self.device, vni=self.vni, port=self.config.backend.port,
                              local=self.underlay.address, underlay_dev=self.underlay.iface,
                              mac=self.mac, mtu=self.mtu, learning=False, udp_checksum=False)
        await nl.ensure_address(self.device, ipaddress.IPv4Interface(f"{self.lease.subnet.network_address}/32"))
        await nl.ensure_link_up(self.device)
        sysctl.disable_ipv6(self.device)
        sysctl.set_rp_filter(self.device, 2)

    async def reconcile(self, nl: Netlink) -> None:
        async with self._lock:
            await self._ensure_device(nl)
            state = await self._state(nl)  # one read for every peer: O(peers) a pass
            for subnet, (public_ip, mac, direct) in self.peers.items():
                try:
                    await self._ensure_peer(nl, subnet, ipaddress.IPv4Address(public_ip), mac, direct, state)
                except PlumbingError as exc:  # the other peers are still repaired
                    log.warning("peer %s on %s: cannot repair: %s", subnet, public_ip, exc)

    async def apply(self, batch: Batch) -> None:
        async with self._lock, Netlink() as nl:
            for lease in batch.removed:
                await self._forget(nl, lease.subnet)
            # one read for the whole batch, taken after the removals it must not see
            state = await self._state(nl) if batch.added else None
            for lease in batch.added:
                mac = vxlan_peer_mac(lease, self.vni)
                if mac is None:
                    log.warning("peer %s on %s is not a VXLAN peer on VNI %d: skipped",
                                lease.subnet, lease.public_ip, self.vni)
                    self.skipped += 1
                    await self._forget(nl, lease.subnet)  # it may have been one before this change
                    continue
                try:
                    await self._program(nl, lease, mac, state)
                except PlumbingError as exc:
                    log.warning("peer %s on %s: %s: skipped", lease.subnet, lease.public_ip, exc)
                    self.skipped += 1
                    await self._forget(nl, lease.subnet)

    async def teardown(self, nl: Netlink) -> None:
        """The device goes with its entries (:meth:`Backend.teardown`), and direct routes with it."""
        await super().teardown(nl)
        if self.config.backend.direct_routing:
            await delete_peer_routes(nl, self)

    async def _state(self, nl: Netlink) -> tuple[DeviceState, DeviceState | None]:
        """Snapshots of the device (and with DirectRouting, of the underlay's routes)."""
        underlay = self.config.backend.direct_routing
        return (await nl.device_state(self.device),
                await nl.device_state(self.underlay.iface, peers=False) if underlay else None)

    async def _program(self, nl: Netlink, lease: Lease, mac: str, state: tuple) -> None:
        new = (str(lease.public_ip), mac, await direct_device(nl, self.config, lease.public_ip))
        old = self.peers.get(lease.subnet)
        if old is not None and old != new:  # moved, new MAC, or direct <-> encapsulated: start afresh
            await self._forget(nl, lease.subnet)
            state = (None, None)  # the snapshots hold what was just removed: read the kernel instead
        await self._ensure_peer(nl, lease.subnet, lease.public_ip, mac, new[2], state)
        self.peers[lease.subnet] = new
        if new[2]:
            log.info("peer %s on %s: direct route via %s (same segment, not encapsulated)",
                     lease.subnet, lease.public_ip, new[2])

    async def _ensure_peer(self, nl: Netlink, subnet: ipaddress.IPv4Network, public_ip: ipaddress.IPv4Address,
                           mac: str, direct: str | None, state: tuple) -> None:
        """A direct peer: a route via its public IP on ``direct`` (host-gw style); any other: the
        FDB entry, neighbour and onlink route through the VXLAN device."""
        device, underlay = state
        if direct:
            await nl.ensure_route(subnet, direct, gateway=public_ip, state=underlay if direct == self.underlay.iface
                                  else None)
            return
        await nl.ensure_fdb(mac, public_ip, self.device, device)
        await nl.ensure_neighbour(vtep_gateway(subnet), mac, self.device, device)
        await nl.ensure_route(subnet, self.device, gateway=vtep_gateway(subnet), onlink=True, state=device)

    async def _forget(self, nl: Netlink, subnet: ipaddress.IPv4Network) -> None:
        """Remove a peer's route, neighbour and FDB entry, or its direct route (whatever of them exists)."""
        old = self.peers.pop(subnet, None)
        if old is not None and old[2]:
            await nl.delete_route(subnet, dev=old[2])
            return
        await nl.delete_route(subnet, dev=self.device)
        await nl.delete_neighbour(vtep_gateway(subnet), self.device)
        if old is not None:
            await nl.delete_fdb(old[1], self.device, old[0])

    # These two are also read by the health server's thread: list() copies the dict in C, under
    # the GIL, before any Python-level iteration (which a peer change could interrupt).
    def peer_subnets(self) -> list[str]:
        return sorted(str(s) for s in list(self.peers))

    def stats(self) -> dict:
        return {"peers": len(self.peers), "skipped_peers": self.skipped,
                "direct_peers": sum(1 for *_, direct in list(self.peers.values()) if direct)}
