"""The UDP backend: IP packets from ``tun0`` sent as UDP payloads to the owning node.

Like flannel's (retired) UDP backend, but on port 8472 by default and with
UDP checksum 0 (``--udp-checksum``: checksummed, for the C engine's UDP GSO). Node plumbing, as flannel does it: ``tun0`` carries the
subnet's network address as a /32 (giving it the ``.1/24`` as well would make
tun0 win the local /24 and cut local pods off), and one route
``<Network> dev tun0`` covers every remote subnet, so peers joining or
leaving never touch the routing table: only the data plane's peer table.
Port note: 8472 is also Linux's default VXLAN port, so a kernel VXLAN device
on the same node would collide with this backend (pick another Port then).
"""

from __future__ import annotations

import ipaddress
import logging

from ..dataplane.codecs import UdpCodec
from ..lease.model import Lease
from ..plumbing import sysctl
from ..plumbing.netlink import Netlink
from ..plumbing.tuntap import open_tun
from .userspace import DEVICE_TXQUEUELEN, UserspaceBackend

log = logging.getLogger(__name__)

TUN = "tun0"


class UdpBackend(UserspaceBackend):
    """IP-in-UDP over a tun device."""

    type_name = "udp"
    device = TUN

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        if self.dev_fd is None:  # superpackets only for the C engine, which segments them
            self.dev_fd = open_tun(TUN, self.mtu, vnet_hdr=True, offload=self.datapath == "c")
            self.vnet_hdr = True
        sysctl.disable_ipv6(TUN)
        async with Netlink() as nl:
            await self.reconcile(nl)
        sysctl.set_rp_filter(TUN, 2)
        self.codec = UdpCodec(self.table, lease.subnet, self.config.backend.port)

    async def reconcile(self, nl: Netlink) -> None:
        await nl.ensure_mtu(TUN, self.mtu)
        await nl.ensure_txqueuelen(TUN, DEVICE_TXQUEUELEN)
        await nl.ensure_address(TUN, ipaddress.IPv4Interface(f"{self.lease.subnet.network_address}/32"))
        await nl.ensure_link_up(TUN)
        await nl.ensure_route(self.config.network, TUN)
