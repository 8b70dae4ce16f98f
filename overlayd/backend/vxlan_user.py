"""The userspace VXLAN backend: a tap device and overlayd's own data plane.

Wire-compatible with the kernel backend (and with flannel's): it publishes
the same ``{"VNI": N, "VtepMAC": "..."}`` and speaks RFC 7348 on the same
port. ARP, the design choice: with the single ``<Network> dev overlay0``
route and no gateway the kernel would ARP for every remote pod address, and
permanent neighbour entries only help with flannel's per-peer ``via .0
onlink`` routes. So the tap is NOARP (the kernel then addresses every frame
to the tap's own MAC) and the data plane rewrites the destination MAC to the
owning peer's VtepMAC. One route, no ARP traffic, no neighbour table to keep.
The tap's MAC is the VtepMAC, derived from the public IP and VNI, so it is
the same after a restart. The outer UDP source port is the bound port (a
plain socket cannot vary it per flow; see the README on ECMP entropy).
"""

from __future__ import annotations

import ipaddress
import logging

from ..dataplane.codecs import VxlanCodec
from ..encap.ether import mac_to_bytes
from ..encap.table import Peer
from ..lease.model import Lease
from ..plumbing import sysctl
from ..plumbing.netlink import Netlink
from ..plumbing.tuntap import open_tap
from .userspace import DEVICE_TXQUEUELEN, UserspaceBackend
from .vxlan import vtep_mac, vxlan_peer_mac

log = logging.getLogger(__name__)

TAP = "overlay0"


class UserVxlanBackend(UserspaceBackend):
    """VXLAN in userspace over a NOARP tap."""

    type_name = "vxlan"
    device = TAP

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vni = self.config.backend.vni
        self.mac = vtep_mac(self.underlay.public_ip, self.vni)

    def backend_data(self) -> dict:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def peer_for(self, lease):
        mac = vxlan_peer_mac(lease, self.vni)
        if mac is None:
            log.warning("peer %s on %s is not a VXLAN peer on VNI %d: not reachable from here",
                        lease.subnet, lease.public_ip, self.vni)
            self.counters.count("incompatible_peers")
            return None
        return Peer(str(lease.public_ip), mac_to_bytes(mac))

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        if self.dev_fd is None:
            self.dev_fd = open_tap(TAP, self.mac, self.mtu)
        sysctl.disable_ipv6(TAP)
        async with Netlink() as nl:
            await self.reconcile(nl)
        sysctl.set_rp_filter(TAP, 2)
        self.codec = VxlanCodec(self.table, lease.subnet, self.vni, mac_to_bytes(self.mac))

    async def reconcile(self, nl: Netlink) -> None:
        await nl.ensure_mtu(TAP, self.mtu)
        await nl.ensure_txqueuelen(TAP, DEVICE_TXQUEUELEN)
        await nl.ensure_noarp(TAP)
        await nl.ensure_address(TAP, ipaddress.IPv4Interface(f"{self.lease.subnet.network_address}/32"))
        await nl.ensure_link_up(TAP)
        await nl.ensure_route(self.config.network, TAP)
