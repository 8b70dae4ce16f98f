"""The UDP backend: IP packets from ``tun0`` sent as UDP payloads to the owning node.

Like flannel's (retired) UDP backend, but on port 8472 by default and with
UDP checksum 0 (``--udp-checksum``: checksummed, for the C engine's UDP GSO). Node plumbing, as flannel does it: ``tun0`` carries the
subnet's network address as a /32 (giving it the ``.1/24`` as well would make
tun0 win the local /24 and cut local pods off), and one route
``<Network> dev tun0`` covers every remote subnet, so peers joining or
leaving never touch the routing table: only the data plane's peer table.
With an IPv6 pool (issue 17) tun0 carries IPv6 too, the same way: the IPv6
subnet's ``::/128`` and one ``<IPv6Network> dev tun0`` route.
Port note: 8472 is also Linux's default VXLAN port, so a kernel VXLAN device
on the same node would collide with this backend (pick another Port then).
"""

from __future__ import annotations

import logging

from ..dataplane.codecs import UdpCodec
from ..lease.model import Lease
from ..netconf import BackendConfig, _mtu_field, _port_field
from ..plumbing import sysctl
from ..plumbing.netlink import Netlink
from ..plumbing.tuntap import open_tun
from .registry import BackendSpec
from .userspace import DEVICE_TXQUEUELEN, UserspaceBackend

log = logging.getLogger(__name__)

TYPE = "udp"
TUN = "tun0"
OVERHEAD = 28  # outer IPv4 (20) + UDP (8)


class UdpBackend(UserspaceBackend):
    """IP-in-UDP over a tun device."""

    type_name = TYPE
    device = TUN

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        if self.dev_fd is None:  # superpackets only for the C engine, which segments them
            self.dev_fd = open_tun(TUN, self.mtu, vnet_hdr=True, offload=self.datapath == "c")
            self.vnet_hdr = True
        self.set_device_ipv6()
        async with Netlink() as nl:
            await self.reconcile(nl)
        sysctl.set_rp_filter(TUN, 2)
        sysctl.set_accept_local(TUN)  # the ICMP answers' source is cni0's .1
        self.codec = UdpCodec(self.table, self.own_subnet4(), self.config.backend.port, own_subnet6=self.own_subnet6(),
                              mtu=self.mtu)  # IPv6 inner packets too (issue 17)

    async def reconcile(self, nl: Netlink) -> None:
        await nl.ensure_mtu(TUN, self.mtu)
        await nl.ensure_txqueuelen(TUN, DEVICE_TXQUEUELEN)
        await nl.ensure_link_up(TUN)
        await self.ensure_device_addresses(nl)


def parse(raw: dict, notes: list[str]) -> BackendConfig:
    """The udp backend's settings: ``Port`` and ``MTU`` (see :class:`~overlayd.backend.registry.BackendSpec`)."""
    return BackendConfig(type=TYPE, port=_port_field(raw), mtu=_mtu_field(raw))


SPEC = BackendSpec(TYPE, frozenset({"Type", "Port", "MTU"}), OVERHEAD, parse, lambda options: UdpBackend)
