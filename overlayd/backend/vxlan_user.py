"""The userspace VXLAN backend: a tap device and overlayd's own data plane.

Wire-compatible with the kernel backend (and with flannel's): it publishes
the same ``{"VNI": N, "VtepMAC": "..."}`` and speaks RFC 7348 on the same
port. ARP, the design choice: with the single ``<Network> dev overlay0``
route and no gateway the kernel would ARP for every remote pod address, and
permanent neighbour entries only help with flannel's per-peer ``via .0
onlink`` routes. So the tap is NOARP (the kernel then addresses every frame
to the tap's own MAC) and the data plane rewrites the destination MAC to the
owning peer's VtepMAC. One route, no ARP traffic, no neighbour table to keep. IPv6 (issue 17) is
the same: on a NOARP device the kernel gives every unicast IPv6 neighbour the
device's own MAC without neighbour discovery, so with an IPv6 pool the tap
also carries IPv6 (its subnet's ``::/128``, one ``<IPv6Network> dev overlay0``
route) over the same underlay, and the data plane routes IPv6 frames by the
peers' IPv6 subnets; no NDP, no neighbour entries.
The tap's MAC is the VtepMAC, derived from the public IP and VNI, so it is
the same after a restart. The outer UDP source port is the bound port (a
plain socket cannot vary it per flow; see docs/design.md, "Choices", on the VXLAN source port).

Superpackets: on the C engine the tap is opened with IFF_VNET_HDR and TSO
offloads, as the UDP backend's tun is: the kernel hands over 64 KB TCP
frames, cut in C into VXLAN datagrams, and the engine writes coalesced runs
(and a kernel VTEP's own superpackets) back as one GSO write each. The
Python data path keeps a plain tap.

DirectRouting (flannel's, as the kernel backend does it): a peer whose public
IP the kernel routes without a gateway (:func:`~.vxlan.direct_device`) gets
``<subnet> via <public IP> dev <underlay>``, more specific than the Network's
route to the tap, so the kernel forwards those packets itself and they never
reach the data plane; its pods' replies arrive unencapsulated on the underlay
and are forwarded to cni0 like any routed packet (the reverse path of their
source is that same route, so a strict rp_filter passes them, and the nft
forward chain accepts the Network). Direct peers stay in the data plane's
peer table, on purpose: a packet that still reaches the tap (the route
deleted by an operator, until drift repair puts it back) is encapsulated
instead of answered "no lease", and a peer that does not see us as direct
(its route to us has a gateway, or it runs without DirectRouting during a
rollout) sends encapsulated packets that the receive path must accept from a
known sender. So the table always holds every VXLAN peer; ``direct`` only
says which of them also have a kernel route. A node whose tunnels run over
IPv6 (no PublicIP) has no IPv4 segment to route on: its peers all stay
encapsulated.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from ..dataplane.codecs import VxlanCodec
from ..encap.ether import mac_to_bytes
from ..encap.table import Peer
from ..errors import PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..plumbing import sysctl
from ..plumbing.netlink import DeviceState, Netlink
from ..plumbing.tuntap import open_tap
from .base import delete_peer_routes
from .userspace import DEVICE_TXQUEUELEN, UserspaceBackend
from .vxlan import TYPE, direct_device, vtep_mac, vxlan_peer_mac

log = logging.getLogger(__name__)

TAP = "overlay0"


class UserVxlanBackend(UserspaceBackend):
    """VXLAN in userspace over a NOARP tap."""

    type_name = TYPE
    device = TAP

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vni = self.config.backend.vni
        self.mac = vtep_mac(self.underlay.public_ip or self.underlay.public_ip6, self.vni)  # the underlay's family
        # DirectRouting: peer subnet -> (its public IP, the device of its direct route)
        self.direct: dict[ipaddress.IPv4Network, tuple[ipaddress.IPv4Address, str]] = {}
        self._lock = asyncio.Lock()  # apply and reconcile: a direct route being removed is never put back

    def backend_data(self) -> dict:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def peer_for(self, lease):
        mac = vxlan_peer_mac(lease, self.vni) or vxlan_peer_mac(lease, self.vni, 6)  # an IPv6-only peer: V6Data
        if mac is None:
            log.warning("peer %s on %s is not a VXLAN peer on VNI %d: not reachable from here",
                        lease.subnet, lease.public_ip, self.vni)
            self.counters.count("incompatible_peers")
            return None
        address = self.peer_address(lease)
        return None if address is None else Peer(address, mac_to_bytes(mac))

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        if self.dev_fd is None:
            superpackets = self.datapath == "c"  # vnet_hdr and offload: the engine cuts and coalesces them
            self.dev_fd = open_tap(TAP, self.mac, self.mtu, superpackets, superpackets)
            self.vnet_hdr = superpackets
        self.set_device_ipv6()
        async with Netlink() as nl:
            await self.reconcile(nl)
        sysctl.set_rp_filter(TAP, 2)
        sysctl.set_accept_local(TAP)  # the ICMP answers' source is cni0's .1
        self.codec = VxlanCodec(self.table, self.own_subnet4(), self.vni, mac_to_bytes(self.mac),
                                self.config.backend.port, own_subnet6=self.own_subnet6())

    async def reconcile(self, nl: Netlink) -> None:
        await nl.ensure_mtu(TAP, self.mtu)
        await nl.ensure_txqueuelen(TAP, DEVICE_TXQUEUELEN)
        await nl.ensure_noarp(TAP)
        await nl.ensure_link_up(TAP)
        await self.ensure_device_addresses(nl)
        async with self._lock:
            state = await nl.device_state(self.underlay.iface, peers=False) if self.direct else None
            for subnet, (public_ip, dev) in self.direct.items():
                try:
                    await nl.ensure_route(subnet, dev, gateway=public_ip,
                                          state=state if dev == self.underlay.iface else None)
                except PlumbingError as exc:  # the other peers are still repaired
                    log.warning("peer %s on %s: cannot repair its direct route: %s", subnet, public_ip, exc)

    async def apply(self, batch: Batch) -> None:
        """The data plane's table takes every peer (direct ones too, see the module's note); with
        DirectRouting, peers on our segment also get (or lose) their direct route."""
        await super().apply(batch)
        if not self.config.backend.direct_routing or self.underlay_version != 4:  # over IPv6: no IPv4 segment
            return
        async with self._lock, Netlink() as nl:
            for lease in batch.removed:
                await self._undirect(nl, lease.subnet)
            states: dict[str, DeviceState] = {}  # one route read per device a batch, not per peer
            for lease in batch.added:
                dev = None
                if vxlan_peer_mac(lease, self.vni) is not None:
                    dev = await direct_device(nl, self.config, lease.public_ip)
                if self.direct.get(lease.subnet) not in (None, (lease.public_ip, dev)):
                    await self._undirect(nl, lease.subnet)  # moved, or now encapsulated
                    for state in states.values():
                        state.routes.pop(lease.subnet, None)
                if dev is None:
                    continue
                if dev not in states:
                    states[dev] = await nl.device_state(dev, peers=False)
                try:
                    await nl.ensure_route(lease.subnet, dev, gateway=lease.public_ip, state=states[dev])
                except PlumbingError as exc:  # it stays reachable through the tap
                    log.warning("peer %s on %s: no direct route (%s), encapsulated", lease.subnet,
                                lease.public_ip, exc)
                    continue
                if lease.subnet not in self.direct:
                    log.info("peer %s on %s: direct route via %s (same segment, not encapsulated)",
                             lease.subnet, lease.public_ip, dev)
                self.direct[lease.subnet] = (lease.public_ip, dev)

    async def _undirect(self, nl: Netlink, subnet: ipaddress.IPv4Network) -> None:
        """Remove ``subnet``'s direct route, if it has one (the tap's Network route then covers it)."""
        old = self.direct.pop(subnet, None)
        if old is not None:
            await nl.delete_route(subnet, dev=old[1])

    async def teardown(self, nl: Netlink) -> None:
        """The tap goes with its route (:meth:`Backend.teardown`), and direct routes with it."""
        await super().teardown(nl)
        if self.config.backend.direct_routing:
            async with self._lock:
                await delete_peer_routes(nl, self.config, self.lease)
                self.direct.clear()

    def stats(self) -> dict:
        return {**super().stats(), "direct_peers": len(self.direct)}
